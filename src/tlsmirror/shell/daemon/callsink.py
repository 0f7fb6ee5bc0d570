"""A live worker's per-packet path: frames fed to the engine, and the API calls it emits renumbered,
counted and queued for the exporters.

Every frame and call of a live worker passes here, so this module is compiled (setup.py);
:meth:`.workers.Worker.handle` takes the engine's other events (TLS outcomes, HTTP issues, handshake
facts), which come once per connection at most.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ...calls import ApiCall, Connection
from ...pipeline import Engine

# connections remembered for renumbering: a connection's calls come while it is open, so few are needed
MAX_CONNECTIONS = 4096


def feed_frames(engine: Engine, handle: Callable[[list[Any]], None], sink: CallSink,
                export: Callable[[], None] | None, batch: int, linktype: int, frames: list[bytes],
                stamps: list[float]) -> int:
    """Feed *frames* (with their capture times, *stamps*: one each) to *engine*, each event list to
    *handle*; *export*, when given, is called whenever *sink* holds *batch* calls or more. Returns the
    frames' bytes."""
    size = 0
    for i in range(len(frames)):
        data = frames[i]
        size += len(data)
        ev = engine.feed_frame(linktype, data, stamps[i])
        if ev:
            handle(ev)
            if export is not None and len(sink.calls) >= batch:
                export()
    return size


class CallSink:
    """The calls of one worker until the next flush, and the counts its statistics report.

    With more than one worker, or a restarted one (*id_base*: its incarnation), connection ids are made
    unique over them all: ``(id + id_base) * workers + index``; one renumbered copy per connection, not
    per call."""

    def __init__(self, index: int, workers: int, id_base: int = 0) -> None:
        self.calls: list[ApiCall] = []
        self.exported = 0  # calls taken, including a catch-up's (silent) ones
        self.exchanges: dict[str, int] = {}  # HTTP version -> calls
        self.silent = False  # catching up on a capture file: count, queue nothing
        self.index = index
        self.id_mul = max(1, workers)
        self.id_base = id_base
        self.renumber = self.id_mul != 1 or id_base != 0
        self.conns: dict[int, tuple[Connection, Connection]] = {}  # engine's id -> (engine's, renumbered)

    def take(self, events: list[Any]) -> list[Any] | None:
        """Take the calls among *events*; the other events in their order, or None when there are none."""
        rest: list[Any] | None = None
        for ev in events:
            if type(ev) is ApiCall:
                self.add(ev)
            elif rest is None:
                rest = [ev]
            else:
                rest.append(ev)
        return rest

    def add(self, call: ApiCall) -> None:
        if self.renumber:
            conn = call.connection
            known = self.conns.get(conn.id)
            if known is None or known[0] is not conn:  # the engine makes a new one when its ALPN comes late
                if len(self.conns) >= MAX_CONNECTIONS:
                    self.conns.clear()
                known = (conn, dataclasses.replace(conn, id=(conn.id + self.id_base) * self.id_mul + self.index))
                self.conns[conn.id] = known
            call = ApiCall(known[1], call.exchange, call.route)
        if not self.silent:
            self.calls.append(call)
        self.exported += 1
        v = call.exchange.http_version
        self.exchanges[v] = self.exchanges.get(v, 0) + 1

    def drain(self) -> list[ApiCall]:
        """The calls queued since the last drain."""
        batch = self.calls
        self.calls = []
        return batch
