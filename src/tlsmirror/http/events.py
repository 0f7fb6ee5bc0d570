"""What the http stage emits: complete exchanges, and the problem that ended a connection's parsing.

The events are plain slotted dataclasses, to be treated as immutable: not ``frozen``, because one is
built per exchange and a frozen dataclass costs several times more to build, and because mypyc
compiles a plain one into a native class (see ``frames.events.TcpSegment``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Headers = tuple[tuple[str, str], ...]


@dataclass(slots=True, init=False)  # __init__ written out below
class Body:
    """One message body as captured.

    ``data`` holds at most ``body_limit`` bytes: decoded when the Content-Encoding was decodable,
    else the raw wire bytes (then ``decode_error`` says why). ``stamps`` (event streams only) maps
    offsets of ``data`` to the capture time of the chunk that completed them. ``wire_size`` counts the bytes on the
    wire after de-chunking and before content decoding; ``size`` the decoded bytes (``== wire_size``
    when not encoded or decoding failed). ``truncated`` tells that ``data`` is shorter than ``size``.
    """

    data: bytes
    wire_size: int
    size: int
    truncated: bool
    decode_error: str | None = None
    # (end offset in ``data``, capture time) per captured chunk: kept for streamed bodies only
    # (``text/event-stream``), else None
    stamps: tuple[tuple[int, float], ...] | None = None

    # written out: mypyc compiles it (a generated __init__ stays interpreted): 5x cheaper per event
    def __init__(self, data: bytes, wire_size: int, size: int, truncated: bool,
                 decode_error: str | None = None, stamps: tuple[tuple[int, float], ...] | None = None) -> None:
        self.data = data
        self.wire_size = wire_size
        self.size = size
        self.truncated = truncated
        self.decode_error = decode_error
        self.stamps = stamps

    # API calls travel pickled from workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[Body], tuple[Any, ...]]:
        return Body, (self.data, self.wire_size, self.size, self.truncated, self.decode_error, self.stamps)


@dataclass(slots=True)
class WebSocketMessage:
    """One WebSocket message (data frames joined, masking removed, permessage-deflate undone) or control
    frame. ``direction`` 0 = client to server; ``size`` the payload after decompression, ``wire_size``
    the payload bytes of its frames; ``data`` at most the session's capture limit (``cut`` when shorter
    than ``size``); ``ts`` the capture time of the packet that completed it."""

    direction: int
    opcode: int
    size: int
    wire_size: int
    frames: int
    compressed: bool
    data: bytes
    cut: bool
    ts: float
    error: str | None = None

    def __reduce__(self) -> tuple[type[WebSocketMessage], tuple[Any, ...]]:
        return WebSocketMessage, (self.direction, self.opcode, self.size, self.wire_size, self.frames,
                                  self.compressed, self.data, self.cut, self.ts, self.error)


@dataclass(slots=True)
class WebSocketSession:
    """What followed a WebSocket handshake on the connection (``Exchange.websocket``).

    ``messages``: in arrival order, at most the session's message limit (``counts`` go on: messages
    per direction); ``close_code``/``close_reason``/``closed_by`` from the first Close frame;
    ``extensions`` and ``subprotocol`` as the server accepted them; ``flags`` what went wrong."""

    messages: list[WebSocketMessage]
    counts: list[int]
    close_code: int | None
    close_reason: str | None
    closed_by: int | None
    extensions: str | None
    subprotocol: str | None
    end_ts: float | None
    flags: set[str]

    def __reduce__(self) -> tuple[type[WebSocketSession], tuple[Any, ...]]:
        return WebSocketSession, (self.messages, self.counts, self.close_code, self.close_reason,
                                  self.closed_by, self.extensions, self.subprotocol, self.end_ts, self.flags)


@dataclass(slots=True, init=False)  # __init__ written out below
class Exchange:
    """One request paired with its response (either side may be missing; see ``flags``)."""

    http_version: str
    method: str | None
    scheme: str | None
    authority: str | None
    path: str | None
    status: int | None
    reason: str | None
    request_headers: Headers
    response_headers: Headers
    request_trailers: Headers
    response_trailers: Headers
    request_body: Body | None
    response_body: Body | None
    request_ts: float | None
    request_end_ts: float | None
    response_ts: float | None
    response_end_ts: float | None
    stream_id: int | None
    flags: frozenset[str]
    websocket: WebSocketSession | None  # the session after a WebSocket handshake (101), else None

    # written out: mypyc compiles it (a generated __init__ stays interpreted): 5x cheaper per event
    def __init__(self, http_version: str, method: str | None, scheme: str | None, authority: str | None,
                 path: str | None, status: int | None, reason: str | None, request_headers: Headers,
                 response_headers: Headers, request_trailers: Headers, response_trailers: Headers,
                 request_body: Body | None, response_body: Body | None, request_ts: float | None,
                 request_end_ts: float | None, response_ts: float | None, response_end_ts: float | None,
                 stream_id: int | None, flags: frozenset[str], websocket: WebSocketSession | None = None) -> None:
        self.http_version = http_version
        self.method = method
        self.scheme = scheme
        self.authority = authority
        self.path = path
        self.status = status
        self.reason = reason
        self.request_headers = request_headers
        self.response_headers = response_headers
        self.request_trailers = request_trailers
        self.response_trailers = response_trailers
        self.request_body = request_body
        self.response_body = response_body
        self.request_ts = request_ts
        self.request_end_ts = request_end_ts
        self.response_ts = response_ts
        self.response_end_ts = response_end_ts
        self.stream_id = stream_id
        self.flags = flags
        self.websocket = websocket

    # API calls travel pickled from workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[Exchange], tuple[Any, ...]]:
        return Exchange, (self.http_version, self.method, self.scheme, self.authority, self.path, self.status,
                         self.reason, self.request_headers, self.response_headers, self.request_trailers,
                         self.response_trailers, self.request_body, self.response_body, self.request_ts,
                         self.request_end_ts, self.response_ts, self.response_end_ts, self.stream_id, self.flags,
                         self.websocket)


@dataclass(slots=True)
class HttpProblem:
    """An error that ended HTTP parsing of one connection (exchanges already complete are kept)."""

    ts: float
    reason: str


HttpEvent = Exchange | HttpProblem


class EventQueue:
    """Shared by the HTTP/1 and HTTP/2 engines: the events a call completed, handed out once."""

    _out: list[Exchange | HttpProblem]

    def _take(self) -> list[Exchange | HttpProblem]:
        out = self._out
        if not out:
            return []
        self._out = []
        return out
