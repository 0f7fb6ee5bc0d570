"""What the http stage emits: complete exchanges, and the problem that ended a connection's parsing.

The events are written-out slotted classes (``__init__``, ``__repr__``, ``__eq__``, ``__reduce__``), to be
treated as immutable: not ``frozen``, because one is built per exchange and a frozen class costs several
times more to build, and not ``@dataclass``, because mypyc keeps a compiled dataclass's method generation
for run time (about 3 M instructions per class at every start); mypyc compiles each into a native class.
"""

from __future__ import annotations

from typing import Any

Headers = tuple[tuple[str, str], ...]


class Body:
    """One message body as captured.

    ``data`` holds at most ``body_limit`` bytes: decoded when the Content-Encoding was decodable,
    else the raw wire bytes (then ``decode_error`` says why). ``stamps`` (event streams only) maps
    offsets of ``data`` to the capture time of the chunk that completed them. ``wire_size`` counts the bytes on the
    wire after de-chunking and before content decoding; ``size`` the decoded bytes (``== wire_size``
    when not encoded or decoding failed). ``truncated`` tells that ``data`` is shorter than ``size``.
    """

    __slots__ = ("data", "decode_error", "size", "stamps", "truncated", "wire_size")

    data: bytes
    wire_size: int
    size: int
    truncated: bool
    decode_error: str | None
    # (end offset in ``data``, capture time) per captured chunk: kept for streamed bodies only
    # (``text/event-stream``), else None
    stamps: tuple[tuple[int, float], ...] | None

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

    def __repr__(self) -> str:
        return (f"Body(data={self.data!r}, wire_size={self.wire_size!r}, size={self.size!r}, "
                f"truncated={self.truncated!r}, decode_error={self.decode_error!r}, stamps={self.stamps!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Body:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]


class WebSocketMessage:
    """One WebSocket message (data frames joined, masking removed, permessage-deflate undone) or control
    frame. ``direction`` 0 = client to server; ``size`` the payload after decompression, ``wire_size``
    the payload bytes of its frames; ``data`` at most the session's capture limit (``cut`` when shorter
    than ``size``); ``ts`` the capture time of the packet that completed it."""

    __slots__ = ("compressed", "cut", "data", "direction", "error", "frames", "opcode", "size", "ts", "wire_size")

    direction: int
    opcode: int
    size: int
    wire_size: int
    frames: int
    compressed: bool
    data: bytes
    cut: bool
    ts: float
    error: str | None

    def __init__(self, direction: int, opcode: int, size: int, wire_size: int, frames: int, compressed: bool,
                 data: bytes, cut: bool, ts: float, error: str | None = None) -> None:
        self.direction = direction
        self.opcode = opcode
        self.size = size
        self.wire_size = wire_size
        self.frames = frames
        self.compressed = compressed
        self.data = data
        self.cut = cut
        self.ts = ts
        self.error = error

    def __reduce__(self) -> tuple[type[WebSocketMessage], tuple[Any, ...]]:
        return WebSocketMessage, (self.direction, self.opcode, self.size, self.wire_size, self.frames,
                                  self.compressed, self.data, self.cut, self.ts, self.error)

    def __repr__(self) -> str:
        return (f"WebSocketMessage(direction={self.direction!r}, opcode={self.opcode!r}, size={self.size!r}, "
                f"wire_size={self.wire_size!r}, frames={self.frames!r}, compressed={self.compressed!r}, "
                f"data={self.data!r}, cut={self.cut!r}, ts={self.ts!r}, error={self.error!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not WebSocketMessage:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]


class WebSocketSession:
    """What followed a WebSocket handshake on the connection (``Exchange.websocket``).

    ``messages``: in arrival order, at most the session's message limit (``counts`` go on: messages
    per direction); ``close_code``/``close_reason``/``closed_by`` from the first Close frame;
    ``extensions`` and ``subprotocol`` as the server accepted them; ``flags`` what went wrong."""

    __slots__ = ("close_code", "close_reason", "closed_by", "counts", "end_ts", "extensions", "flags", "messages",
                 "subprotocol")

    messages: list[WebSocketMessage]
    counts: list[int]
    close_code: int | None
    close_reason: str | None
    closed_by: int | None
    extensions: str | None
    subprotocol: str | None
    end_ts: float | None
    flags: set[str]

    def __init__(self, messages: list[WebSocketMessage], counts: list[int], close_code: int | None,
                 close_reason: str | None, closed_by: int | None, extensions: str | None, subprotocol: str | None,
                 end_ts: float | None, flags: set[str]) -> None:
        self.messages = messages
        self.counts = counts
        self.close_code = close_code
        self.close_reason = close_reason
        self.closed_by = closed_by
        self.extensions = extensions
        self.subprotocol = subprotocol
        self.end_ts = end_ts
        self.flags = flags

    def __reduce__(self) -> tuple[type[WebSocketSession], tuple[Any, ...]]:
        return WebSocketSession, (self.messages, self.counts, self.close_code, self.close_reason,
                                  self.closed_by, self.extensions, self.subprotocol, self.end_ts, self.flags)

    def __repr__(self) -> str:
        return (f"WebSocketSession(messages={self.messages!r}, counts={self.counts!r}, close_code={self.close_code!r}, "
                f"close_reason={self.close_reason!r}, closed_by={self.closed_by!r}, extensions={self.extensions!r}, "
                f"subprotocol={self.subprotocol!r}, end_ts={self.end_ts!r}, flags={self.flags!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not WebSocketSession:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]


class Exchange:
    """One request paired with its response (either side may be missing; see ``flags``)."""

    __slots__ = ("authority", "flags", "http_version", "method", "path", "reason", "request_body", "request_end_ts",
                 "request_headers", "request_trailers", "request_ts", "response_body", "response_end_ts",
                 "response_headers", "response_trailers", "response_ts", "scheme", "status", "stream_id", "websocket")

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

    def __repr__(self) -> str:
        return (f"Exchange(http_version={self.http_version!r}, method={self.method!r}, scheme={self.scheme!r}, "
                f"authority={self.authority!r}, path={self.path!r}, status={self.status!r}, reason={self.reason!r}, "
                f"request_headers={self.request_headers!r}, response_headers={self.response_headers!r}, "
                f"request_trailers={self.request_trailers!r}, response_trailers={self.response_trailers!r}, "
                f"request_body={self.request_body!r}, response_body={self.response_body!r}, "
                f"request_ts={self.request_ts!r}, request_end_ts={self.request_end_ts!r}, "
                f"response_ts={self.response_ts!r}, response_end_ts={self.response_end_ts!r}, "
                f"stream_id={self.stream_id!r}, flags={self.flags!r}, websocket={self.websocket!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Exchange:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]


class HttpProblem:
    """An error that ended HTTP parsing of one connection (exchanges already complete are kept)."""

    __slots__ = ("reason", "ts")

    ts: float
    reason: str

    def __init__(self, ts: float, reason: str) -> None:
        self.ts = ts
        self.reason = reason

    def __repr__(self) -> str:
        return f"HttpProblem(ts={self.ts!r}, reason={self.reason!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not HttpProblem:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __reduce__(self) -> tuple[type[HttpProblem], tuple[Any, ...]]:
        return HttpProblem, (self.ts, self.reason)


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
