"""WebSocket (RFC 6455) frames after an HTTP/1.1 upgrade: both directions read into messages (pure).

:class:`WebSocketParser` is fed the bytes of each direction that follow the ``101 Switching Protocols``
(``feed(direction, data, ts)``; 0 = client to server) and gives a
:class:`~tlsmirror.http.events.WebSocketSession` from :meth:`WebSocketParser.finish`. Masking is
removed, fragmented messages are joined, permessage-deflate (RFC 7692) is undone with the negotiated
window bits and context takeover, Close frames give the code and reason.

Bounded per session: at most ``max_messages`` messages listed and ``capture`` bytes of content kept in
all (each message's ``data`` is cut, and says so); decompression stops at a ceiling. Frame payloads
stream through: a large frame is never held whole. A frame that breaks the protocol ends reading of
that direction with a flag (``ws_malformed``); a gap ends it with ``ws_gap``. Nothing raises out.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

from .bodies import utf8_cut
from .errors import HttpError
from .events import WebSocketMessage, WebSocketSession

OPCODES = {0: "continuation", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}
MAX_MESSAGES = 1000
DEFAULT_CAPTURE = 128 * 1024
DECOMPRESS_CEILING = 64 * 1024 * 1024  # decompressed bytes per session, then decompression stops
_TAIL = b"\x00\x00\xff\xff"


class WebSocketError(HttpError):
    """A frame that breaks RFC 6455 (internal: ends reading of that direction with a flag)."""


def parse_extensions(value: str | None) -> dict[str, dict[str, str | None]]:
    """``Sec-WebSocket-Extensions`` as ``{name: {param: value or None}}`` (first offer of each name)."""
    out: dict[str, dict[str, str | None]] = {}
    if not value:
        return out
    for ext in value.split(","):
        parts = [p.strip() for p in ext.split(";")]
        if not parts[0]:
            continue
        params: dict[str, str | None] = {}
        for p in parts[1:]:
            k, sep, v = p.partition("=")
            params[k.strip().lower()] = v.strip().strip('"') if sep else None
        out.setdefault(parts[0].lower(), params)
    return out


def _unmask(data: bytes, mask: bytes, offset: int) -> bytes:
    if not data:
        return data
    n = len(data)
    rot = mask[offset % 4:] + mask[:offset % 4]
    key = (rot * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class _Inflater:
    __slots__ = ("bits", "obj", "takeover")

    def __init__(self, bits: int, takeover: bool) -> None:
        self.bits = bits
        self.takeover = takeover
        self.obj: zlib._Decompress | None = None

    def start(self) -> zlib._Decompress:
        if self.obj is None or not self.takeover:
            try:
                self.obj = zlib.decompressobj(-self.bits)
            except (ValueError, zlib.error):
                self.obj = zlib.decompressobj(-15)
        return self.obj


class _Dir:
    __slots__ = (
        "buf",
        "comp",
        "data",
        "error",
        "fin",
        "frame_opcode",
        "frames",
        "inflater",
        "mask",
        "msg_ts",
        "offset",
        "opcode",
        "parked",
        "remaining",
        "size",
        "stopped",
        "wire",
        "zobj",
    )

    def __init__(self, inflater: _Inflater | None) -> None:
        self.buf = b""
        self.stopped = False
        self.inflater = inflater
        self.remaining = -1  # payload bytes left of the current frame (-1: reading a header)
        self.mask = b""
        self.offset = 0
        self.fin = True
        self.frame_opcode = 0
        # the message being assembled (opcode 0: none)
        self.opcode = 0
        self.comp = False
        self.data: list[bytes] = []
        self.size = 0
        self.wire = 0
        self.frames = 0
        self.msg_ts = 0.0
        self.error: str | None = None
        self.zobj: zlib._Decompress | None = None
        # a message interrupted by a control frame, set aside until that frame ends
        self.parked: tuple[int, bool, list[bytes], int, int, int, float, str | None,
                           zlib._Decompress | None] | None = None


class WebSocketParser:
    """Both directions of one WebSocket session; see the module docstring."""

    def __init__(self, extensions: str | None = None, subprotocol: str | None = None, *,
                 capture: int = DEFAULT_CAPTURE, max_messages: int = MAX_MESSAGES) -> None:
        exts = parse_extensions(extensions)
        pmd = exts.get("permessage-deflate")
        self.deflate = pmd is not None
        inflaters: list[_Inflater | None] = [None, None]
        if pmd is not None:
            for i, side in enumerate(("client", "server")):
                raw = pmd.get(f"{side}_max_window_bits")
                bits = int(raw) if raw is not None and raw.isdigit() and 8 <= int(raw) <= 15 else 15
                inflaters[i] = _Inflater(bits, f"{side}_no_context_takeover" not in pmd)
        self._dirs = (_Dir(inflaters[0]), _Dir(inflaters[1]))
        self.capture_left = capture
        self.max_messages = max_messages
        self.decompress_left = DECOMPRESS_CEILING
        self.session = WebSocketSession([], [0, 0], None, None, None, extensions, subprotocol, None, set())

    # -- input --------------------------------------------------------------------------------------

    def feed(self, direction: int, data: bytes, ts: float) -> None:
        d = self._dirs[direction]
        if d.stopped or not data:
            return
        self.session.end_ts = ts
        d.buf = d.buf + data if d.buf else data
        try:
            self._run(direction, d, ts)
        except WebSocketError as exc:
            d.stopped = True
            d.buf = b""
            self.session.flags.add("ws_malformed")
            self._cut_message(direction, d, ts, str(exc))

    def gap(self, direction: int, size: int, ts: float) -> None:
        """``size`` bytes of a direction were lost: frames cannot be found again after it."""
        d = self._dirs[direction]
        if d.stopped:
            return
        d.stopped = True
        d.buf = b""
        self.session.flags.add("ws_gap")
        self._cut_message(direction, d, ts, "gap")

    def finish(self, ts: float | None = None) -> WebSocketSession:
        """The session as seen; a message still open is reported cut."""
        for i, d in enumerate(self._dirs):
            if not d.stopped and (d.opcode or d.remaining >= 0 or d.buf):
                self.session.flags.add("ws_cut")
                self._cut_message(i, d, ts if ts is not None else d.msg_ts, "connection ended")
            d.stopped = True
        return self.session

    @property
    def closed(self) -> bool:
        """Both sides sent Close (or stopped): the session is over."""
        return all(d.stopped for d in self._dirs)

    # -- frames -------------------------------------------------------------------------------------

    def _run(self, i: int, d: _Dir, ts: float) -> None:
        buf = d.buf
        pos = 0
        n = len(buf)
        while pos < n and not d.stopped:
            if d.remaining < 0:
                start = self._header(i, d, buf, pos, ts)
                if start < 0:
                    break
                pos = start
                if d.remaining == 0:
                    self._frame_done(i, d, ts)
                continue
            take = min(d.remaining, n - pos)
            chunk = buf[pos:pos + take]
            pos += take
            if d.mask:
                chunk = _unmask(chunk, d.mask, d.offset)
            d.offset += take
            d.remaining -= take
            self._payload(d, chunk)
            if d.remaining == 0:
                self._frame_done(i, d, ts)
        d.buf = buf[pos:] if pos < n and not d.stopped else b""

    def _header(self, i: int, d: _Dir, buf: bytes, pos: int, ts: float) -> int:
        n = len(buf)
        if n - pos < 2:
            return -1
        b0 = buf[pos]
        b1 = buf[pos + 1]
        length = b1 & 0x7F
        at = pos + 2
        if length == 126:
            if n - at < 2:
                return -1
            length = int.from_bytes(buf[at:at + 2], "big")
            at += 2
        elif length == 127:
            if n - at < 8:
                return -1
            length = int.from_bytes(buf[at:at + 8], "big")
            if length >> 63:
                raise WebSocketError("frame length over 2^63")
            at += 8
        masked = b1 & 0x80
        if masked:
            if n - at < 4:
                return -1
            d.mask = buf[at:at + 4]
            at += 4
        else:
            d.mask = b""
        fin = bool(b0 & 0x80)
        rsv1 = bool(b0 & 0x40)
        if b0 & 0x30:
            raise WebSocketError("reserved bits RSV2/RSV3 set")
        opcode = b0 & 0x0F
        if opcode not in OPCODES:
            raise WebSocketError(f"unknown opcode {opcode}")
        if opcode >= 8:
            if not fin or length > 125:
                raise WebSocketError("control frame fragmented or longer than 125 bytes")
            if rsv1:
                raise WebSocketError("compressed control frame")
            if d.opcode:  # a control frame between the fragments of a message: set that one aside
                self._park(d)
            self._begin(d, opcode, False, ts)
        elif opcode == 0:
            if not d.opcode:
                raise WebSocketError("continuation frame without a message")
            if rsv1:
                raise WebSocketError("RSV1 on a continuation frame")
        else:
            if d.opcode:
                raise WebSocketError("new message before the last one ended")
            if rsv1 and d.inflater is None:
                raise WebSocketError("RSV1 set without permessage-deflate")
            self._begin(d, opcode, rsv1, ts)
        d.fin = fin
        d.frame_opcode = opcode
        d.remaining = length
        d.offset = 0
        d.frames += 1
        return at

    def _park(self, d: _Dir) -> None:
        d.parked = (d.opcode, d.comp, d.data, d.size, d.wire, d.frames, d.msg_ts, d.error, d.zobj)
        d.opcode = 0

    def _begin(self, d: _Dir, opcode: int, comp: bool, ts: float) -> None:
        d.opcode = opcode
        d.comp = comp
        d.data = []
        d.size = 0
        d.wire = 0
        d.frames = 0
        d.msg_ts = ts
        d.error = None
        d.zobj = None
        if comp and d.inflater is not None:
            d.zobj = d.inflater.start()

    def _payload(self, d: _Dir, chunk: bytes) -> None:
        d.wire += len(chunk)
        if d.comp:
            self._inflate(d, chunk)
        else:
            self._keep(d, chunk)

    def _keep(self, d: _Dir, data: bytes) -> None:
        d.size += len(data)
        room = self.capture_left if d.opcode < 8 else 125  # control payloads are always kept
        if room > 0 and data:
            part = data[:room]
            d.data.append(part)
            if d.opcode < 8:
                self.capture_left -= len(part)

    def _inflate(self, d: _Dir, data: bytes) -> None:
        z = d.zobj
        if z is None or d.error is not None:
            return
        try:
            while data:
                if self.decompress_left <= 0:
                    d.error = "decompression ceiling reached"
                    self.session.flags.add("ws_decompress_ceiling")
                    return
                out = z.decompress(data, min(65536, self.decompress_left))
                self.decompress_left -= len(out)
                self._keep(d, out)
                data = z.unconsumed_tail
        except zlib.error as exc:
            d.error = f"deflate: {exc}"
            self.session.flags.add("ws_decompress_failed")

    def _frame_done(self, i: int, d: _Dir, ts: float) -> None:
        d.remaining = -1
        if not d.fin:
            return
        if d.comp:
            self._inflate(d, _TAIL)
        opcode = d.opcode
        self._emit(i, d, ts, None)
        if opcode == 8:
            self._close(i, d)
        parked = d.parked
        if parked is not None and d.frame_opcode >= 8 and not d.stopped:
            (d.opcode, d.comp, d.data, d.size, d.wire, d.frames, d.msg_ts, d.error, d.zobj) = parked
            d.parked = None

    def _close(self, i: int, d: _Dir) -> None:
        sess = self.session
        msg = sess.messages[-1] if sess.messages and sess.messages[-1].opcode == 8 else None
        if sess.closed_by is None and msg is not None:
            sess.closed_by = i
            payload = msg.data
            if len(payload) >= 2:
                sess.close_code = int.from_bytes(payload[:2], "big")
                sess.close_reason = payload[2:].decode("utf-8", "replace")
            elif payload:
                sess.flags.add("ws_malformed")
        d.stopped = True  # nothing follows a Close frame in this direction

    def _emit(self, i: int, d: _Dir, ts: float, error: str | None) -> None:
        sess = self.session
        sess.counts[i] += 1
        opcode = d.opcode
        d.opcode = 0
        if len(sess.messages) >= self.max_messages:
            sess.flags.add("ws_messages_cut")
            if opcode == 8:  # the close is always kept
                sess.messages.append(WebSocketMessage(i, 8, d.size, d.wire, d.frames, False, b"".join(d.data),
                                                      False, ts, None))
            return
        data = b"".join(d.data)
        sess.messages.append(WebSocketMessage(i, opcode, d.size, d.wire, d.frames, d.comp, data,
                                              len(data) < d.size or error is not None, ts, error or d.error))

    def _cut_message(self, i: int, d: _Dir, ts: float, why: str) -> None:
        if d.opcode:
            self._emit(i, d, ts, why)


_SIDES = ("client", "server")


def message_dict(m: WebSocketMessage, content: bool = True) -> dict[str, Any]:
    """One message as the record shows it (docs/exchange-schema.md, ``websocket.list``)."""
    out: dict[str, Any] = {"direction": _SIDES[m.direction], "opcode": OPCODES.get(m.opcode, str(m.opcode)),
                           "size": m.size, "wire_size": m.wire_size, "frames": m.frames,
                           "compressed": m.compressed, "ts": m.ts, "cut": m.cut}
    if m.error:
        out["error"] = m.error
    if content:
        data = m.data
        text = None
        if m.opcode == 1:
            try:
                text = (utf8_cut(data) if m.cut else data).decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is not None:
            out["text"] = text
        else:
            out["base64"] = base64.b64encode(data).decode("ascii")
    return out


def session_dict(s: WebSocketSession, content: bool = True) -> dict[str, Any]:
    """The record's ``websocket`` object (docs/exchange-schema.md)."""
    return {
        "subprotocol": s.subprotocol,
        "extensions": s.extensions,
        "messages": {"client": s.counts[0], "server": s.counts[1]},
        "close_code": s.close_code,
        "close_reason": s.close_reason,
        "closed_by": None if s.closed_by is None else _SIDES[s.closed_by],
        "end_ts": s.end_ts,
        "list": [message_dict(m, content) for m in s.messages],
        "flags": sorted(s.flags),
    }
