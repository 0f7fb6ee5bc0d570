"""What the tcp stage emits.

Every event carries the :class:`Flow` it belongs to (not a key to look up again): the pipeline
keeps its per-connection state for upper stages in ``Flow.app``, so each packet costs one dict
lookup in total. The events are written-out slotted classes, treated as immutable (not ``@dataclass``: see
``http.events``); the ones once ``frozen`` keep their value ``__hash__``.
"""

from __future__ import annotations

from typing import Any

CLIENT = 0  # direction: client -> server (the side that sent SYN, or our best guess)
SERVER = 1  # direction: server -> client


class Flow:
    """One TCP connection as seen by the sensor.

    ``addr[d]``/``port[d]`` are the endpoint that *sends* in direction ``d`` (``CLIENT`` = 0 or
    ``SERVER`` = 1). ``syn_seen`` tells whether the roles come from a handshake or a guess; an upper
    stage that learns better (a ClientHello sent by the "server") may call :meth:`swap_roles`
    before it has consumed any data.
    """

    __slots__ = ("addr", "app", "id", "port", "syn_seen", "ts_first", "ts_last")

    def __init__(self, flow_id: int, client: tuple[bytes, int], server: tuple[bytes, int],
                 ts: float, syn_seen: bool) -> None:
        self.id = flow_id
        self.addr = (client[0], server[0])
        self.port = (client[1], server[1])
        self.syn_seen = syn_seen
        self.ts_first = ts
        self.ts_last = ts
        self.app: Any = None  # upper stages' per-flow state, owned by the pipeline

    def swap_roles(self) -> None:
        self.addr = (self.addr[1], self.addr[0])
        self.port = (self.port[1], self.port[0])

    def __repr__(self) -> str:
        return f"Flow({self.id})"


class FlowOpened:
    __slots__ = ("flow", "ts")

    flow: Flow
    ts: float

    def __init__(self, flow: Flow, ts: float) -> None:
        self.flow = flow
        self.ts = ts

    def __repr__(self) -> str:
        return f"FlowOpened(flow={self.flow!r}, ts={self.ts!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not FlowOpened:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[FlowOpened], tuple[Any, ...]]:
        return FlowOpened, (self.flow, self.ts)


class StreamData:
    """In-order bytes of one direction (built per segment: not frozen, see frames.events.TcpSegment)."""

    __slots__ = ("data", "direction", "flow", "ts")

    flow: Flow
    direction: int
    ts: float
    data: bytes

    # written out: mypyc compiles it (a generated __init__ stays interpreted): 5x cheaper per event
    def __init__(self, flow: Flow, direction: int, ts: float, data: bytes) -> None:
        self.flow = flow
        self.direction = direction
        self.ts = ts
        self.data = data

    def __repr__(self) -> str:
        return f"StreamData(flow={self.flow!r}, direction={self.direction!r}, ts={self.ts!r}, data={self.data!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not StreamData:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __reduce__(self) -> tuple[type[StreamData], tuple[Any, ...]]:
        return StreamData, (self.flow, self.direction, self.ts, self.data)


class StreamGap:
    """``size`` bytes of one direction were never seen (lost segment, capture started late
    inside a retransmission hole, or dropped to stay within memory budgets)."""

    __slots__ = ("direction", "flow", "reason", "size", "ts")

    flow: Flow
    direction: int
    ts: float
    size: int
    reason: str  # "lost", "budget"

    def __init__(self, flow: Flow, direction: int, ts: float, size: int, reason: str) -> None:
        self.flow = flow
        self.direction = direction
        self.ts = ts
        self.size = size
        self.reason = reason

    def __repr__(self) -> str:
        return (f"StreamGap(flow={self.flow!r}, direction={self.direction!r}, ts={self.ts!r}, size={self.size!r}, "
                f"reason={self.reason!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not StreamGap:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[StreamGap], tuple[Any, ...]]:
        return StreamGap, (self.flow, self.direction, self.ts, self.size, self.reason)


class FlowClosed:
    """The flow ended; no more events for it. ``reason``: fin, rst, idle, evicted, reused, end."""

    __slots__ = ("flow", "reason", "ts")

    flow: Flow
    ts: float
    reason: str

    def __init__(self, flow: Flow, ts: float, reason: str) -> None:
        self.flow = flow
        self.ts = ts
        self.reason = reason

    def __repr__(self) -> str:
        return f"FlowClosed(flow={self.flow!r}, ts={self.ts!r}, reason={self.reason!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not FlowClosed:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[FlowClosed], tuple[Any, ...]]:
        return FlowClosed, (self.flow, self.ts, self.reason)


TcpEvent = FlowOpened | StreamData | StreamGap | FlowClosed
