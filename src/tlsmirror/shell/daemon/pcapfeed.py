"""The daemon's ``--pcap`` path: a capture file's frames to the workers, as live capture would give them."""

from __future__ import annotations

import time
from collections.abc import Callable

from ...frames.flowhash import FlowHasher
from ...keys.events import Secret
from ..offline.pcapfile import CapturedFrame
from .messages import FrameBatch, SecretsAt, ToWorker

FRAME_BATCH = 256  # frames per message to a worker (capture files), at most
FRAME_BATCH_BYTES = 128 << 10  # frame bytes per message, at most (plus one frame): bounded, like-sized messages


class PcapFeeder:
    """The daemon's sink for :func:`~tlsmirror.shell.offline.loop.pump`: frames hashed by flow to the
    workers in batches (bounded by count and bytes), paced at ``speed`` times the capture's own pace (0: as
    fast as the workers take them); the secrets of a Decryption Secrets Block to every worker at its
    position in the file."""

    def __init__(self, nworkers: int, speed: float, send: Callable[[int, ToWorker], None],
                 wait: Callable[[float], object]) -> None:
        self.send = send  # (worker, message): blocking, follows restarts
        self.wait = wait  # sleeps up to the given seconds, returning early on a stop request
        self.hasher = FlowHasher()
        self.n = nworkers
        self.batches: list[list[tuple[float, int, bytes]]] = [[] for _ in range(self.n)]
        self.sizes = [0] * self.n
        self.speed = speed
        self.t0: float | None = None
        self.wall0 = 0.0

    def flush(self, i: int) -> None:
        if self.batches[i]:
            self.send(i, FrameBatch(self.batches[i]))
            self.batches[i] = []
            self.sizes[i] = 0

    def flush_all(self) -> None:
        for i in range(self.n):
            self.flush(i)

    def on_frame(self, frame: CapturedFrame) -> None:
        if self.speed > 0:
            if self.t0 is None:
                self.t0, self.wall0 = frame.ts, time.monotonic()
            delay = self.wall0 + (frame.ts - self.t0) / self.speed - time.monotonic()
            if delay > 0.002:
                self.flush_all()
                self.wait(delay)
        i = self.hasher(frame.linktype, frame.data) % self.n
        b = self.batches[i]
        b.append((frame.ts, frame.linktype, frame.data))
        self.sizes[i] += len(frame.data)
        if len(b) >= FRAME_BATCH or self.sizes[i] >= FRAME_BATCH_BYTES:
            self.flush(i)

    def on_secrets(self, secrets: list[Secret], ts: float) -> None:
        for i in range(self.n):
            self.flush(i)
            self.send(i, SecretsAt(secrets, ts))
