"""gRPC exchange reading: messages, compression, status, protobuf, and malformed bodies (hypothesis)."""

from __future__ import annotations

import gzip
import zlib

import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.calls import ApiCall, Connection
from tlsmirror.http.events import Body, Exchange, Headers
from tlsmirror.http.grpc import grpc_info, split_path
from tlsmirror.http.protobuf import decode_message
from tlsmirror.record import call_to_dict
from tlsmirror.spans import call_to_span


def _frame(msg: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(msg).to_bytes(4, "big") + msg


def _body(data: bytes, truncated: bool = False) -> Body:
    return Body(data, len(data), len(data), truncated)


def _exchange(req: bytes | None, resp: bytes | None, *, req_headers: Headers = (), resp_headers: Headers = (),
              trailers: Headers = (("grpc-status", "0"),), path: str = "/pkg.Svc/Do") -> Exchange:
    rq: Headers = (("content-type", "application/grpc"), ("te", "trailers"), *req_headers)
    rs: Headers = (("content-type", "application/grpc+proto"), *resp_headers)
    return Exchange("2", "POST", "https", "api", path, 200, None, rq, rs, (), trailers,
                    None if req is None else _body(req), None if resp is None else _body(resp),
                    1.0, 1.1, 1.2, 1.3, 1, frozenset())


def _call(ex: Exchange) -> ApiCall:
    return ApiCall(Connection(1, "10.0.0.1", 5000, "10.0.0.2", 443, True, "TLS1.3", alpn="h2"), ex)


def test_path_split() -> None:
    assert split_path("/a.b.Svc/Get") == ("a.b.Svc", "Get")
    assert split_path("/Svc") == (None, None)
    assert split_path("/a/b/c") == (None, None)
    assert split_path(None) == (None, None)


def test_unary_with_status_and_decoded_fields() -> None:
    msg = b"\x0a\x03abc\x10\x96\x01\x1d\x01\x00\x00\x00\x21" + (2).to_bytes(8, "little")
    info = grpc_info(_exchange(_frame(b""), _frame(msg)))
    assert info is not None
    d = info.to_dict()
    assert (d["service"], d["method"], d["status_code"], d["status_name"]) == ("pkg.Svc", "Do", 0, "OK")
    assert d["request"]["messages"] == 1 and d["request"]["sizes"] == [0]
    assert d["request"]["first"][0]["fields"] == []
    assert d["response"]["first"][0]["fields"] == [
        {"field": 1, "wire": "len", "string": "abc"}, {"field": 2, "wire": "varint", "value": 150},
        {"field": 3, "wire": "i32", "value": 1}, {"field": 4, "wire": "i64", "value": 2}]
    assert d["flags"] == []


def test_trailers_only_error_and_percent_encoded_message() -> None:
    ex = _exchange(_frame(b"\x08\x01"), None, trailers=(),
                   resp_headers=(("grpc-status", "5"), ("grpc-message", "user%2042%20not%20found")))
    info = grpc_info(ex)
    assert info is not None
    assert (info.status_code, info.status_name, info.trailers_only) == (5, "NOT_FOUND", True)
    assert info.status_message == "user 42 not found"
    span = call_to_span(_call(ex), profile="semconv")
    attrs = dict(span.attributes)
    assert span.name == "pkg.Svc/Do"
    assert (attrs["rpc.system"], attrs["rpc.service"], attrs["rpc.method"]) == ("grpc", "pkg.Svc", "Do")
    assert attrs["rpc.grpc.status_code"] == 5
    assert not span.error  # NOT_FOUND is not a server error
    ex2 = _exchange(None, None, trailers=(("grpc-status", "13"),))
    span2 = call_to_span(_call(ex2))
    assert span2.error and span2.status_message == "gRPC INTERNAL"


def test_compressed_messages_of_each_encoding() -> None:
    inner = b"\x0a\x05hello" * 10
    for name, packed in (("gzip", gzip.compress(inner)), ("deflate", zlib.compress(inner)),
                         ("zstd", zstandard.ZstdCompressor().compress(inner))):
        ex = _exchange(_frame(packed, True), _frame(inner), req_headers=(("grpc-encoding", name),))
        info = grpc_info(ex)
        assert info is not None
        first = info.request.to_dict(3)["first"][0]
        assert first["compressed"] is True
        assert len(first["fields"]) == 10, name
    bad = grpc_info(_exchange(_frame(b"junk", True), None, req_headers=(("grpc-encoding", "gzip"),)))
    assert bad is not None and "grpc_decompress_failed" in bad.flags


def test_decompression_is_bounded() -> None:
    bomb = gzip.compress(bytes(10_000_000))
    info = grpc_info(_exchange(_frame(bomb, True), None, req_headers=(("grpc-encoding", "gzip"),)), limit=1000)
    assert info is not None
    msg = info.request.messages[0]
    assert msg.data is not None and len(msg.data) == 1000


def test_streams_counted_and_cut_bodies_flagged() -> None:
    body = b"".join(_frame(bytes([8, i])) for i in range(100))
    info = grpc_info(_exchange(body, body[:-1]))
    assert info is not None
    assert len(info.request.messages) == 100 and info.request.complete
    assert len(info.response.messages) == 100 and not info.response.complete
    assert "grpc_message_cut" in info.flags
    d = info.to_dict()
    assert len(d["request"]["first"]) == 3 and d["request"]["bytes"] == 200


def test_record_has_grpc_object_only_for_grpc() -> None:
    ex = _exchange(_frame(b"\x08\x01"), _frame(b"\x08\x02"))
    rec = call_to_dict(_call(ex))
    assert rec["grpc"]["method"] == "Do"
    assert "first" in rec["grpc"]["request"]
    assert rec["grpc"]["request"]["first"][0]["fields"] == [{"field": 1, "wire": "varint", "value": 1}]
    none = call_to_dict(_call(ex), body_mode="none")
    assert none["grpc"]["request"]["first"] == []
    plain = Exchange("1.1", "GET", None, "h", "/", 200, "OK", (), (), (), (), None, None, 1.0, 1.0, 1.0, 1.0,
                     None, frozenset())
    assert "grpc" not in call_to_dict(_call(plain))


def test_protobuf_prefers_text_and_bounds_depth() -> None:
    assert decode_message(b"\x0a\x02hi") == [{"field": 1, "wire": "len", "string": "hi"}]
    assert decode_message(b"\x0a\x02\xff\xfe") == [{"field": 1, "wire": "len", "bytes": "//4="}]
    assert decode_message(b"\x08") is None  # varint missing
    assert decode_message(b"\x00\x01") is None  # field 0
    assert decode_message(b"\x0b") is None  # group
    nested = b"\x08\x01"
    for _ in range(40):
        nested = bytes([0x0a, len(nested)]) + nested if len(nested) < 128 else nested
    fields = decode_message(nested)
    assert fields is not None
    depth = 0
    cur = fields
    while cur and "message" in cur[0]:
        cur = cur[0]["message"]
        depth += 1
    assert depth <= 8
    many = decode_message(b"\x08\x01" * 1000, max_fields=10)
    assert many is not None and many[-1] == {"truncated": True} and len(many) == 11


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_protobuf_never_raises(data: bytes) -> None:
    decode_message(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200), st.sampled_from(["gzip", "deflate", "zstd", "br", None]),
       st.booleans(), st.one_of(st.none(), st.text(max_size=12)))
def test_malformed_grpc_gives_a_flagged_partial_result(req: bytes, resp: bytes, enc: str | None, cut: bool,
                                                       status: str | None) -> None:
    headers: Headers = (("grpc-encoding", enc),) if enc else ()
    ex = _exchange(req, resp, req_headers=headers, resp_headers=headers,
                   trailers=(("grpc-status", status),) if status is not None else ())
    if cut:
        ex.response_body = Body(resp, len(resp) + 10, len(resp) + 10, True)
    info = grpc_info(ex)
    assert info is not None
    rec = call_to_dict(_call(ex))
    assert rec["grpc"]["request"]["messages"] >= 0
    call_to_span(_call(ex))
    if cut:
        assert not info.response.complete
