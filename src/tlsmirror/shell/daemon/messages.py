"""The messages between the daemon's processes, one slotted class each (pickled across the boundary).

Parent -> worker, on the worker's control queue: :class:`KeysGiven`, :class:`FactsGiven`, :class:`Reopen`,
:class:`StopRequest`. Worker -> parent, through the worker's outbox pipe: :class:`WorkerReady`,
:class:`CallBatch` (only when the exporters are the parent's), :class:`InventoryPart`, :class:`FactsSeen`
(only with the key fabric), :class:`WorkerStats`, :class:`CaptureRead`, :class:`WorkerDone`,
:class:`WorkerFailed`. Readers dispatch on ``type(msg) is X``. Frames never cross: live, each worker has its
sockets; with a capture file, each worker reads its flow share of it (:mod:`.pcapfeed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...calls import ApiCall
from ...keys.events import Secret
from ...tls.events import HandshakeFacts, ResumptionState

FactsRow = tuple[bytes, int, bytes, int, bytes, bytes, int, int, bool, bool, "str | None", float, "str | None"]


@dataclass(slots=True)
class KeysGiven:
    """Secrets from the key listener: they take effect now (the worker's clock)."""

    secrets: list[Secret]


def facts_rows(facts: list[HandshakeFacts]) -> list[FactsRow]:
    """Facts as plain tuples to cross the process boundary (pickled rows are smaller and quicker than objects)."""
    return [(f.client_addr, f.client_port, f.server_addr, f.server_port, f.client_random, f.server_random,
             f.version, f.suite, f.extended_master_secret, f.encrypt_then_mac, f.alpn, f.ts, f.sni)
            for f in facts]


def facts_of(rows: list[FactsRow]) -> list[HandshakeFacts]:
    return [HandshakeFacts(*r) for r in rows]


ResumptionRow = tuple[str, bytes, bytes, int, int, bool, float]


def resumption_rows(states: list[ResumptionState]) -> list[ResumptionRow]:
    """Resumption states as plain tuples to cross the process boundary (they hold master secrets)."""
    return [(s.kind, s.digest, s.master, s.version, s.suite, s.extended_master_secret, s.ts) for s in states]


def resumption_of(rows: list[ResumptionRow]) -> list[ResumptionState]:
    return [ResumptionState(*r) for r in rows]


@dataclass(slots=True)
class FactsGiven:
    """Handshake facts of connections another sensor saw (the key fabric): picked up from mid-stream here
    (rows of :func:`facts_rows`), and resumption states of TLS 1.2 sessions it saw (:func:`resumption_rows`)."""

    facts: list[FactsRow]
    resumption: list[ResumptionRow] = field(default_factory=list)


@dataclass(slots=True)
class StopRequest:
    """Finish: flush the engine and the exporters, send the last stats and :class:`WorkerDone`, all by
    ``deadline`` (``time.monotonic()``, the same clock in every process; 0: no limit)."""

    deadline: float = 0.0


@dataclass(slots=True)
class Reopen:
    """SIGHUP: reopen output files (log rotation)."""


@dataclass(slots=True)
class WorkerReady:
    """The worker's capture is attached (live) or it is waiting for frames (capture file)."""

    worker: int
    pid: int


@dataclass(slots=True)
class CallBatch:
    """API calls for the exporters."""

    worker: int
    calls: list[ApiCall]


@dataclass(slots=True)
class FactsSeen:
    """The handshake facts of the connections whose handshakes the worker saw (for the key fabric; rows of
    :func:`facts_rows`), and the resumption states it learnt (:func:`resumption_rows`)."""

    worker: int
    facts: list[FactsRow]
    resumption: list[ResumptionRow] = field(default_factory=list)


@dataclass(slots=True)
class InventoryPart:
    """The calls the worker folded into its share of the live inventory since its last part (an
    ``Inventory``, shell/inventory/live.py), sent just before a :class:`WorkerStats`."""

    worker: int
    part: Any


@dataclass(slots=True)
class WorkerStats:
    """Cumulative counters and current gauges (see ``Worker.stats``)."""

    worker: int
    stats: dict[str, Any]


@dataclass(slots=True)
class CaptureRead:
    """The worker has read the capture file to its end (``frames``: every worker's frames in it)."""

    worker: int
    frames: int


@dataclass(slots=True)
class WorkerDone:
    """The worker finished after a :class:`StopRequest` or the end of the capture."""

    worker: int


@dataclass(slots=True)
class WorkerFailed:
    """The worker could not start (``message`` says why, in one line)."""

    worker: int
    message: str


ToWorker = KeysGiven | FactsGiven | Reopen | StopRequest
FromWorker = (WorkerReady | CallBatch | InventoryPart | FactsSeen | WorkerStats | CaptureRead | WorkerDone
              | WorkerFailed)
