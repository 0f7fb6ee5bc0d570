"""One worker's share of a capture's flows, for ``replay --workers`` and ``decrypt --workers``
(:mod:`.workers` runs the processes). Compiled: every frame of the file passes here in every worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...frames.decoder import FrameDecoder
from ...frames.flowhash import FlowHasher
from ...keys.events import Secret
from .pcapfile import CapturedFrame

if TYPE_CHECKING:
    from .loop import EngineFeed

_MEMO_MAX = 1 << 16  # flow hashes remembered by addresses and ports (the common Ethernet/IPv4/TCP frame)


def _port(data: bytes, off: int) -> int:
    return (data[off] << 8) | data[off + 1]


class FlowShare:
    """A :class:`~.loop.CaptureSink` in front of an :class:`~.loop.EngineFeed`: passes on the frames of
    worker ``index`` of ``count`` and every secrets block, numbers flows by their first frame and keeps
    the engine's expiry clock on every TCP segment of the file (the engine's own clock is turned off)."""

    def __init__(self, feed: EngineFeed, index: int, count: int) -> None:
        self.feed = feed
        self.engine = engine = feed.engine
        self.index = index
        self.count = count
        self.hasher = FlowHasher()
        self.memo: dict[bytes, int] = {}
        self.others = FrameDecoder()  # decodes the other workers' frames, for their times only
        self.ports = engine.config.ports
        self.interval = engine.config.expire_interval
        engine.config.expire_interval = float("inf")  # expiry is driven from here, on every segment
        self.next_expire = 0.0
        self.max_ts = 0.0  # the latest of the other workers' TCP segments so far
        self.frame_no = 0
        self.own_frames = 0

    def on_frame(self, frame: CapturedFrame) -> None:
        self.frame_no += 1
        data = frame.data
        fast = (frame.linktype == 1 and len(data) >= 38 and data[12] == 8 and data[13] == 0
                and data[14] == 0x45 and data[23] == 6 and not (data[20] & 0x3F) and not data[21])
        if fast:  # Ethernet, IPv4 without options, TCP, not a fragment: the hash depends on bytes 26-38
            key = data[26:38]
            h = self.memo.get(key)
            if h is None:
                if len(self.memo) >= _MEMO_MAX:
                    self.memo.clear()
                h = self.memo[key] = self.hasher(1, data)
        else:
            h = self.hasher(frame.linktype, data)
        ts = frame.ts
        engine = self.engine
        if h % self.count == self.index:
            self.own_frames += 1
            engine.tcp.next_flow_id = self.frame_no
            if ts >= self.next_expire:
                before = engine.stats["segments"]
                self.feed.on_frame(frame)
                if engine.stats["segments"] != before:
                    self._segment(ts)
            else:
                self.feed.on_frame(frame)  # the engine's last_ts follows this worker's own segments
        elif ts > self.max_ts or ts >= self.next_expire:
            if fast:
                segment = self.ports is None or _port(data, 34) in self.ports or _port(data, 36) in self.ports
            else:
                seg = self.others.decode(frame.linktype, data, ts)
                segment = seg is not None and (self.ports is None or seg.sport in self.ports
                                               or seg.dport in self.ports)
            if segment:
                self._segment(ts)

    def _segment(self, ts: float) -> None:
        """A TCP segment (this worker's or another's) at ``ts``: the engine's clock as one process has it."""
        if ts > self.max_ts:
            self.max_ts = ts  # (an own segment's ts is the engine's last_ts already: no harm)
        if ts >= self.next_expire:
            self.next_expire = ts + self.interval
            self._sync()
            events = self.engine.expire(ts)
            if events:
                self.feed.handle(events)

    def _sync(self) -> None:
        if self.max_ts > self.engine.last_ts:
            self.engine.last_ts = self.max_ts

    def on_secrets(self, secrets: list[Secret], ts: float) -> None:
        self._sync()
        self.feed.on_secrets(secrets, ts)

    def finish(self) -> None:
        self._sync()
        self.feed.finish()
