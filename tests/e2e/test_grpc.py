"""gRPC end to end: a real grpcio server (cleartext HTTP/2) behind a TLS terminator that logs its secrets,
called by a real grpcio client over TLS; tcpdump captures the client side and ``tlsmirror replay`` reads
the capture with the key log. Unary, server-streaming, client-streaming and bidirectional RPCs and one
failing with NOT_FOUND are each one call with service, method, status and message counts."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")

from tests.support.sniff import Sniffer, tcpdump_usable  # noqa: E402
from tests.support.tlsterm import TlsTerminator  # noqa: E402
from tlsmirror.shell.commands import main as cli_main  # noqa: E402

pytestmark = pytest.mark.slow

SERVICE = "lab.v1.Echo"


def _pb_string(field: int, text: str) -> bytes:
    raw = text.encode()
    return bytes([field << 3 | 2]) + _varint(len(raw)) + raw


def _pb_varint(field: int, value: int) -> bytes:
    return bytes([field << 3]) + _varint(value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _reply(text: str, n: int) -> bytes:
    # message Reply { string text = 1; int64 n = 2; Inner inner = 3 } with Inner { int32 code = 1 }
    return _pb_string(1, text) + _pb_varint(2, n) + bytes([3 << 3 | 2, 2]) + _pb_varint(1, 7)


def _unary(req: bytes, ctx: Any) -> bytes:
    return _reply("unary:" + req.decode(), 1)


def _server_stream(req: bytes, ctx: Any) -> Iterator[bytes]:
    for i in range(5):
        yield _reply(f"item {i}", i)


def _client_stream(reqs: Iterator[bytes], ctx: Any) -> bytes:
    n = sum(1 for _ in reqs)
    return _reply("count", n)


def _bidi(reqs: Iterator[bytes], ctx: Any) -> Iterator[bytes]:
    for i, r in enumerate(reqs):
        yield _reply("echo:" + r.decode(), i)


def _lookup(req: bytes, ctx: Any) -> bytes:
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such user: 42")


def _raw(b: bytes) -> bytes:
    return b


def _handlers() -> Any:
    kw = {"request_deserializer": _raw, "response_serializer": _raw}
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, **kw),
        "Watch": grpc.unary_stream_rpc_method_handler(_server_stream, **kw),
        "Upload": grpc.stream_unary_rpc_method_handler(_client_stream, **kw),
        "Chat": grpc.stream_stream_rpc_method_handler(_bidi, **kw),
        "Lookup": grpc.unary_unary_rpc_method_handler(_lookup, **kw),
    })


def _run_calls(term: TlsTerminator, *, compression: Any = None, payload: bytes = b"hello") -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=term.cert_pem)
    opts = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(f"127.0.0.1:{term.port}", creds, options=opts, compression=compression) as ch:
        kw = {"request_serializer": _raw, "response_deserializer": _raw}
        assert ch.unary_unary(f"/{SERVICE}/Unary", **kw)(payload, timeout=10)
        assert len(list(ch.unary_stream(f"/{SERVICE}/Watch", **kw)(b"w", timeout=10))) == 5
        assert ch.stream_unary(f"/{SERVICE}/Upload", **kw)(iter([b"a", b"bb", b"ccc"]), timeout=10)
        assert len(list(ch.stream_stream(f"/{SERVICE}/Chat", **kw)(iter([b"x", b"y"]), timeout=10))) == 2
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(f"/{SERVICE}/Lookup", **kw)(b"42", timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _capture(tmp: Path, *, compression: Any = None, payload: bytes = b"hello") -> list[dict[str, Any]]:
    why = tcpdump_usable()
    if why:
        pytest.skip(why)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_handlers(),))
    backend = server.add_insecure_port("127.0.0.1:0")
    server.start()
    keylog = tmp / "keys.log"
    keylog.touch()
    pcap = tmp / "grpc.pcap"
    try:
        with TlsTerminator(backend, keylog, alpn=["h2"]) as term, Sniffer(str(pcap), term.port):
            _run_calls(term, compression=compression, payload=payload)
    finally:
        server.stop(0)
    out = tmp / "calls.jsonl"
    assert cli_main(["replay", str(pcap), "--keylog", str(keylog), "-o", str(out), "--body-limit", "1m"]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def _by_method(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for r in records:
        assert "grpc" in r, r["target"]
        out[r["grpc"]["method"]] = r
    return out


def test_grpc_calls_are_reported_with_service_method_status_and_counts(tmp_path: Path) -> None:
    calls = _by_method(_capture(tmp_path))
    assert sorted(calls) == ["Chat", "Lookup", "Unary", "Upload", "Watch"]
    for r in calls.values():
        assert r["http_version"] == "2"
        assert r["grpc"]["service"] == SERVICE
        assert r["grpc"]["flags"] == []
    counts = {m: (r["grpc"]["request"]["messages"], r["grpc"]["response"]["messages"]) for m, r in calls.items()}
    assert counts == {"Unary": (1, 1), "Watch": (1, 5), "Upload": (3, 1), "Chat": (2, 2), "Lookup": (1, 0)}
    for m in ("Unary", "Watch", "Upload", "Chat"):
        g = calls[m]["grpc"]
        assert (g["status_code"], g["status_name"], g["trailers_only"]) == (0, "OK", False)
    assert calls["Upload"]["grpc"]["request"]["sizes"] == [1, 2, 3]
    lookup = calls["Lookup"]["grpc"]
    assert (lookup["status_code"], lookup["status_name"]) == (5, "NOT_FOUND")
    assert lookup["status_message"] == "no such user: 42"
    assert lookup["trailers_only"] is True
    # the first messages, decoded without a schema
    unary = calls["Unary"]["grpc"]
    assert unary["request"]["first"][0]["base64"] == "aGVsbG8="  # b"hello" is not a message
    fields = unary["response"]["first"][0]["fields"]
    assert fields == [{"field": 1, "wire": "len", "string": "unary:hello"},
                      {"field": 2, "wire": "varint", "value": 1},
                      {"field": 3, "wire": "len", "message": [{"field": 1, "wire": "varint", "value": 7}]}]
    watch = calls["Watch"]["grpc"]["response"]
    assert [f["fields"][0]["string"] for f in watch["first"]] == ["item 0", "item 1", "item 2"]


def test_grpc_gzip_messages_are_decompressed(tmp_path: Path) -> None:
    payload = b"hello " * 500  # grpcio leaves small messages uncompressed
    calls = _by_method(_capture(tmp_path, compression=grpc.Compression.Gzip, payload=payload))
    unary = calls["Unary"]["grpc"]
    assert unary["request_encoding"] == "gzip"
    assert unary["request"]["compressed"] == 1
    assert unary["request"]["sizes"][0] < len(payload)
    assert unary["request"]["first"][0]["base64"] == base64.b64encode(payload).decode()
    assert unary["response"]["first"][0]["fields"][0]["string"] == "unary:" + payload.decode()
    assert calls["Upload"]["grpc"]["request"]["messages"] == 3
    assert calls["Lookup"]["grpc"]["status_name"] == "NOT_FOUND"
