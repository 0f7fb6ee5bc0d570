"""The messages between the daemon's processes, one slotted class each (pickled across the boundary).

Parent -> worker, on the worker's control queue: :class:`KeysGiven`, :class:`StopRequest`; on its inbox when
the parent reads a capture file: :class:`FrameBatch`, :class:`SecretsAt`, :class:`EndOfCapture`.
Worker -> parent, through the worker's outbox pipe: :class:`WorkerReady`, :class:`CallBatch`,
:class:`WorkerStats`, :class:`WorkerDone`, :class:`WorkerFailed`. Readers dispatch on ``type(msg) is X``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...calls import ApiCall
from ...keys.events import Secret


@dataclass(slots=True)
class KeysGiven:
    """Secrets from the key listener: they take effect now (the worker's clock)."""

    secrets: list[Secret]


@dataclass(slots=True)
class StopRequest:
    """Finish: flush the engine, send the last stats and :class:`WorkerDone`."""


@dataclass(slots=True)
class FrameBatch:
    """Frames of a capture file for this worker, in file order: ``(ts, linktype, data)`` each."""

    frames: list[tuple[float, int, bytes]]


@dataclass(slots=True)
class SecretsAt:
    """The secrets of a pcapng Decryption Secrets Block, at ``ts`` (the time of the frame before it)."""

    secrets: list[Secret]
    ts: float


@dataclass(slots=True)
class EndOfCapture:
    """The capture file has no more frames."""


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
class WorkerStats:
    """Cumulative counters and current gauges (see ``Worker.stats``)."""

    worker: int
    stats: dict[str, Any]


@dataclass(slots=True)
class WorkerDone:
    """The worker finished after a :class:`StopRequest` or the end of the capture."""

    worker: int


@dataclass(slots=True)
class WorkerFailed:
    """The worker could not start (``message`` says why, in one line)."""

    worker: int
    message: str


ToWorker = KeysGiven | StopRequest | FrameBatch | SecretsAt | EndOfCapture
FromWorker = WorkerReady | CallBatch | WorkerStats | WorkerDone | WorkerFailed
