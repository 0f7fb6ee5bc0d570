"""The exchange record (tlsmirror.record.call_to_dict): every field of docs/exchange-schema.md."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.calls import ApiCall, Connection
from tlsmirror.http.events import Body, Exchange
from tlsmirror.record import body_is_text, call_to_dict, iso_time, query_params, split_target, url_of

CONN = Connection(7, "10.0.0.1", 40000, "10.0.0.2", 443, True, "TLS1.3", "TLS_AES_128_GCM_SHA256",
                  "api.example.test", "http/1.1")


def exchange(**kw: Any) -> Exchange:
    base: dict[str, Any] = dict(
        http_version="1.1", method="GET", scheme=None, authority="api.example.test", path="/v1/items?limit=2",
        status=200, reason="OK", request_headers=(("Host", "api.example.test"),),
        response_headers=(("Content-Type", "application/json"),), request_trailers=(), response_trailers=(),
        request_body=None, response_body=Body(b'{"a":1}', 7, 7, False), request_ts=1700000000.25,
        request_end_ts=1700000000.25, response_ts=1700000000.5, response_end_ts=1700000000.75,
        stream_id=None, flags=frozenset())
    base.update(kw)
    return Exchange(**base)


def rec(conn: Connection = CONN, **kw: Any) -> dict[str, Any]:
    r = call_to_dict(ApiCall(conn, exchange(**kw)))
    return json.loads(json.dumps(r))  # always JSON-able; checked in the form it is written


def test_full_record() -> None:
    r = rec()
    assert r["v"] == 1
    assert r["request_start"] == "2023-11-14T22:13:20.250000Z" and r["request_start_ts"] == 1700000000.25
    assert r["response_start"] == "2023-11-14T22:13:20.500000Z"
    assert r["response_end"] == "2023-11-14T22:13:20.750000Z" and r["response_end_ts"] == 1700000000.75
    assert r["duration_ms"] == 500.0
    assert r["connection_id"] == 7
    assert r["client"] == {"ip": "10.0.0.1", "port": 40000} and r["server"] == {"ip": "10.0.0.2", "port": 443}
    assert r["tls"] == {"version": "TLS1.3", "suite": "TLS_AES_128_GCM_SHA256", "sni": "api.example.test",
                        "alpn": "http/1.1"}
    assert (r["http_version"], r["method"], r["scheme"], r["authority"]) == ("1.1", "GET", "https",
                                                                             "api.example.test")
    assert (r["target"], r["path"], r["query_string"], r["query"]) == ("/v1/items?limit=2", "/v1/items",
                                                                       "limit=2", [["limit", "2"]])
    assert r["url"] == "https://api.example.test/v1/items?limit=2"
    assert (r["status"], r["reason"]) == (200, "OK")
    assert r["request"] == {"headers": [["Host", "api.example.test"]], "trailers": [], "content_type": None,
                            "body": None}
    assert r["response"]["content_type"] == "application/json"
    assert r["response"]["body"] == {"size": 7, "wire_size": 7, "captured": 7, "truncated": False,
                                     "decode_error": None, "encoding": "utf-8", "text": '{"a":1}'}
    assert r["flags"] == [] and r["stream_id"] is None


def test_cleartext_and_missing_sides() -> None:
    plain = Connection(1, "2001:db8::1", 5000, "2001:db8::2", 8080, False)
    r = rec(plain, authority=None, response_body=None, status=None, reason=None, response_ts=None,
            response_end_ts=None, flags=frozenset({"no_response", "truncated"}))
    assert r["tls"] is None and r["scheme"] == "http"
    assert r["url"] == "http://[2001:db8::2]:8080/v1/items?limit=2"  # authority from the server address
    assert r["response_start"] is None and r["response_end_ts"] is None
    assert r["duration_ms"] == 0.0  # request start to request end
    assert r["flags"] == ["no_response", "truncated"]
    r = rec(method=None, path=None, request_headers=(), request_ts=None, request_end_ts=None,
            flags=frozenset({"response_without_request"}))
    assert r["method"] is None and r["url"] is None and r["path"] is None and r["query"] == []
    assert r["request_start"] is None and r["response_start_ts"] == 1700000000.5
    assert r["duration_ms"] == 250.0


def test_h2_fields() -> None:
    r = rec(http_version="2", scheme="https", stream_id=5, reason=None,
            request_headers=(("user-agent", "x"), ("accept", "*/*"), ("accept", "text/html")))
    assert r["http_version"] == "2" and r["stream_id"] == 5 and r["reason"] is None
    assert r["request"]["headers"] == [["user-agent", "x"], ["accept", "*/*"], ["accept", "text/html"]]


def test_scheme_from_the_stage_wins() -> None:
    assert rec(scheme="http")["scheme"] == "http"
    assert rec(path="http://other.test/x?y")["url"] == "http://other.test/x?y"


def test_query_splitting() -> None:
    assert split_target("/a?b=1&b=2&c&d=&e=%20x+y") == ("/a", "b=1&b=2&c&d=&e=%20x+y")
    assert query_params("b=1&b=2&c&d=&e=%20x+y") == [["b", "1"], ["b", "2"], ["c", ""], ["d", ""],
                                                     ["e", " x y"]]
    assert split_target("/plain") == ("/plain", None) and split_target("/q?") == ("/q", "")
    assert split_target(None) == (None, None)
    assert rec(path="/p?x=%E2%9C%93")["query"] == [["x", "\u2713"]]


def test_headers_and_trailers_keep_order_and_repeats() -> None:
    r = rec(response_headers=(("Set-Cookie", "a=1"), ("X", "1"), ("Set-Cookie", "b=2")),
            response_trailers=(("grpc-status", "0"),))
    assert r["response"]["headers"] == [["Set-Cookie", "a=1"], ["X", "1"], ["Set-Cookie", "b=2"]]
    assert r["response"]["trailers"] == [["grpc-status", "0"]]


def test_bodies_text_binary_and_modes() -> None:
    binary = bytes(range(256))
    r = rec(response_headers=(("Content-Type", "image/png"),), response_body=Body(binary, 300, 300, True),
            flags=frozenset({"body_truncated"}))
    body = r["response"]["body"]
    assert body["encoding"] == "base64" and base64.b64decode(body["text"]) == binary
    assert body["truncated"] is True and body["captured"] == 256 and body["size"] == 300
    # valid UTF-8 but a binary content type, or control characters: base64
    assert rec(response_headers=(("Content-Type", "application/octet-stream"),),
               response_body=Body(b"abc", 3, 3, False))["response"]["body"]["encoding"] == "base64"
    assert rec(response_headers=(), response_body=Body(b"a\x00b", 3, 3, False))["response"]["body"][
        "encoding"] == "base64"
    # no content type, printable UTF-8: text
    assert rec(response_headers=(), response_body=Body("é✓\n".encode(), 6, 6, False))["response"]["body"][
        "text"] == "é✓\n"
    # a text type whose bytes are not UTF-8 (here: still-compressed data after a decode error)
    gz = b"\x1f\x8b\x08\x00junk\xff"
    body = rec(response_body=Body(gz, 9, 9, False, "gzip: invalid"))["response"]["body"]
    assert body["encoding"] == "base64" and body["decode_error"] == "gzip: invalid"
    # request bodies too
    r = rec(method="POST", request_headers=(("Content-Type", "application/x-www-form-urlencoded"),),
            request_body=Body(b"a=1&b=2", 7, 7, False))
    assert r["request"]["body"]["text"] == "a=1&b=2"
    assert r["request"]["content_type"] == "application/x-www-form-urlencoded"
    call = ApiCall(CONN, exchange())
    assert call_to_dict(call, body_mode="base64")["response"]["body"]["text"] == base64.b64encode(
        b'{"a":1}').decode()
    none = call_to_dict(call, body_mode="none")["response"]["body"]
    assert "text" not in none and "encoding" not in none and none["size"] == 7
    with pytest.raises(ValueError):
        call_to_dict(call, body_mode="hex")


def test_iso_time() -> None:
    assert iso_time(0.0) == "1970-01-01T00:00:00.000000Z"
    assert iso_time(1.5) == "1970-01-01T00:00:01.500000Z"
    assert iso_time(1795703367.1453169) == "2026-11-26T14:29:27.145317Z"
    assert iso_time(59.9999996) == "1970-01-01T00:01:00.000000Z"  # rounds into the next second
    assert iso_time(-1.25) == "1969-12-31T23:59:58.750000Z"


@given(st.floats(min_value=0, max_value=4e9))
def test_times_match_datetime_and_round(ts: float) -> None:
    """The record's fast time fields agree with the plain library forms."""
    r = rec(request_ts=ts, request_end_ts=ts)
    # within one microsecond of round(ts, 6) (they can differ on a half-microsecond tie)
    assert r["request_start_ts"] == pytest.approx(round(ts, 6), abs=2e-6)
    us = round(r["request_start_ts"] * 1_000_000)
    want = datetime.fromtimestamp(us // 1_000_000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    assert r["request_start"] == f"{want}.{us % 1_000_000:06d}Z"


@given(st.text(alphabet="ab=&;%+ x\u00e9", max_size=30))
def test_query_fast_path_matches_parse_qsl(query: str) -> None:
    assert query_params(query) == [[k, v] for k, v in parse_qsl(query, keep_blank_values=True)]


def test_url_forms() -> None:
    assert url_of(ApiCall(CONN, exchange(path="*", method="OPTIONS"))) == "https://api.example.test"
    assert url_of(ApiCall(replace(CONN, server_port=8443), exchange(authority=None))) == \
        "https://10.0.0.2:8443/v1/items?limit=2"


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), ct=st.sampled_from([None, "text/plain", "application/json", "image/gif",
                                                          "application/x-unknown"]),
       headers=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=5),
       target=st.text(max_size=40))
def test_any_exchange_is_json_and_bodies_round_trip(data: bytes, ct: str | None,
                                                     headers: list[tuple[str, str]], target: str) -> None:
    hdrs = tuple(headers) + ((("Content-Type", ct),) if ct else ())
    r = call_to_dict(ApiCall(CONN, exchange(response_headers=hdrs, path=target,
                                            response_body=Body(data, len(data), len(data), False))))
    back = json.loads(json.dumps(r, ensure_ascii=False))
    body = back["response"]["body"]
    got = base64.b64decode(body["text"]) if body["encoding"] == "base64" else body["text"].encode("utf-8")
    assert got == data
    assert body["encoding"] == ("utf-8" if body_is_text(data, ct) else "base64")
    assert back["response"]["headers"] == [list(h) for h in hdrs]


def test_iso_time_from_several_threads() -> None:
    """The memo of the last time formatted never hands one thread another thread's time."""
    import threading

    errors: list[str] = []

    def work(base: int) -> None:
        for i in range(3000):
            ts = base + i / 1000.0
            want = datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
            got = iso_time(ts)
            if not got.startswith(want):
                errors.append(f"{ts}: {got}")

    threads = [threading.Thread(target=work, args=(1_700_000_000 + k * 86_400,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


# ---------------------------------------------------------------- GraphQL pre-check (start-up, speed)
_GQL_TARGETS = st.one_of(st.none(), st.sampled_from(["/graphql", "/graphql?x=1", "/api/graphql", "/q?query=%7Ba%7D",
                                                     "/items?limit=2", "/query=1", "/", "*"]), st.text(max_size=20))
_GQL_BODIES = st.one_of(st.none(), st.sampled_from([b"", b'{"query":"{a}"}', b'  [{"query":"{a}"}]',
                                                    b'{"extensions":{"persistedQuery":{}}}', b'x"query"',
                                                    b'{"a":1}', b' ' * 20 + b'{"query":1}']),
                        st.binary(max_size=40))


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["GET", "POST"]), target=_GQL_TARGETS, body=_GQL_BODIES,
       paths=st.sampled_from([None, ("/graphql",), ("/api/graphql", "/gql"), ()]))
def test_record_graphql_precheck_is_the_readers(method: str, target: str | None, body: bytes | None,
                                                paths: tuple[str, ...] | None) -> None:
    """record.maybe_graphql (no import of the reader) answers as http.graphql.maybe_graphql does."""
    from tlsmirror.http import graphql
    from tlsmirror.record import GRAPHQL_PATHS, maybe_graphql

    assert GRAPHQL_PATHS == graphql.GRAPHQL_PATHS
    ex = exchange(method=method, path=target,
                  request_body=None if body is None else Body(body, len(body), len(body), False))
    options = None if paths is None else graphql.GraphqlOptions(paths=paths)
    want = graphql.maybe_graphql(ex, graphql.GRAPHQL_PATHS if options is None else options.paths)
    assert maybe_graphql(ex, split_target(target)[0], options) == want


# ---------------------------------------------------------------- JSON line with the connection part cached
@pytest.mark.parametrize("conn", [
    CONN,
    Connection(8, "2001:db8::1", 5000, "2001:db8::2", 8443, False),
    Connection(9, "10.0.0.1", 40001, "10.0.0.2", 443, True, None, None, None, None),
    Connection(10, "10.0.0.1", 40002, "10.0.0.2", 443, True, "TLS1.2", "x", "caf\u00e9.test\udcff", "h2"),
])
@pytest.mark.parametrize("body_mode", ["auto", "base64", "none"])
def test_call_to_json_line_is_the_record_line(conn: Connection, body_mode: str) -> None:
    """call_to_json_line (connection part serialised once per connection) gives the bytes of
    to_json_line(call_to_dict(...)), for every call of the connection, the surrogate fallback included."""
    from tlsmirror.record import call_to_json_line, to_json_line

    for ex in (exchange(), exchange(method="POST", path="/graphql",
                                    request_body=Body(b'{"query":"{a}"}', 15, 15, False)),
               exchange(path="/x\udcff")):
        call = ApiCall(conn, ex, "/v1/items")
        want = to_json_line(call_to_dict(call, body_mode=body_mode))
        assert call_to_json_line(call, body_mode=body_mode) == want
        assert call_to_json_line(call, body_mode=body_mode) == want  # cached now
    changed = replace(conn, sni="other.test")  # a new connection object: its own part
    call = ApiCall(changed, exchange())
    assert call_to_json_line(call) == to_json_line(call_to_dict(call))
