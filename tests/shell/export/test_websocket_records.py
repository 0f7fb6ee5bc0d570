"""A WebSocket session on its way out: JSON lines per session or per message (``output.websocket_records``),
and one span per session with one event per message (the OTLP ``Span.events``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlsmirror.calls import ApiCall, Connection
from tlsmirror.http.events import Exchange
from tlsmirror.http.websocket import WebSocketParser
from tlsmirror.shell.export.jsonl import JsonlExporter
from tlsmirror.shell.export.otlp import span_message
from tlsmirror.spans import SpanMapper

CONN = Connection(3, "10.0.0.1", 40000, "10.0.0.2", 443, True, "TLS1.3", None, "ws.example", "http/1.1")


def _frame(opcode: int, payload: bytes, mask: bytes = b"") -> bytes:
    head = bytes([0x80 | opcode, (0x80 if mask else 0) | len(payload)]) + mask
    return head + (bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if mask else payload)


def session_call(messages: int = 3) -> ApiCall:
    p = WebSocketParser()
    for i in range(messages):
        p.feed(0, _frame(1, f"ping {i}".encode(), b"abcd"), 10.0 + i)
        p.feed(1, _frame(2, bytes([i]) * 5), 10.5 + i)
    p.feed(0, _frame(8, (1000).to_bytes(2, "big") + b"bye", b"wxyz"), 20.0)
    p.feed(1, _frame(8, (1000).to_bytes(2, "big")), 20.5)
    ex = Exchange("1.1", "GET", None, "ws.example", "/chat/7?x=1", 101, "Switching Protocols",
                  (("Upgrade", "websocket"),), (("Upgrade", "websocket"),), (), (), None, None,
                  9.0, 9.0, 9.5, 9.5, None, frozenset(), websocket=p.finish(21.0))
    return ApiCall(CONN, ex, "/chat/{chat_id}")


@pytest.mark.parametrize("mode", ["session", "message"])
def test_jsonl_one_record_per_session_or_per_message(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "calls.jsonl"
    ex = JsonlExporter(str(out), websocket_records=mode)
    ex.export(session_call())
    ex.close()
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    if mode == "session":
        assert len(recs) == 1 and len(recs[0]["websocket"]["list"]) == 8
        return
    head, msgs = recs[0], recs[1:]
    assert head["status"] == 101 and head["websocket"]["list"] == [] and head["websocket"]["close_code"] == 1000
    assert head["websocket"]["messages"] == {"client": 4, "server": 4}
    assert len(msgs) == 8 and all(m["kind"] == "websocket_message" for m in msgs)
    assert [m["index"] for m in msgs] == list(range(8))
    assert (msgs[0]["direction"], msgs[0]["opcode"], msgs[0]["text"]) == ("client", "text", "ping 0")
    assert (msgs[1]["direction"], msgs[1]["opcode"], msgs[1]["base64"]) == ("server", "binary", "AAAAAAA=")
    assert msgs[-1]["opcode"] == "close" and msgs[0]["route"] == "/chat/{chat_id}"
    assert {m["connection_id"] for m in msgs} == {3} and msgs[0]["session_start_ts"] == 9.0
    assert msgs[0]["time"] == "1970-01-01T00:00:10.000000Z" and msgs[0]["ts"] == 10.0
    with pytest.raises(ValueError):
        JsonlExporter(str(out), websocket_records="frames")


def test_span_per_session_with_message_events() -> None:
    span = SpanMapper("semconv").span(session_call())
    assert span.name == "GET /chat/{chat_id}" and span.end_ns == 20_500_000_000
    assert len(span.events) == 8 and span.dropped_events == 0
    first = dict(span.events[0].attributes)
    assert span.events[0].name == "websocket.message" and span.events[0].time_ns == 10_000_000_000
    assert first == {"message.type": "RECEIVED", "message.id": 1, "message.uncompressed_size": 6,
                     "tlsmirror.websocket.direction": "client", "tlsmirror.websocket.opcode": "text",
                     "tlsmirror.websocket.wire_size": 6}
    assert dict(span.events[1].attributes)["message.type"] == "SENT"
    assert all("ping" not in str(e.attributes) for e in span.events)  # sizes, never the content
    bounded = SpanMapper("semconv", max_events=3).span(session_call(50))
    assert len(bounded.events) == 3 and bounded.dropped_events == 102 - 3
    msg = span_message(bounded)
    assert len(msg.events) == 3 and msg.dropped_events_count == 99
    assert msg.events[0].name == "websocket.message" and msg.events[0].time_unix_nano == 10_000_000_000
    assert {kv.key for kv in msg.events[0].attributes} >= {"message.type", "tlsmirror.websocket.opcode"}


def test_configuration_reaches_the_exporters(tmp_path: Path) -> None:
    from tlsmirror.shell.config import load_config
    from tlsmirror.shell.daemon.outputs import build_exporters

    cfg = load_config(None, env={"TLSMIRROR_HTTP_GRAPHQL_PATHS": "/gql,/v2/graphql"}, use_default_path=False,
                      flags={"output.jsonl": str(tmp_path / "o.jsonl"), "output.websocket_records": "message",
                             "http.graphql_max_fields": "3"})
    (ex,) = build_exporters(cfg)
    assert isinstance(ex, JsonlExporter) and ex.per_message
    assert ex.graphql is not None and ex.graphql.paths == ("/gql", "/v2/graphql") and ex.graphql.max_fields == 3
    ex.close()
