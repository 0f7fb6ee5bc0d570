"""Bounded body capture with incremental, capped Content-Encoding decoding.

A :class:`BodyCollector` is fed the de-chunked wire bytes of one message body. It keeps at most
``limit`` bytes of decoded output (plus, while an encoding is being decoded, at most ``limit`` raw
bytes so that a decoding failure can still report the raw prefix), counts every wire byte and every
decoded byte (up to a hard ceiling that stops decompression bombs), and turns into a
:class:`~tlsmirror.http.events.Body` on :meth:`BodyCollector.finish`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import partial
from typing import IO, cast

from .events import Body

DEFAULT_CEILING = 64 * 1024 * 1024
_CHUNK = 64 * 1024  # decoder output granularity: bounds memory per step


class _Stop(Exception):
    """Internal: the decoded size passed the ceiling; decoding stops."""


Sink = Callable[[bytes], None]


class _Decoder:
    name = ""

    def feed(self, data: bytes, out: Sink) -> None:
        raise NotImplementedError

    def finish(self, out: Sink) -> str | None:
        """Flush; return an error text when the encoded stream was incomplete."""
        return None


class _Zlib(_Decoder):
    """gzip (multi-member) and deflate (zlib-wrapped, or raw as some servers send it)."""

    __slots__ = ("_d", "_ended", "_gzip", "_head", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._gzip = name in ("gzip", "x-gzip")
        self._d: zlib._Decompress | None = None
        self._head = b""  # deflate: wait for 2 bytes to tell zlib from raw
        self._ended: bytes | None = None  # after the end of a stream: bytes held (gzip members)

    def _new(self, first: bytes) -> zlib._Decompress:
        if self._gzip:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        cmf, flg = first[0], first[1]
        if cmf & 0x0F == 8 and (cmf * 256 + flg) % 31 == 0:
            return zlib.decompressobj(zlib.MAX_WBITS)
        return zlib.decompressobj(-zlib.MAX_WBITS)

    def feed(self, data: bytes, out: Sink) -> None:
        if self._d is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return
            self._head = b""
            self._d = self._new(data)
        d = self._d
        while data:
            if d.eof and self._ended is not None:  # between gzip members, or trailing garbage
                data = self._ended + data
                if len(data) < 2 and self._gzip:
                    self._ended = data
                    return
                if not (self._gzip and data[:2] == b"\x1f\x8b"):
                    self._ended = b"?"  # garbage after the stream: ignored, like browsers
                    return
                self._ended = None
                d = self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                continue
            try:
                chunk = d.decompress(data, _CHUNK)
            except zlib.error as exc:
                raise ValueError(f"{self.name}: {_zlib_reason(exc)}") from None
            if chunk:
                out(chunk)
            if d.eof:
                data = d.unused_data
                self._ended = b""
            else:
                data = d.unconsumed_tail

    def finish(self, out: Sink) -> str | None:
        if self._d is None:
            return f"{self.name}: empty or truncated stream" if self._head else None
        if not self._d.eof:
            try:
                chunk = self._d.flush()
            except zlib.error:
                chunk = b""
            if chunk:
                out(chunk)
            return f"{self.name}: incomplete stream"
        return None


def _zlib_reason(exc: zlib.error) -> str:
    text = str(exc)
    # "Error -3 while decompressing data: incorrect header check" -> "incorrect header check"
    return text.split(": ", 1)[-1] if ": " in text else text


class _Brotli(_Decoder):
    __slots__ = ("_d", "_error")
    name = "br"

    def __init__(self) -> None:
        import brotli  # with the first br body, not at start-up: most captures have none

        self._d = brotli.Decompressor()
        self._error: type[Exception] = brotli.error

    def feed(self, data: bytes, out: Sink) -> None:
        d = self._d
        try:
            if d.is_finished():
                return
            chunk = d.process(data, output_buffer_limit=_CHUNK)
            while chunk:  # output held back by the limit comes with empty input
                out(chunk)
                if d.is_finished():
                    break
                chunk = d.process(b"", output_buffer_limit=_CHUNK)
        except self._error as exc:
            raise ValueError(f"br: {exc or 'invalid data'}") from None

    def finish(self, out: Sink) -> str | None:
        return None if self._d.is_finished() else "br: incomplete stream"


class _ZstdSink:
    __slots__ = ("out",)

    def __init__(self, out: Sink) -> None:
        self.out = out

    def write(self, data: bytes) -> int:
        self.out(bytes(data))
        return len(data)


class _Zstd(_Decoder):
    __slots__ = ("_error", "_sink", "_w")
    name = "zstd"

    def __init__(self) -> None:
        import zstandard  # with the first zstd body, not at start-up: most captures have none

        self._error: type[Exception] = zstandard.ZstdError
        self._sink = _ZstdSink(lambda _b: None)
        self._w = zstandard.ZstdDecompressor().stream_writer(cast("IO[bytes]", self._sink),
                                                             write_size=_CHUNK)

    def feed(self, data: bytes, out: Sink) -> None:
        self._sink.out = out
        try:
            self._w.write(data)
        except self._error as exc:
            raise ValueError(f"zstd: {exc}") from None


def _make(name: str) -> _Decoder | None:
    if name in ("gzip", "x-gzip", "deflate"):
        return _Zlib(name)
    if name == "br":
        return _Brotli()
    if name == "zstd":
        return _Zstd()
    return None


def parse_encodings(value: str | None) -> list[str]:
    """Content-Encoding codings in the order they were applied ("identity" dropped)."""
    if not value:
        return []
    return [c for c in (p.strip().lower() for p in value.split(",")) if c and c != "identity"]


def is_event_stream(content_type: str | None) -> bool:
    """Whether a content type is ``text/event-stream`` (server-sent events)."""
    return content_type is not None and content_type[:17].lower() == "text/event-stream"


def is_text(content_type: str | None) -> bool:
    if not content_type:
        return False
    ct = content_type.split(";", 1)[0].strip().lower()
    return (ct.startswith("text/") or ct.endswith(("json", "xml", "+json", "+xml"))
            or ct in ("application/x-www-form-urlencoded", "application/javascript",
                      "application/graphql", "application/x-ndjson"))


def utf8_cut(data: bytes) -> bytes:
    """Drop an incomplete UTF-8 sequence at the end of ``data`` (at most 3 bytes)."""
    n = len(data)
    i = n - 1
    stop = max(-1, n - 4)
    while i > stop:
        b = data[i]
        if b < 0x80:
            return data  # ASCII: nothing split
        if b >= 0xC0:  # a lead byte: is its sequence complete?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return data if n - i >= need else data[:i]
        i -= 1
    return data


MAX_STAMPS = 4096  # chunk times kept per streamed body


class BodyCollector:
    """Collects one body: ``write`` wire bytes (de-chunked), ``gap`` lost bytes, then ``finish``."""

    __slots__ = ("_ceiling", "_decoders", "_done_decoding", "_error", "_limit", "_outs", "_parts",
                 "_raw", "_raw_len", "_size", "_stamps", "_text", "_wire", "gapped")

    def __init__(self, limit: int, encodings: list[str] | None = None, text: bool = False,
                 ceiling: int = DEFAULT_CEILING, stamps: bool = False) -> None:
        self._limit = limit
        # streamed bodies: (captured offset, ts) after each chunk, for per-event times
        self._stamps: list[tuple[int, float]] | None = [] if stamps else None
        self._ceiling = ceiling
        self._text = text
        self._wire = 0
        self._size = 0  # decoded bytes counted
        self._parts: list[bytes] = []  # captured decoded bytes (<= limit in total)
        self._raw: list[bytes] = []  # captured raw bytes while decoding (<= limit in total)
        self._raw_len = 0
        self._error: str | None = None
        self._done_decoding = False
        self.gapped = False
        self._decoders: list[_Decoder] = []
        self._outs: list[Sink] = []
        if encodings:  # most bodies have none
            for name in reversed(encodings):  # the last applied is undone first
                dec = _make(name)
                if dec is None:
                    self._error = f"unsupported content-encoding: {name}"
                    self._decoders = []
                    break
                self._decoders.append(dec)
            self._outs = [partial(self._push, j) for j in range(1, len(self._decoders) + 1)]

    @property
    def wire_size(self) -> int:
        return self._wire

    def _emit(self, data: bytes) -> None:
        room = self._limit - self._size
        if room > 0:
            self._parts.append(data if len(data) <= room else data[:room])
        self._size += len(data)
        if self._size > self._ceiling:
            raise _Stop

    def _push(self, i: int, data: bytes) -> None:
        if i == len(self._decoders):
            self._emit(data)
        else:
            self._decoders[i].feed(data, self._outs[i])

    def write(self, data: bytes, ts: float = 0.0) -> None:
        """``data``: the next wire bytes; ``ts``: the capture time of the packet that brought them
        (used only for a streamed body)."""
        if not data:
            return
        self._wire += len(data)
        if self.gapped:
            return  # never capture past a hole
        self._capture_raw(data)
        if self._decoders and not self._done_decoding:
            try:
                self._push(0, data)
            except _Stop:
                self._done_decoding = True
                self._error = f"decoded size exceeds ceiling of {self._ceiling} bytes"
            except ValueError as exc:
                self._fail(str(exc))
        if self._stamps is not None:
            self._stamp(ts)

    def _stamp(self, ts: float) -> None:
        stamps = self._stamps
        assert stamps is not None
        end = min(self._size if self._decoders else self._raw_len, self._limit)
        if stamps and stamps[-1][0] == end:
            return  # nothing new captured
        if len(stamps) < MAX_STAMPS:
            stamps.append((end, ts))

    def _capture_raw(self, data: bytes) -> None:
        room = self._limit - self._raw_len
        if room > 0:
            self._raw.append(data if len(data) <= room else data[:room])
            self._raw_len += min(len(data), room)

    def _fail(self, reason: str) -> None:
        self._done_decoding = True
        self._error = reason
        self._decoders = []
        self._parts = []

    def gap(self, size: int) -> None:
        """``size`` body bytes were lost: counted on the wire, never captured or invented."""
        self._wire += size
        self.gapped = True

    def finish(self, complete: bool = True) -> Body:
        """The body as captured. ``complete``: the framing ended properly (else it was cut short
        by a gap or the end of the connection, and an unfinished encoded stream is no error).

        After a gap, ``data`` is the prefix captured before it, ``truncated`` is set and, for an
        encoded body, ``size`` counts only the bytes decoded before the gap."""
        if self._decoders and not self._done_decoding and not self.gapped:
            try:
                for i, dec in enumerate(self._decoders):
                    err = dec.finish(self._outs[i])
                    if err and complete:
                        self._fail(err)
                        break
            except _Stop:
                self._error = f"decoded size exceeds ceiling of {self._ceiling} bytes"
            except ValueError as exc:
                self._fail(str(exc))
        if self._decoders:  # decoded: complete, past the ceiling, or cut by a gap
            data = b"".join(self._parts)
            size = self._size
        else:  # identity, unsupported or failed encoding: the raw bytes
            data = b"".join(self._raw)
            size = self._wire
        truncated = len(data) < size or self.gapped
        if truncated and self._text:
            data = utf8_cut(data)
        stamps = tuple(self._stamps) if self._stamps is not None else None
        return Body(data, self._wire, size, truncated, self._error, stamps)
