"""Server-sent events: the stream format, per-event times from chunk stamps, malformed streams (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.calls import ApiCall, Connection
from tlsmirror.http.bodies import BodyCollector
from tlsmirror.http.events import Body, Exchange
from tlsmirror.http.sse import parse_events
from tlsmirror.record import call_to_dict

STREAM = (b": comment\n\nretry: 500\nid: 1\nevent: tick\ndata: one\n\n"
          b"data: two\r\ndata:  lines\r\n\r\nid: 2\rdata: {\"a\":1}\r\rdata: cut")


def test_stream_format() -> None:
    s = parse_events(Body(STREAM, len(STREAM), len(STREAM), False))
    got = [(e.id, e.event, e.data, e.data_size, e.retry, e.cut) for e in s.events]
    assert got == [("1", "tick", "one", 3, 500, False), (None, None, "two\n lines", 10, None, False),
                   ("2", None, '{"a":1}', 7, None, False), (None, None, "cut", 3, None, True)]
    assert s.count == 4 and s.last_id == "2" and not s.complete


def test_times_come_from_the_chunk_that_completed_each_event() -> None:
    c = BodyCollector(1 << 20, stamps=True)
    c.write(b"data: a\n", 10.0)
    c.write(b"\ndata: b\n\nda", 11.0)
    c.write(b"ta: c\n\n", 12.0)
    body = c.finish()
    assert body.stamps == ((8, 10.0), (20, 11.0), (27, 12.0))
    s = parse_events(body)
    assert [(e.data, e.ts) for e in s.events] == [("a", 11.0), ("b", 11.0), ("c", 12.0)]
    assert s.complete


def test_record_has_sse_object() -> None:
    ex = Exchange("1.1", "GET", None, "h", "/events", 200, "OK", (), (("Content-Type", "text/event-stream"),),
                  (), (), None, Body(STREAM, len(STREAM), len(STREAM), False), 1.0, 1.0, 1.0, 1.0, None,
                  frozenset())
    rec = call_to_dict(ApiCall(Connection(1, "a", 1, "b", 2, False), ex))
    assert rec["sse"]["events"] == 4 and rec["sse"]["list"][0]["data"] == "one"
    rec = call_to_dict(ApiCall(Connection(1, "a", 1, "b", 2, False), ex), body_mode="none")
    assert "data" not in rec["sse"]["list"][0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"data: x", b"id: 7", b"event: e", b":c", b"", b"retry: 9", b"\xff", b"d"]),
                max_size=30), st.sampled_from([b"\n", b"\r\n", b"\r"]), st.booleans())
def test_any_stream_parses_without_raising(lines: list[bytes], eol: bytes, cut: bool) -> None:
    data = eol.join(lines)
    s = parse_events(Body(data, len(data) + cut, len(data) + cut, cut, None, ((len(data), 1.0),)))
    assert s.count >= len(s.events)
    if cut:
        assert not s.complete


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    parse_events(Body(data, len(data), len(data), False))
