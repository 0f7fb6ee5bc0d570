"""The http stage's per-connection entry point: picks HTTP/1.x or HTTP/2 and never raises."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import HttpError
from .events import HttpEvent, HttpProblem
from .h1 import H1Connection, message_start

if TYPE_CHECKING:  # HTTP/2 (and hpack, hyperframe) imported with the first HTTP/2 connection (start-up)
    from .h2 import H2Connection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # the HTTP/2 client connection preface (h2.PREFACE)

_Out = list[HttpEvent]
MIDSTREAM_SNIFF = 64 * 1024  # bytes held to tell HTTP/1 from HTTP/2 on a connection picked up mid-stream
# What a bug inside an engine can raise; HttpError is handled inside the engines themselves.
_INTERNAL = (HttpError, ValueError, KeyError, IndexError, AssertionError, TypeError, OverflowError,
             MemoryError)


def _h2(body_limit: int) -> H2Connection:
    from .h2 import H2Connection

    return H2Connection(body_limit=body_limit)


class HttpConnection:
    """Turns the two decrypted byte streams of one connection into :class:`Exchange` records.

    ``alpn`` "h2" selects HTTP/2; anything else (or None) detects: a client stream starting with
    the HTTP/2 connection preface is HTTP/2 with prior knowledge, else HTTP/1.x. Direction 0 is
    client->server. Every method returns the events completed by that call; errors end this
    connection's parsing with one :class:`HttpProblem` (also recorded in ``problems``).

    ``midstream``: the bytes start somewhere inside the connection (TLS picked up mid-stream). HTTP/1
    starts at the next request or status line; HTTP/2 at the next frame boundary, with headers decoded
    as far as HPACK state allows. Without ALPN the first bytes tell which it is.
    """

    def __init__(self, *, alpn: str | None = None, body_limit: int = 128 * 1024, midstream: bool = False) -> None:
        self.body_limit = body_limit
        self._engine: H1Connection | H2Connection | None = None
        self._held: list[tuple[int, bytes | int, float]] = []  # before the protocol is known
        self._client_head = b""
        self._problems: list[str] = []
        self._closed = False
        self._midstream = midstream
        self._sniffed = 0
        if alpn == "h2":
            self._engine = _h2(body_limit)
        elif midstream and alpn is not None:
            self._engine = H1Connection(body_limit, midstream=True)

    @property
    def problems(self) -> list[str]:
        return self._engine.problems if self._engine is not None else self._problems

    @property
    def protocol(self) -> str | None:
        """"h1", "h2", or None while still undecided."""
        if self._engine is None:
            return None
        return "h1" if isinstance(self._engine, H1Connection) else "h2"

    def feed(self, direction: int, data: bytes, ts: float) -> _Out:
        if self._closed:
            return []
        engine = self._engine
        if engine is None:
            self._held.append((direction, data, ts))
            if self._midstream:
                return self._sniff_midstream(direction, data)
            if direction == 0:
                self._client_head += data[: len(PREFACE) - len(self._client_head)]
                head = self._client_head
                if not PREFACE.startswith(head):
                    return self._decide(H1Connection(self.body_limit))
                if len(head) == len(PREFACE):
                    return self._decide(_h2(self.body_limit))
            return []
        try:
            return engine.feed(direction, data, ts)
        except _INTERNAL as exc:
            return self._fail(engine, exc, ts)

    def gap(self, direction: int, size: int, ts: float) -> _Out:
        if self._closed:
            return []
        engine = self._engine
        if engine is None:
            if self._midstream:
                self._held.append((direction, size, ts))
                return []
            if direction == 0 or self._client_head:
                # cannot tell the protocol across a hole at the start: assume HTTP/1.x, whose
                # parser reports the gap as a problem if it cannot resync
                self._held.append((direction, size, ts))
                return self._decide(H1Connection(self.body_limit))
            self._held.append((direction, size, ts))
            return []
        try:
            return engine.gap(direction, size, ts)
        except _INTERNAL as exc:
            return self._fail(engine, exc, ts)

    def close(self, ts: float) -> _Out:
        if self._closed:
            return []
        out: _Out = []
        if self._engine is None:
            if not self._held:
                self._closed = True
                return []
            out += self._decide(H1Connection(self.body_limit, midstream=self._midstream))
        engine = self._engine
        assert engine is not None
        if not self._closed:
            try:
                out += engine.close(ts)
            except _INTERNAL as exc:
                out += self._fail(engine, exc, ts)
        self._closed = True
        return out

    def _sniff_midstream(self, direction: int, data: bytes) -> _Out:
        """Mid-stream, no ALPN: a request or status line says HTTP/1, frame headers that chain say
        HTTP/2; undecided after ``MIDSTREAM_SNIFF`` bytes, HTTP/1 (it reports what it cannot parse)."""
        if message_start(direction, data, 0) >= 0:
            return self._decide(H1Connection(self.body_limit, midstream=True))
        from .h2 import plausible_frames

        if plausible_frames(data):
            return self._decide(_h2(self.body_limit))
        self._sniffed += len(data)
        if self._sniffed > MIDSTREAM_SNIFF:
            return self._decide(H1Connection(self.body_limit, midstream=True))
        return []

    def _decide(self, engine: H1Connection | H2Connection) -> _Out:
        self._engine = engine
        held, self._held = self._held, []
        out: _Out = []
        for direction, item, ts in held:
            if self._closed:
                break
            try:
                if isinstance(item, int):
                    out += engine.gap(direction, item, ts)
                else:
                    out += engine.feed(direction, item, ts)
            except _INTERNAL as exc:
                out += self._fail(engine, exc, ts)
        return out

    def _fail(self, engine: H1Connection | H2Connection, exc: Exception, ts: float) -> _Out:
        """The stage boundary: an error inside ends this connection's parsing, never the caller."""
        reason = f"internal error: {type(exc).__name__}"
        engine.problems.append(reason)
        engine.stopped = True
        self._closed = True
        return [HttpProblem(ts, reason)]
