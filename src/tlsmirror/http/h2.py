"""HTTP/2 as seen by a passive observer of both directions of one connection.

Frames are cut from each direction's byte stream and parsed with ``hyperframe``, except that DATA
payloads are streamed straight into the stream's body (so a gap inside a DATA payload keeps the
framing, and no DATA frame is held whole). Header blocks are decoded with one ``hpack.Decoder``
per direction while that direction's HPACK state is known from its start. When it is not (a
connection picked up mid-way, a gap that may have swallowed a header block, a decoding error) a
:class:`PartialHpack` decoder takes over: it resolves static-table references, literals and the
dynamic-table entries inserted since it started, and reports a block as partial when it cannot
resolve everything. Headers it returns are never wrong; missing ones are flagged
"partial_headers".

Streams are tracked passively (no endpoint state machine): an exchange completes when both sides
sent END_STREAM, or on RST_STREAM, or at close.

WebSocket over HTTP/2 (RFC 8441): a stream whose request is an extended CONNECT (``:method CONNECT``,
``:protocol websocket``) answered with a 2xx carries WebSocket frames in its DATA frames, both ways;
they go to the same :class:`~tlsmirror.http.websocket.WebSocketParser` as after an HTTP/1.1 upgrade,
and the stream's exchange (the handshake) carries the session in ``websocket`` when the stream ends.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING

import hpack
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
)

from .bodies import BodyCollector, is_event_stream, is_text, parse_encodings
from .errors import HttpError
from .events import Body, EventQueue, Exchange, HttpProblem

if TYPE_CHECKING:  # imported at the first extended CONNECT: most streams have none (start-up)
    from .websocket import WebSocketParser

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

T_DATA, T_HEADERS, T_PRIORITY, T_RST, T_SETTINGS, T_PUSH, T_PING, T_GOAWAY, T_WINDOW, T_CONT = range(10)
F_END_STREAM, F_ACK, F_END_HEADERS, F_PADDED, F_PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20

MAX_CONTROL_FRAME = 1 << 20  # a non-DATA frame larger than this is skipped, not buffered
MAX_HEADER_BLOCK = 1 << 20  # HEADERS + CONTINUATION bytes of one block
MAX_STREAMS = 4096  # streams tracked at once; the oldest is flushed beyond that
MAX_UNSYNCED = 256 * 1024  # bytes kept while looking for a frame boundary
MAX_TABLE_ENTRIES = 4096  # partial HPACK decoder: dynamic entries remembered

_HDR = struct.Struct(">BHBBL")  # length (8 + 16 bits), type, flags, stream id

_ALLOWED_FLAGS = (0x09, 0x2D, 0x00, 0x00, 0x01, 0x0C, 0x01, 0x00, 0x00, 0x04)
_STREAM_ZERO = (False, False, False, False, True, False, True, True, None, False)
_FIXED_LEN = {T_PRIORITY: 5, T_RST: 4, T_PING: 8, T_WINDOW: 4}

_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE

Headers = list[tuple[str, str]]


def _text(b: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b.decode("latin-1")


class _HpackFail(Exception):
    pass


def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """RFC 7541 5.1 integer at ``data[pos]`` with a ``prefix``-bit prefix."""
    if pos >= len(data):
        raise _HpackFail
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise _HpackFail
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _str(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise _HpackFail
    huff = data[pos] & 0x80
    length, pos = _int(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise _HpackFail
    raw = data[pos:end]
    if huff:
        try:
            raw = decode_huffman(raw)
        except Exception:  # hpack raises its own decoding errors
            raise _HpackFail from None
    return raw, end


class PartialHpack:
    """An HPACK decoder for a direction whose dynamic table is not known from its start.

    It remembers the entries inserted since it started (an entry whose name it could not resolve
    is remembered as unknown). Dynamic-table indices count from the newest insertion, so entries
    it saw inserted keep their index whatever older, unknown entries were evicted; a reference it
    cannot resolve is skipped and the block reported as partial. Eviction is not tracked: an
    encoder never references an evicted entry.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: deque[tuple[bytes, bytes] | None] = deque(maxlen=MAX_TABLE_ENTRIES)

    def _entry(self, index: int) -> tuple[bytes, bytes] | None:
        if index <= 0:
            raise _HpackFail
        if index <= len(_STATIC):
            return _STATIC[index - 1]
        index -= len(_STATIC) + 1
        return self.entries[index] if index < len(self.entries) else None

    def decode(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
        """(headers that could be resolved, whether that is all of them)."""
        out: list[tuple[bytes, bytes]] = []
        complete = True
        pos = 0
        n = len(block)
        try:
            while pos < n:
                b = block[pos]
                if b & 0x80:  # indexed field
                    idx, pos = _int(block, pos, 7)
                    entry = self._entry(idx)
                    if entry is None:
                        complete = False
                    else:
                        out.append(entry)
                    continue
                if b & 0xE0 == 0x20:  # dynamic table size update
                    size, pos = _int(block, pos, 5)
                    if size == 0:
                        self.entries.clear()
                    continue
                indexing = bool(b & 0x40)
                idx, pos = _int(block, pos, 6 if indexing else 4)
                name: bytes | None
                if idx:
                    entry = self._entry(idx)
                    name = None if entry is None else entry[0]
                else:
                    name, pos = _str(block, pos)
                value, pos = _str(block, pos)
                if name is None:
                    complete = False
                    if indexing:
                        self.entries.appendleft(None)
                    continue
                out.append((name, value))
                if indexing:
                    self.entries.appendleft((name, value))
        except _HpackFail:
            # malformed: what followed may have inserted entries we cannot know
            self.entries.clear()
            return out, False
        return out, complete


class _Half:
    """One side (request or response) of a stream."""

    __slots__ = ("body", "end_ts", "ended", "headers", "pseudo", "seen", "trailers", "ts")

    def __init__(self) -> None:
        self.seen = False
        self.ended = False
        self.headers: Headers = []
        self.pseudo: dict[str, str] = {}
        self.trailers: Headers = []
        self.body: BodyCollector | None = None
        self.ts: float | None = None
        self.end_ts: float | None = None


class _Stream:
    __slots__ = ("flags", "half", "id", "ws")

    def __init__(self, sid: int) -> None:
        self.id = sid
        self.half = (_Half(), _Half())
        self.flags: set[str] = set()
        self.ws: WebSocketParser | None = None  # RFC 8441: the stream carries a WebSocket session


class _Dir:
    """Frame-cutting state of one direction."""

    __slots__ = ("block", "block_end_stream", "block_promised", "block_sid", "block_ts", "buf",
                 "d_end", "d_left", "d_pad", "d_padlen_pending", "d_sid", "decoder", "partial",
                 "preface", "skip", "skip_hpack", "synced")

    def __init__(self) -> None:
        self.buf = b""
        self.preface = False  # client: still expecting (part of) the preface
        self.synced = True  # frame boundaries known
        self.decoder: hpack.Decoder | None = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 24
        self.partial: PartialHpack | None = None
        # DATA payload being streamed
        self.d_left = 0
        self.d_pad = 0
        self.d_padlen_pending = False
        self.d_sid = 0
        self.d_end = False
        # a frame too large to buffer, being skipped
        self.skip = 0
        self.skip_hpack = False
        # header block being assembled (HEADERS/PUSH_PROMISE + CONTINUATION)
        self.block: list[bytes] | None = None
        self.block_sid = 0
        self.block_end_stream = False
        self.block_promised: int | None = None
        self.block_ts = 0.0


class H2Connection(EventQueue):
    """Pairs HTTP/2 requests and responses by stream (direction 0 = client->server)."""

    def __init__(self, *, body_limit: int = 128 * 1024) -> None:
        self.body_limit = body_limit
        self._dirs = (_Dir(), _Dir())
        self._dirs[0].preface = True
        self._started = [False, False]
        self._streams: dict[int, _Stream] = {}
        self._closed_ids: deque[int] = deque(maxlen=4096)
        self._closed_set: set[int] = set()
        self._max_frame = 16384
        self._out: list[Exchange | HttpProblem] = []
        self.problems: list[str] = []
        self.stopped = False

    # -- public ---------------------------------------------------------------------------------

    def feed(self, direction: int, data: bytes, ts: float) -> list[Exchange | HttpProblem]:
        if self.stopped or not data:
            return self._take()
        d = self._dirs[direction]
        d.buf = d.buf + data if d.buf else data
        if not self._started[direction] and not self._start(direction, d):
            return self._take()
        try:
            self._run(direction, d, ts)
        except HttpError as exc:
            self._stop(ts, f"{'client' if direction == 0 else 'server'}: {exc}")
        return self._take()

    def gap(self, direction: int, size: int, ts: float) -> list[Exchange | HttpProblem]:
        if self.stopped or size <= 0:
            return self._take()
        d = self._dirs[direction]
        if not self._started[direction]:
            self._started[direction] = True
            d.preface = False
            self._lose_sync(direction, d)
            d.buf = b""
            return self._take()
        if d.synced and not d.buf and d.skip and size <= d.skip:
            d.skip -= size  # inside a skipped frame
            return self._take()
        if d.synced and not d.buf and d.d_left and not d.d_padlen_pending and size <= d.d_left:
            s = self._streams.get(d.d_sid)
            data_left = d.d_left - d.d_pad
            if s is not None:
                h = s.half[direction]
                if s.ws is not None and data_left:
                    s.ws.gap(direction, min(size, data_left), ts)
                elif h.body is not None and data_left:
                    h.body.gap(min(size, data_left))
                s.flags.add("gap")
            if size > data_left:
                d.d_pad -= size - data_left
            d.d_left -= size
            if d.d_left == 0:
                self._data_done(direction, d, ts)
            return self._take()
        # the hole may hide frame boundaries and header blocks
        if d.d_left or d.d_padlen_pending:
            s = self._streams.get(d.d_sid)
            if s is not None:
                s.flags.add("gap")
                h = s.half[direction]
                if s.ws is not None:
                    s.ws.gap(direction, size, ts)
                elif h.body is not None:
                    h.body.gap(size)
        if d.block is not None:
            s = self._streams.get(d.block_sid)
            if s is not None:
                s.flags.add("gap")
                s.flags.add("partial_headers")
        self._lose_sync(direction, d)
        d.buf = b""  # bytes before the hole do not continue into bytes after it
        return self._take()

    def close(self, ts: float) -> list[Exchange | HttpProblem]:
        if not self.stopped:
            for i in (0, 1):
                d = self._dirs[i]
                if self._started[i] and not d.synced and d.buf and self._resync(d, at_close=True):
                    try:
                        self._run(i, d, ts)
                    except HttpError as exc:
                        self._stop(ts, f"{'client' if i == 0 else 'server'}: {exc}")
                        return self._take()
            self._flush_all(ts)
            self.stopped = True
        return self._take()

    # -- internals ------------------------------------------------------------------------------

    def _stop(self, ts: float, reason: str) -> None:
        self.problems.append(reason)
        self._out.append(HttpProblem(ts, reason))
        self._flush_all(ts)
        self.stopped = True

    def _flush_all(self, ts: float) -> None:
        for s in list(self._streams.values()):
            self._emit(s, ts, final=True)
        self._streams.clear()

    def _start(self, i: int, d: _Dir) -> bool:
        """Decide how a direction begins: from its start (preface / SETTINGS) or mid-way."""
        buf = d.buf
        if i == 0:
            k = min(len(buf), len(PREFACE))
            if buf[:k] == PREFACE[:k]:
                if k < len(PREFACE):
                    return False  # wait for the rest of the preface
                d.buf = buf[len(PREFACE):]
                d.preface = False
                self._started[0] = True
                return True
            d.preface = False
            self._started[0] = True
            self._lose_sync(0, d)
            return True
        if len(buf) < 9:
            return False
        length, typ, flags, sid = self._header(buf, 0)
        self._started[1] = True
        if typ != T_SETTINGS or flags & F_ACK or sid or length % 6:
            self._lose_sync(1, d)  # not the server preface: picked up mid-way
        return True

    def _lose_sync(self, i: int, d: _Dir) -> None:
        d.synced = False
        d.d_left = d.d_pad = 0
        d.d_padlen_pending = False
        d.skip = 0
        d.block = None
        d.decoder = None
        d.partial = PartialHpack()

    @staticmethod
    def _header(buf: bytes, pos: int) -> tuple[int, int, int, int]:
        hi, lo, typ, flags, sid = _HDR.unpack_from(buf, pos)
        return (hi << 16) | lo, typ, flags, sid & 0x7FFFFFFF

    def _plausible(self, buf: bytes, pos: int) -> int:
        """Length of a plausible frame header at ``pos``, or -1."""
        return _plausible(buf, pos, self._max_frame)

    def _resync(self, d: _Dir, at_close: bool = False) -> bool:
        """Find a frame boundary: two plausible frame headers in a row (at close, also one
        plausible frame that ends exactly where the stream ended)."""
        buf = d.buf
        n = len(buf)
        pos = 0
        while pos + 9 <= n:
            length = self._plausible(buf, pos)
            if length >= 0:
                nxt = pos + 9 + length
                if at_close and nxt == n:
                    d.buf = buf[pos:]
                    d.synced = True
                    return True
                if nxt + 9 > n and not at_close:
                    break  # cannot check yet
                if nxt + 9 <= n and self._plausible(buf, nxt) >= 0:
                    d.buf = buf[pos:]
                    d.synced = True
                    return True
            pos += 1
        if pos:
            d.buf = buf[pos:]
        if len(d.buf) > MAX_UNSYNCED:
            d.buf = d.buf[-MAX_UNSYNCED // 2:]
        return False

    def _run(self, i: int, d: _Dir, ts: float) -> None:
        if not d.synced and not self._resync(d):
            return
        buf = d.buf
        n = len(buf)
        pos = 0
        while pos < n:
            if d.skip:
                take = min(d.skip, n - pos)
                d.skip -= take
                pos += take
                continue
            if d.d_padlen_pending:
                d.d_pad = buf[pos]
                pos += 1
                d.d_left -= 1
                d.d_padlen_pending = False
                if d.d_pad > d.d_left:
                    raise HttpError("DATA padding longer than the frame")
                if d.d_left == 0:
                    self._data_done(i, d, ts)
                continue
            if d.d_left:
                data_left = d.d_left - d.d_pad
                if data_left:
                    take = min(data_left, n - pos)
                    s = self._streams.get(d.d_sid)
                    if s is not None:
                        if s.ws is not None:
                            s.ws.feed(i, buf[pos:pos + take], ts)
                        else:
                            body = s.half[i].body
                            if body is not None:
                                body.write(buf[pos:pos + take], ts)
                else:
                    take = min(d.d_left, n - pos)  # padding
                    d.d_pad -= take
                pos += take
                d.d_left -= take
                if d.d_left == 0:
                    self._data_done(i, d, ts)
                continue
            if pos + 9 > n:
                break
            length, typ, flags, sid = self._header(buf, pos)
            if typ == T_DATA:
                if sid == 0:
                    raise HttpError("DATA frame on stream 0")
                pos += 9
                d.d_sid = sid
                d.d_end = bool(flags & F_END_STREAM)
                d.d_left = length
                d.d_pad = 0
                self._data_stream(i, sid, ts)
                if flags & F_PADDED:
                    if length == 0:
                        raise HttpError("padded DATA frame without pad length")
                    d.d_padlen_pending = True
                elif length == 0:
                    self._data_done(i, d, ts)
                continue
            if length > MAX_CONTROL_FRAME:
                pos += 9
                d.skip = length
                if typ in (T_HEADERS, T_PUSH, T_CONT):
                    self._lose_hpack(i, d, sid)
                continue
            end = pos + 9 + length
            if end > n:
                break
            self._frame(i, d, memoryview(buf)[pos:end], typ, ts)
            pos = end
            if self.stopped:
                return
        d.buf = buf[pos:] if pos < n else b""

    def _lose_hpack(self, i: int, d: _Dir, sid: int) -> None:
        d.decoder = None
        d.partial = PartialHpack()
        s = self._streams.get(sid)
        if s is not None:
            s.flags.add("partial_headers")

    def _frame(self, i: int, d: _Dir, view: memoryview, typ: int, ts: float) -> None:
        try:
            frame, _length = Frame.parse_frame_header(view[:9])
            frame.parse_body(view[9:])
        except Exception as exc:  # hyperframe's errors: invalid padding, lengths, ...
            raise HttpError(f"invalid {typ} frame: {type(exc).__name__}") from None
        if d.block is not None and typ != T_CONT:
            raise HttpError("header block interrupted by another frame")
        if isinstance(frame, HeadersFrame):
            self._block_start(i, d, frame.stream_id, bytes(frame.data),
                              "END_STREAM" in frame.flags, None, ts)
            if "END_HEADERS" in frame.flags:
                self._block_end(i, d, ts)
        elif isinstance(frame, ContinuationFrame):
            if d.block is None or frame.stream_id != d.block_sid:
                # a block whose start we never saw: the table may have changed under us
                self._lose_hpack(i, d, frame.stream_id)
                return
            d.block.append(bytes(frame.data))
            if sum(map(len, d.block)) > MAX_HEADER_BLOCK:
                raise HttpError("header block too large")
            if "END_HEADERS" in frame.flags:
                self._block_end(i, d, ts)
        elif isinstance(frame, PushPromiseFrame):
            self._block_start(i, d, frame.stream_id, bytes(frame.data), False,
                              frame.promised_stream_id, ts)
            if "END_HEADERS" in frame.flags:
                self._block_end(i, d, ts)
        elif isinstance(frame, RstStreamFrame):
            s = self._streams.get(frame.stream_id)
            if s is not None:
                if i == 1 and frame.error_code == 0 and s.half[1].ended and not s.half[0].ended:
                    # RFC 9113 8.1: a complete response, then NO_ERROR to stop the request; its frames
                    # already on their way (captured after this one) are still the request's
                    pass
                else:
                    s.flags.add("reset")
                    self._emit(s, ts, final=True)
        elif isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                size = frame.settings.get(SettingsFrame.HEADER_TABLE_SIZE)
                peer = self._dirs[1 - i]
                if size is not None and peer.decoder is not None:
                    # lenient: allow the largest size ever offered (acks are not tracked)
                    peer.decoder.max_allowed_table_size = max(
                        peer.decoder.max_allowed_table_size, size)
                mfs = frame.settings.get(SettingsFrame.MAX_FRAME_SIZE)
                if mfs is not None and mfs > self._max_frame:
                    self._max_frame = min(mfs, (1 << 24) - 1)
        elif isinstance(frame, GoAwayFrame):
            pass  # streams above last_stream_id get no response: flushed as such at close
        # PRIORITY, PING, WINDOW_UPDATE and extension frames: nothing to learn

    def _block_start(self, i: int, d: _Dir, sid: int, data: bytes, end_stream: bool,
                     promised: int | None, ts: float) -> None:
        if sid == 0:
            raise HttpError("header block on stream 0")
        d.block = [data]
        d.block_sid = sid
        d.block_end_stream = end_stream
        d.block_promised = promised
        d.block_ts = ts

    def _decode(self, i: int, d: _Dir, block: bytes) -> tuple[Headers, bool]:
        if d.decoder is not None:
            try:
                raw = d.decoder.decode(block, raw=True)
                return [(_text(k), _text(v)) for k, v in raw], True
            except Exception:
                # hpack failed (possibly after changing its table): trust nothing from now on
                d.decoder = None
                d.partial = PartialHpack()
                return [], False
        assert d.partial is not None
        got, complete = d.partial.decode(block)
        return [(_text(k), _text(v)) for k, v in got], complete

    def _block_end(self, i: int, d: _Dir, ts: float) -> None:
        assert d.block is not None
        block = b"".join(d.block) if len(d.block) > 1 else d.block[0]
        d.block = None
        headers, complete = self._decode(i, d, block)
        sid = d.block_sid
        start_ts = d.block_ts
        if d.block_promised is not None:  # PUSH_PROMISE: a request made up by the server
            if i != 1:
                raise HttpError("PUSH_PROMISE from the client")
            ps = self._new_stream(d.block_promised)
            if ps is None:
                return
            ps.flags.add("push")
            if not complete:
                ps.flags.add("partial_headers")
            h = ps.half[0]
            self._set_headers(h, headers, start_ts, ends_stream=True)  # a promised request has no body
            h.ended = True
            h.end_ts = ts
            return
        s = self._streams.get(sid)
        if s is None:
            s = self._new_stream(sid)
            if s is None:
                return  # a stream already finished
            if i == 1:
                s.flags.add("response_without_request")
                s.half[0].ended = True
        if not complete:
            s.flags.add("partial_headers")
        h = s.half[i]
        if not h.seen:
            if i == 1 and not d.block_end_stream:
                status = next((v for k, v in headers if k == ":status"), "")
                if len(status) == 3 and status[0] == "1" and status != "101":
                    s.flags.add("interim_response")
                    return  # 1xx: the final response follows
            self._set_headers(h, headers, start_ts, ends_stream=d.block_end_stream)
            if i == 1 and not d.block_end_stream:
                self._maybe_websocket(s, ts)
        else:
            h.trailers.extend((k, v) for k, v in headers if not k.startswith(":"))
        if d.block_end_stream:
            self._end_half(s, i, ts)

    def _set_headers(self, h: _Half, headers: Headers, ts: float, *, ends_stream: bool) -> None:
        """The first header block of one side; a block that ends the stream means no body (None)."""
        h.seen = True
        h.ts = ts
        for k, v in headers:
            if k.startswith(":"):
                h.pseudo.setdefault(k, v)
            else:
                h.headers.append((k, v))
        enc = ct = None
        for k, v in h.headers:
            if k == "content-encoding":
                enc = v if enc is None else f"{enc}, {v}"
            elif k == "content-type" and ct is None:
                ct = v
        if not ends_stream:
            h.body = BodyCollector(self.body_limit, parse_encodings(enc), is_text(ct), stamps=is_event_stream(ct))

    def _maybe_websocket(self, s: _Stream, ts: float) -> None:
        """RFC 8441: a 2xx answering an extended CONNECT with ``:protocol websocket`` starts a session on
        the stream; from here its DATA frames are WebSocket frames (bytes the client sent before the
        answer go first)."""
        req, resp = s.half
        if req.pseudo.get(":method") != "CONNECT" or req.pseudo.get(":protocol", "").lower() != "websocket":
            return
        status = resp.pseudo.get(":status", "")
        if len(status) != 3 or status[0] != "2":
            return
        ext = next((v for k, v in resp.headers if k == "sec-websocket-extensions"), None)
        proto = next((v for k, v in resp.headers if k == "sec-websocket-protocol"), None)
        from .websocket import WebSocketParser

        ws = s.ws = WebSocketParser(ext, proto, capture=self.body_limit)
        early = req.body
        req.body = resp.body = None
        if early is not None:
            held = early.finish(True)
            if held.data:
                ws.feed(0, held.data, ts)
            if held.truncated:
                ws.session.flags.add("ws_cut")

    def _new_stream(self, sid: int) -> _Stream | None:
        if sid in self._closed_set:
            return None
        if len(self._streams) >= MAX_STREAMS:
            oldest = next(iter(self._streams.values()))
            oldest.flags.add("evicted")
            self._emit(oldest, oldest.half[0].ts or 0.0, final=True)
        s = _Stream(sid)
        self._streams[sid] = s
        return s

    def _data_stream(self, i: int, sid: int, ts: float) -> None:
        """A DATA frame starts on ``sid``: make sure a body collects it."""
        s = self._streams.get(sid)
        if s is None:
            s = self._new_stream(sid)
            if s is None:
                return
            s.flags.add("partial_headers")  # its headers came before we could see them
            if i == 1:
                s.flags.add("response_without_request")
                s.half[0].ended = True
        h = s.half[i]
        if s.ws is not None:  # RFC 8441: the DATA frames are the WebSocket session's, not a body
            return
        if h.body is None:
            h.seen = True
            h.ts = ts
            h.body = BodyCollector(self.body_limit)
        if h.ts is None:
            h.ts = ts

    def _data_done(self, i: int, d: _Dir, ts: float) -> None:
        if d.d_end:
            s = self._streams.get(d.d_sid)
            if s is not None:
                self._end_half(s, i, ts)
        d.d_end = False

    def _end_half(self, s: _Stream, i: int, ts: float) -> None:
        h = s.half[i]
        h.ended = True
        h.end_ts = ts
        if s.half[0].ended and s.half[1].ended:
            self._emit(s, ts, final=False)

    def _emit(self, s: _Stream, ts: float, final: bool) -> None:
        """Turn stream ``s`` into an Exchange and forget it."""
        self._streams.pop(s.id, None)
        if s.id not in self._closed_set:
            if len(self._closed_ids) == self._closed_ids.maxlen:
                self._closed_set.discard(self._closed_ids[0])
            self._closed_ids.append(s.id)
            self._closed_set.add(s.id)
        req, resp = s.half
        flags = set(s.flags)
        if final:
            if not resp.seen:
                flags.add("no_response")
            if (req.seen and not req.ended) or (resp.seen and not resp.ended):
                flags.add("truncated")
        bodies: list[Body | None] = []
        for h in (req, resp):
            if h.body is None:
                bodies.append(None)
            else:
                body = h.body.finish(h.ended and "reset" not in flags)
                bodies.append(body)
                if body.decode_error:
                    flags.add("decode_error")
                if body.truncated:
                    flags.add("body_truncated")
        ws = s.ws.finish(ts) if s.ws is not None else None
        status_text = resp.pseudo.get(":status")
        status = int(status_text) if status_text and status_text.isdigit() else None
        authority = req.pseudo.get(":authority")
        if authority is None:
            authority = next((v for k, v in req.headers if k == "host"), None)
        self._out.append(Exchange(
            http_version="2",
            method=req.pseudo.get(":method"),
            scheme=req.pseudo.get(":scheme"),
            authority=authority,
            path=req.pseudo.get(":path"),
            status=status,
            reason=None,
            request_headers=tuple(req.headers),
            response_headers=tuple(resp.headers),
            request_trailers=tuple(req.trailers),
            response_trailers=tuple(resp.trailers),
            request_body=bodies[0] if req.seen else None,
            response_body=bodies[1] if resp.seen else None,
            request_ts=req.ts,
            request_end_ts=req.end_ts if req.seen else None,
            response_ts=resp.ts,
            response_end_ts=resp.end_ts if resp.seen else None,
            stream_id=s.id,
            flags=frozenset(flags),
            websocket=ws,
        ))


def _plausible(buf: bytes, pos: int, max_frame: int) -> int:
    """Length of a plausible frame header at ``pos``, or -1."""
    hi, lo, typ, flags, sid = _HDR.unpack_from(buf, pos)
    length: int = (hi << 16) | lo
    if sid & 0x80000000 or typ > T_CONT or length > max_frame:
        return -1
    if flags & ~_ALLOWED_FLAGS[typ]:
        return -1
    zero = _STREAM_ZERO[typ]
    if zero is not None and zero != (sid == 0):
        return -1
    fixed = _FIXED_LEN.get(typ)
    if fixed is not None and length != fixed:
        return -1
    if typ == T_SETTINGS and (length % 6 or (flags & F_ACK and length)):
        return -1
    if typ == T_GOAWAY and length < 8:
        return -1
    return length


def plausible_frames(data: bytes) -> bool:
    """Do these bytes (the start of a TLS record, mid-connection) look like whole HTTP/2 frames: a
    plausible header at 0, ending where the data ends or followed by another plausible header?"""
    if len(data) < 9:
        return False
    length = _plausible(data, 0, 16384)
    if length < 0:
        return False
    nxt = 9 + length
    return nxt == len(data) or (nxt + 9 <= len(data) and _plausible(data, nxt, 16384) >= 0)
