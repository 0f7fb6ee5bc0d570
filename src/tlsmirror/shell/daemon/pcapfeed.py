"""The daemon's ``--pcap`` path: each worker reads the capture file itself and keeps its flow share.

Every worker reads the whole file through the one capture loop (:func:`~tlsmirror.shell.offline.loop.pump`)
and feeds its engine the frames whose flow hash falls to it (:class:`~tlsmirror.frames.flowhash.FlowHasher`,
both directions alike, as the kernel's fanout spreads live capture); the secrets of a pcapng Decryption
Secrets Block go to every worker at their position in the file. No frame crosses a process boundary.

The share counts every item of the file (:attr:`FlowShare.position`), its own or not: the worker reports
that position with the counts it has exported up to it, and a restarted worker reads its share again from
the start, silently (nothing exported, nothing logged), up to the last position its predecessor reported,
so that records and counts come out as if it had never died.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ...frames.flowhash import FlowHasher
from ...keys.events import Secret
from ..offline.pcapfile import CapturedFrame

KNOWN_FLOWS = 1 << 16  # flow directions whose share is remembered (then forgotten all at once)


class FlowShare:
    """A :class:`~tlsmirror.shell.offline.loop.CaptureSink` for worker *index* of *workers*: its flows'
    frames to ``feed`` (an engine's ``feed_frame``; what it emits to ``handle``), counted, every secrets
    block to ``on_block``, paced at ``speed`` times the capture's own pace (0: as fast as the worker goes)
    once past ``resume`` (``wait`` sleeps, returning early on stop); ``on_caught_up`` is called before the
    first item past ``resume`` is handled. ``wanted``: the event types ``handle`` does something with (the
    engine's lists of others only, mostly decrypted records, are not passed on); None: every list. Compiled
    (setup.py): it is the worker's per-frame loop."""

    def __init__(self, index: int, workers: int, feed: Callable[[int, bytes, float], list[Any]],
                 handle: Callable[[list[Any]], None], on_block: Callable[[list[Secret], float], None], *,
                 speed: float = 0.0, wait: Callable[[float], object] = time.sleep, resume: int = 0,
                 on_caught_up: Callable[[], object] | None = None,
                 wanted: tuple[type, ...] | None = None) -> None:
        self.index = index
        self.n = max(1, workers)
        self.hasher = FlowHasher()
        self.feed = feed
        self.handle = handle
        self.on_block = on_block
        self.speed = speed
        self.wait = wait
        self.resume = resume
        self.on_caught_up = on_caught_up
        self.wanted = wanted
        self.position = 0  # items of the file (frames of every worker, secrets blocks) handled so far
        self.frames = 0  # frames of the file (every worker's)
        self.packets = 0  # frames of this worker's share
        self.bytes = 0
        self.last_ts = 0.0
        self.t0: float | None = None
        self.wall0 = 0.0
        self._known: dict[bytes, int] = {}

    @property
    def catching_up(self) -> bool:
        """True while the item being handled was already handled by a predecessor."""
        return self.position < self.resume

    def _caught_up(self) -> None:
        if self.position == self.resume and self.on_caught_up is not None:
            self.on_caught_up()

    def on_frame(self, frame: CapturedFrame) -> None:
        self.frames += 1
        if self.position >= self.resume:
            if self.position == self.resume:
                self._caught_up()
            if self.speed > 0 and self.t0 is None:
                self.t0, self.wall0 = frame.ts, time.monotonic()  # the pace of the file from here
        data = frame.data
        if self.n > 1 and self.share_of(frame.linktype, data) != self.index:
            self.position += 1
            return
        t0 = self.t0
        if t0 is not None:
            delay = self.wall0 + (frame.ts - t0) / self.speed - time.monotonic()
            if delay > 0.002:
                self.wait(delay)  # the position is still this frame's: not handled yet
        events = self.feed(frame.linktype, data, frame.ts)
        if events and (self.wanted is None or wanted_in(events, self.wanted)):
            self.handle(events)
        self.packets += 1
        self.bytes += len(data)
        if frame.ts > self.last_ts:
            self.last_ts = frame.ts
        self.position += 1

    def share_of(self, linktype: int, data: bytes) -> int:
        """The worker whose flow *data* belongs to. The common frame (Ethernet, IPv4 without options or
        fragmentation, TCP) is looked up by its addresses and ports, hashed once per flow direction."""
        if (linktype == 1 and len(data) >= 38 and data[12] == 8 and data[13] == 0 and data[14] == 0x45
                and data[23] == 6 and not data[20] & 0x3F and not data[21]):
            key = data[26:38]  # source and destination address, source and destination port
            i = self._known.get(key)
            if i is None:
                if len(self._known) >= KNOWN_FLOWS:
                    self._known.clear()
                i = self._known[key] = self.hasher(linktype, data) % self.n
            return i
        return self.hasher(linktype, data) % self.n

    def on_secrets(self, secrets: list[Secret], ts: float) -> None:
        self._caught_up()
        self.on_block(secrets, ts)
        self.position += 1


def wanted_in(events: list[Any], wanted: tuple[type, ...]) -> bool:
    """Whether one of *events* is of a type in *wanted* (a loop: compiled, ``any()`` of a generator builds a list)."""
    for ev in events:  # noqa: SIM110
        if type(ev) in wanted:
            return True
    return False
