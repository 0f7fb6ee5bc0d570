"""tlsmirror.spans: ApiCall -> SpanRecord under both profiles (real decrypted calls and synthetic ones)."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.otlp_receiver import sample_api_calls
from tlsmirror.calls import ApiCall, Connection
from tlsmirror.http.events import Body, Exchange
from tlsmirror.redact import MASK, RedactionConfig, Redactor
from tlsmirror.spans import (
    SpanMapper,
    SpanRecord,
    call_to_span,
    parse_traceparent,
    resource_attributes,
    split_authority,
)

CONN = Connection(7, "10.0.0.1", 50000, "10.0.0.2", 443, True, "TLS1.3", "TLS_AES_128_GCM_SHA256",
                  "api.example.test", "h2")


def exchange(**kw: Any) -> Exchange:
    base: dict[str, Any] = dict(
        http_version="1.1", method="GET", scheme=None, authority="api.example.test", path="/v1/x?a=1&b=2",
        status=200, reason="OK", request_headers=(("Host", "api.example.test"),),
        response_headers=(("Content-Type", "application/json"),), request_trailers=(), response_trailers=(),
        request_body=None, response_body=None, request_ts=100.25, request_end_ts=100.5, response_ts=100.75,
        response_end_ts=101.0, stream_id=None, flags=frozenset())
    base.update(kw)
    return Exchange(**base)


def counter_bytes() -> Callable[[int], bytes]:
    c = itertools.count(1)
    return lambda n: next(c).to_bytes(n, "big")


def attrs(span: SpanRecord) -> dict[str, Any]:
    d = dict(span.attributes)
    assert len(d) == len(span.attributes), "duplicate attribute keys"
    return d


@pytest.mark.parametrize("profile", ["hypertrace", "semconv"])
def test_real_calls_carry_their_exchange(profile: str) -> None:
    calls = sample_api_calls()
    assert len(calls) == 60
    mapper = SpanMapper(profile)
    for call in calls:
        ex, conn = call.exchange, call.connection
        span = mapper.span(call)
        a = attrs(span)
        assert span.kind == "server" and not span.error and span.parent_span_id == b""
        assert span.start_ns == round(ex.request_ts * 1e9) and span.end_ns == round(ex.response_end_ts * 1e9)
        assert len(span.trace_id) == 16 and len(span.span_id) == 8
        path, _, query = ex.path.partition("?")
        url = f"https://{ex.authority}{ex.path}"
        # the engine's route table named the call: the span is named by it in both profiles
        assert call.route is not None and not any(s.isdigit() for s in call.route.split("/"))
        assert span.name == f"{ex.method} {call.route}" and a["http.route"] == call.route
        if profile == "hypertrace":
            assert (a["http.method"], a["http.url"], a["http.target"], a["http.scheme"], a["http.host"],
                    a["http.status_code"]) == (ex.method, url, ex.path, "https", ex.authority, ex.status)
            assert (a["net.peer.ip"], a["net.peer.port"], a["net.host.ip"], a["net.host.port"]) == \
                (conn.client_ip, conn.client_port, conn.server_ip, conn.server_port)
            for name, value in ex.request_headers:
                assert a[f"http.request.header.{name.lower()}"] == value
            for name, value in ex.response_headers:
                assert a[f"http.response.header.{name.lower()}"] == value
        else:
            assert (a["http.request.method"], a["url.full"], a["url.path"], a["url.scheme"],
                    a["http.response.status_code"], a["server.address"], a["server.port"]) == \
                (ex.method, url, path, "https", ex.status, conn.server_ip, 443)
            assert a.get("url.query") == (query or None)
            assert (a["client.address"], a["client.port"], a["network.protocol.version"]) == \
                (conn.client_ip, conn.client_port, "1.1")
            for name, value in ex.request_headers:
                assert a[f"http.request.header.{name.lower()}"] == (value,)
        assert a["tls.protocol.version"] == conn.tls_version.removeprefix("TLS")
        assert a["tls.cipher"] == conn.tls_suite
        assert a["tlsmirror.connection.id"] == conn.id
        for side, body in (("request", ex.request_body), ("response", ex.response_body)):
            if body is None:
                assert f"http.{side}.body" not in a
            else:
                assert a[f"http.{side}.body"] == body.data.decode()
                assert a[f"http.{side}.body.size"] == body.wire_size
                json.loads(a[f"http.{side}.body"])


def test_traceparent_gives_trace_and_parent() -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    call = ApiCall(CONN, exchange(request_headers=(("traceparent", tp), ("tracestate", "a=1"),
                                                   ("TraceState", "b=2"))))
    span = call_to_span(call, random_bytes=counter_bytes())
    assert span.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.parent_span_id.hex() == "00f067aa0ba902b7"
    assert span.span_id == (1).to_bytes(8, "big") and span.remote_parent and span.trace_flags == 1
    assert span.trace_state == "a=1,b=2"


@pytest.mark.parametrize("value", [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 has no extra fields
    "garbage",
])
def test_invalid_traceparent_means_new_trace(value: str) -> None:
    assert parse_traceparent(value) is None
    span = call_to_span(ApiCall(CONN, exchange(request_headers=(("traceparent", value),))),
                        random_bytes=counter_bytes())
    assert span.trace_id == (1).to_bytes(16, "big") and span.parent_span_id == b"" and not span.remote_parent


def test_future_traceparent_version_accepted() -> None:
    assert parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more") is not None


@pytest.mark.parametrize(("kw", "error", "message"), [
    ({"status": 503}, True, "HTTP 503"),
    ({"status": 404}, False, ""),
    ({"flags": frozenset({"gap"})}, True, "exchange cut short: gap"),
    ({"flags": frozenset({"reset"}), "status": None}, True, "exchange cut short: reset"),
    ({"flags": frozenset({"interim_response"})}, False, ""),
])
def test_status(kw: dict[str, Any], error: bool, message: str) -> None:
    for profile in ("hypertrace", "semconv"):
        span = call_to_span(ApiCall(CONN, exchange(**kw)), profile=profile)
        assert (span.error, span.status_message) == (error, message)
        a = attrs(span)
        if profile == "semconv":
            assert ("error.type" in a) == error
        if kw.get("flags"):
            assert a["tlsmirror.flags"] == tuple(sorted(kw["flags"]))


def test_times_without_request_or_response() -> None:
    s = call_to_span(ApiCall(CONN, exchange(method=None, request_ts=None, request_end_ts=None,
                                            flags=frozenset({"response_without_request"}))))
    assert (s.start_ns, s.end_ns, s.name) == (100_750_000_000, 101_000_000_000, "HTTP")
    s = call_to_span(ApiCall(CONN, exchange(status=None, response_ts=None, response_end_ts=None,
                                            flags=frozenset({"no_response"}))))
    assert (s.start_ns, s.end_ns, s.error) == (100_250_000_000, 100_500_000_000, True)


def test_repeated_headers_and_redaction() -> None:
    ex = exchange(request_headers=(("Host", "h"), ("Cookie", "a=1"), ("cookie", "b=2"), ("X-Tag", "1"),
                                   ("x-tag", "2"), ("Authorization", "Bearer abc")),
                  response_headers=(("Set-Cookie", "s=1"),))
    ht = attrs(call_to_span(ApiCall(CONN, ex)))
    assert (ht["http.request.header.cookie[0]"], ht["http.request.header.cookie[1]"]) == (MASK, MASK)
    assert (ht["http.request.header.x-tag[0]"], ht["http.request.header.x-tag[1]"]) == ("1", "2")
    assert ht["http.request.header.authorization"] == MASK and ht["http.response.header.set-cookie"] == MASK
    sc = attrs(call_to_span(ApiCall(CONN, ex), profile="semconv"))
    assert sc["http.request.header.x-tag"] == ("1", "2") and sc["http.request.header.cookie"] == (MASK, MASK)
    off = attrs(call_to_span(ApiCall(CONN, ex), redactor=Redactor(RedactionConfig(enabled=False))))
    assert off["http.request.header.authorization"] == "Bearer abc"


def test_bodies_binary_truncated_dropped_and_masked() -> None:
    binary = Body(b"\x00\xffbin", 5, 5, False)
    json_body = Body(b'{"password": "pw1", "n": 1', 40, 40, True)
    ex = exchange(method="POST", request_body=json_body,
                  request_headers=(("Content-Type", "application/json"),),
                  response_body=binary, response_headers=(("Content-Type", "text/plain"),))
    red = Redactor(RedactionConfig(fields=frozenset({"password"})))
    a = attrs(call_to_span(ApiCall(CONN, ex), redactor=red))
    assert a["http.request.body"] == f'{{"password": "{MASK}", "n": 1'
    assert a["http.request.body.truncated"] is True and a["http.request.body.size"] == 40
    assert base64.b64decode(a["http.response.body.base64"]) == b"\x00\xffbin"
    assert "http.response.body" not in a
    img = exchange(response_body=binary, response_headers=(("Content-Type", "image/png"),))
    a = attrs(call_to_span(ApiCall(CONN, img)))
    assert "http.response.body.base64" not in a and a["tlsmirror.response.body.dropped"] is True
    assert a["http.response.body.size"] == 5


def test_url_forms() -> None:
    ipv6 = Connection(1, "::1", 4000, "2001:db8::2", 8443, True)
    a = attrs(call_to_span(ApiCall(ipv6, exchange(authority=None)), profile="semconv"))
    assert a["url.full"] == "https://[2001:db8::2]:8443/v1/x?a=1&b=2"
    assert (a["server.address"], a["server.port"]) == ("2001:db8::2", 8443)
    plain = Connection(2, "1.1.1.1", 1, "2.2.2.2", 80, False)
    a = attrs(call_to_span(ApiCall(plain, exchange(path="http://h.test:8080/p?q", authority="h.test:8080"))))
    assert (a["http.url"], a["http.target"], a["http.scheme"]) == ("http://h.test:8080/p?q", "/p?q", "http")
    a = attrs(call_to_span(ApiCall(CONN, exchange(method="CONNECT", path=None, authority="db:5432"))))
    assert a["http.url"] == "https://db:5432" and a["http.target"] == "db:5432"
    red = Redactor(RedactionConfig(fields=frozenset({"b"})))
    a = attrs(call_to_span(ApiCall(CONN, exchange()), profile="semconv", redactor=red))
    assert a["url.query"] == f"a=1&b={MASK}" and a["url.full"].endswith(f"?a=1&b={MASK}")
    assert split_authority("[::1]") == ("::1", None) and split_authority("h:x") == ("h:x", None)


def test_unknown_method_semconv() -> None:
    s = call_to_span(ApiCall(CONN, exchange(method="PURGE")), profile="semconv")
    a = attrs(s)
    assert (s.name, a["http.request.method"], a["http.request.method_original"]) == \
        ("HTTP", "_OTHER", "PURGE")


def test_resource() -> None:
    r = dict(resource_attributes(service_name="shop", environment="prod", host_name="h1", sensor_version="9"))
    assert r["service.name"] == "shop" and r["deployment.environment"] == "prod" and r["host.name"] == "h1"
    assert r["telemetry.sdk.version"] == "9" and r["tlsmirror.sensor.name"] == "tlsmirror"


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="unknown span profile"):
        SpanMapper("zipkin")


headers_st = st.lists(st.tuples(st.text(min_size=1, max_size=12), st.text(max_size=20)),
                      max_size=6).map(tuple)
body_st = st.none() | st.builds(lambda d, t, e: Body(d, len(d), len(d), t, e), st.binary(max_size=64),
                                st.booleans(), st.none() | st.just("gzip: bad"))
ts_st = st.none() | st.floats(0, 2e9, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(method=st.none() | st.text(max_size=8), scheme=st.none() | st.sampled_from(["http", "https", "x"]),
       authority=st.none() | st.text(max_size=20), path=st.none() | st.text(max_size=30),
       status=st.none() | st.integers(100, 599), rh=headers_st, sh=headers_st, rb=body_st, sb=body_st,
       t1=ts_st, t2=ts_st, t3=ts_st, t4=ts_st,
       flags=st.frozensets(st.sampled_from(["gap", "reset", "truncated", "push", "no_response"])),
       profile=st.sampled_from(["hypertrace", "semconv"]))
def test_any_exchange_maps(method: Any, scheme: Any, authority: Any, path: Any, status: Any, rh: Any,
                           sh: Any, rb: Any, sb: Any, t1: Any, t2: Any, t3: Any, t4: Any, flags: Any,
                           profile: str) -> None:
    ex = exchange(method=method, scheme=scheme, authority=authority, path=path, status=status,
                  request_headers=rh, response_headers=sh, request_body=rb, response_body=sb, request_ts=t1,
                  request_end_ts=t2, response_ts=t3, response_end_ts=t4, flags=flags)
    span = call_to_span(ApiCall(CONN, ex), profile=profile,
                        redactor=Redactor(RedactionConfig(fields=frozenset({"a"}), content_types=("*",))))
    assert span.end_ns >= span.start_ns
    for key, value in span.attributes:
        assert isinstance(key, str)
        assert isinstance(value, (str, bool, int, float, tuple))


@pytest.mark.parametrize("profile", ["hypertrace", "semconv"])
def test_route_names_the_span(profile: str) -> None:
    call = ApiCall(CONN, exchange(path="/users/1234?x=1"), "/users/{user_id}")
    span = SpanMapper(profile).span(call)
    assert span.name == "GET /users/{user_id}" and attrs(span)["http.route"] == "/users/{user_id}"
    odd = SpanMapper(profile).span(ApiCall(CONN, exchange(method="BREW", path="/pot/1"), "/pot/{pot_id}"))
    assert odd.name == ("HTTP /pot/{pot_id}" if profile == "semconv" else "BREW /pot/{pot_id}")
    bare = SpanMapper(profile).span(ApiCall(CONN, exchange(path="/users/1234")))
    assert bare.name == ("GET" if profile == "semconv" else "GET /users/1234") and "http.route" not in attrs(bare)


def test_sensitive_types_never_values() -> None:
    from tlsmirror.inventory.sensitive import SensitiveRules

    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    body = Body(b'{"card": "4012 8888 8888 1881"}', 31, 31, False, None)
    ex = exchange(path="/mail/jane.doe@example.com?to=bob%40example.org",
                  request_headers=(("Host", "api.example.test"), ("Authorization", f"Bearer {jwt}")),
                  request_body=body)
    call = ApiCall(CONN, ex, "/mail/{email}")
    plain = attrs(SpanMapper("semconv", sensitive=SensitiveRules()).span(call))
    assert plain["tlsmirror.sensitive.types"] == ("email", "jwt")
    assert plain["tlsmirror.sensitive.locations"] == ("email@path", "email@query:to", "jwt@header:authorization")
    deep = attrs(SpanMapper("semconv", sensitive=SensitiveRules(), sensitive_bodies=True).span(call))
    assert deep["tlsmirror.sensitive.types"] == ("card_number", "email", "jwt")
    assert "card_number@request.body:$" in deep["tlsmirror.sensitive.locations"]
    for v in (*plain["tlsmirror.sensitive.locations"], *deep["tlsmirror.sensitive.locations"]):
        assert "jane" not in v and "4012" not in v and "eyJ" not in v
    assert "tlsmirror.sensitive.types" not in attrs(SpanMapper("semconv").span(call))
    clean = attrs(SpanMapper("semconv", sensitive=SensitiveRules()).span(ApiCall(CONN, exchange())))
    assert "tlsmirror.sensitive.types" not in clean
