"""WebSocket frames: masking, fragments, control frames between fragments, permessage-deflate with and
without context takeover, close, bounds; malformed frames (hypothesis) flag the session, never raise."""

from __future__ import annotations

import os
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.http.h1 import H1Connection
from tlsmirror.http.websocket import WebSocketParser, session_dict


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False, rsv1: bool = False) -> bytes:
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    head = bytes([b0])
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


def deflate(comp: zlib._Compress, data: bytes) -> bytes:
    out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_masked_fragmented_with_ping_between_and_close() -> None:
    p = WebSocketParser()
    wire = (frame(1, b"hel", fin=False, mask=True) + frame(9, b"p", mask=True) + frame(0, b"lo", mask=True)
            + frame(2, bytes(range(200)), mask=True) + frame(8, (1000).to_bytes(2, "big") + b"bye", mask=True))
    for i in range(0, len(wire), 7):  # arbitrary chunking
        p.feed(0, wire[i:i + 7], float(i))
    p.feed(1, frame(1, b"x" * 70000), 99.0)
    s = p.finish()
    got = [(m.direction, m.opcode, m.data, m.frames) for m in s.messages]
    assert got == [(0, 9, b"p", 1), (0, 1, b"hello", 2), (0, 2, bytes(range(200)), 1),
                   (0, 8, b"\x03\xe8bye", 1), (1, 1, b"x" * 70000, 1)]
    assert (s.close_code, s.close_reason, s.closed_by, s.flags) == (1000, "bye", 0, set())
    d = session_dict(s)
    assert d["list"][1]["text"] == "hello" and d["list"][2]["base64"]


def test_permessage_deflate_window_bits_and_takeover() -> None:
    for ext, takeover in (("permessage-deflate; server_max_window_bits=10", True),
                          ("permessage-deflate; server_no_context_takeover", False)):
        p = WebSocketParser(ext)
        comp = zlib.compressobj(wbits=-10 if takeover else -15)
        msgs = [b"abc" * 100, b"abc" * 100, b"other text"]
        for i, m in enumerate(msgs):
            if not takeover:
                comp = zlib.compressobj(wbits=-15)
            p.feed(1, frame(1, deflate(comp, m), rsv1=True), float(i))
        s = p.finish()
        assert [m.data for m in s.messages] == msgs, ext
        assert all(m.compressed for m in s.messages) and s.messages[1].wire_size < 20
        assert s.flags == set()


def test_capture_and_message_bounds() -> None:
    p = WebSocketParser(capture=100, max_messages=3)
    for _ in range(5):
        p.feed(1, frame(2, b"y" * 80), 1.0)
    s = p.finish()
    assert s.counts == [0, 5] and len(s.messages) == 3 and "ws_messages_cut" in s.flags
    assert [len(m.data) for m in s.messages] == [80, 20, 0] and s.messages[1].cut


def test_malformed_frames_stop_one_direction_only() -> None:
    p = WebSocketParser()
    p.feed(0, frame(1, b"ok", mask=True), 1.0)
    p.feed(0, bytes([0x83, 0x00]), 2.0)  # opcode 3
    p.feed(0, frame(1, b"ignored", mask=True), 3.0)
    p.feed(1, frame(1, b"still"), 4.0)
    s = p.finish()
    assert [m.data for m in s.messages] == [b"ok", b"still"] and s.flags == {"ws_malformed"}


def test_http1_handshake_then_session_then_nothing_else_lost() -> None:
    h = H1Connection()
    out = h.feed(0, b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                 + frame(1, b"early", mask=True), 1.0)
    out += h.feed(1, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                  + frame(1, b"hi"), 2.0)
    assert out == []  # the handshake waits for its session
    out += h.feed(0, frame(8, b"\x03\xe8", mask=True), 3.0)
    out += h.feed(1, frame(8, b"\x03\xe8"), 4.0)
    assert len(out) == 1
    ex = out[0]
    assert ex.status == 101 and ex.websocket is not None  # type: ignore[union-attr]
    ws = ex.websocket  # type: ignore[union-attr]
    assert [(m.direction, m.data) for m in ws.messages] == [(0, b"early"), (1, b"hi"), (0, b"\x03\xe8"),
                                                           (1, b"\x03\xe8")]
    assert ws.close_code == 1000 and ws.end_ts == 4.0


def test_gap_and_close_of_connection_report_the_session() -> None:
    h = H1Connection()
    h.feed(0, b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 1.0)
    h.feed(1, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
           + frame(1, b"a" * 50)[:20], 2.0)
    h.gap(1, 100, 3.0)
    out = h.close(4.0)
    assert len(out) == 1
    ws = out[0].websocket  # type: ignore[union-attr]
    assert ws is not None and ws.flags == {"ws_gap"} and ws.messages[0].cut


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=60)), max_size=12),
       st.sampled_from([None, "permessage-deflate", "permessage-deflate; client_max_window_bits=8"]))
def test_any_bytes_never_raise(chunks: list[tuple[int, bytes]], ext: str | None) -> None:
    p = WebSocketParser(ext, capture=200, max_messages=5)
    for i, (direction, data) in enumerate(chunks):
        p.feed(direction, data, float(i))
    s = p.finish(99.0)
    session_dict(s)
    assert len(s.messages) <= 5 + 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10), st.binary(max_size=40), st.booleans(), st.booleans()), max_size=8))
def test_structured_frames_never_raise(frames: list[tuple[int, bytes, bool, bool]]) -> None:
    p = WebSocketParser("permessage-deflate")
    for op, payload, fin, rsv1 in frames:
        p.feed(0, frame(op, payload, fin=fin, mask=True, rsv1=rsv1), 1.0)
    session_dict(p.finish())
