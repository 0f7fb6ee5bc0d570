"""One worker's share of a capture's flows, for ``replay --workers`` and ``decrypt --workers``
(:mod:`.workers` runs the processes). Compiled: every frame of the file passes here in every worker.

The common frames (Ethernet, 802.1Q, IPv4 or IPv6, TCP: :func:`~tlsmirror.frames.flowhash.tcp_key_at`)
are classified in the reader's buffer (:meth:`FlowShare.skip`): the other workers' are never copied out
or decoded, only their time kept for the engine's clock. The rest (tunnels, fragments, other links)
comes as a frame and is hashed and decoded in full, as one process would."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...frames.decoder import FrameDecoder
from ...frames.flowhash import FlowHasher, tcp_key_at
from ...keys.events import Secret
from .pcapfile import CapturedFrame, FrameFilter

if TYPE_CHECKING:
    from .loop import EngineFeed

_MEMO_MAX = 1 << 16  # flows' workers remembered by addresses and ports (the common frames' key)
_OWNERS_MAX = 1 << 18  # flow hashes given a worker in turn; later new ones: the hash modulo the count


def _port(data: bytes, off: int) -> int:
    return (data[off] << 8) | data[off + 1]


_UNDECIDED = 0  # on_frame: a frame the reader's filter has not seen (counted and hashed there)
_OWN = 1  # seen by skip(): this worker's
_FULL = 2  # seen by skip(): not of a common shape, to be hashed from the whole frame


class FlowShare(FrameFilter):
    """A :class:`~.loop.CaptureSink` in front of an :class:`~.loop.EngineFeed`: passes on the frames of
    worker ``index`` of ``count`` and every secrets block, numbers flows by their first frame and keeps
    the engine's expiry clock on every TCP segment of the file (the engine's own clock is turned off).
    As the reader's :class:`~.pcapfile.FrameFilter` it drops the other workers' common frames unread."""

    def __init__(self, feed: EngineFeed, index: int, count: int) -> None:
        self.feed = feed
        self.engine = engine = feed.engine
        self.index = index
        self.count = count
        self.hasher = FlowHasher()
        self.memo: dict[bytes, int] = {}  # key (tcp_key_at) -> worker
        self.owners: dict[int, int] = {}  # flow hash -> worker
        self.next_owner = 0
        self.others = FrameDecoder()  # decodes the other workers' frames, for their times only
        self.ports = engine.config.ports
        self.interval = engine.config.expire_interval
        engine.config.expire_interval = float("inf")  # expiry is driven from here, on every segment
        self.next_expire = 0.0
        self.max_ts = 0.0  # the latest of the other workers' TCP segments so far
        self.frame_no = 0
        self.own_frames = 0
        self.skipped = 0  # the other workers' frames dropped in the reader's buffer
        self.full_frames = 0  # frames not of a common shape: hashed from the whole frame
        self.decided = _UNDECIDED  # what skip() found about the frame on_frame gets next

    def skip(self, linktype: int, buf: bytes, start: int, stop: int, ts: float) -> bool:
        self.frame_no += 1
        if linktype != 1:
            self.decided = _FULL
            return False
        koff, klen, l4 = tcp_key_at(buf, start, stop)
        if not klen:
            self.decided = _FULL
            return False
        key = buf[koff:koff + klen]
        owner = self.memo.get(key)
        if owner is None:
            if len(self.memo) >= _MEMO_MAX:
                self.memo.clear()
            owner = self.memo[key] = self._owner(self.hasher.key_hash(key))
        if owner == self.index:
            self.decided = _OWN
            return False
        self.skipped += 1
        if ts > self.max_ts or ts >= self.next_expire:
            ports = self.ports
            if ports is None or _port(buf, l4) in ports or _port(buf, l4 + 2) in ports:
                self._segment(ts)
        return True

    def on_frame(self, frame: CapturedFrame) -> None:
        decided = self.decided
        self.decided = _UNDECIDED
        data = frame.data
        if decided == _UNDECIDED:  # not seen by skip() (no reader's filter: a test; a simple packet block)
            if self.skip(frame.linktype, data, 0, len(data), frame.ts):
                return
            decided = self.decided
            self.decided = _UNDECIDED
        if decided == _OWN:
            self._own(frame)
            return
        # not of a common shape: hashed and (the other workers' frames) decoded in full, for the clock
        self.full_frames += 1
        if self._owner(self.hasher(frame.linktype, data)) == self.index:
            self._own(frame)
            return
        ts = frame.ts
        if ts > self.max_ts or ts >= self.next_expire:
            seg = self.others.decode(frame.linktype, data, ts)
            if seg is not None and (self.ports is None or seg.sport in self.ports or seg.dport in self.ports):
                self._segment(ts)

    def _owner(self, h: int) -> int:
        """The worker of the flow with hash ``h``: the flows take the workers in turn, in the order they
        first appear in the file (every worker sees every frame: all count alike), so each worker gets as
        many flows as the others (the hash modulo the count gave one of two workers 11 % more of the
        benchmark capture's bytes than the other). Past ``_OWNERS_MAX`` flows, new ones go by the hash."""
        owner = self.owners.get(h)
        if owner is None:
            if len(self.owners) >= _OWNERS_MAX:
                return h % self.count
            owner = self.owners[h] = self.next_owner
            self.next_owner = (owner + 1) % self.count
        return owner

    def _own(self, frame: CapturedFrame) -> None:
        """One of this worker's frames: to the engine, its flow numbered by its place in the file."""
        engine = self.engine
        ts = frame.ts
        self.own_frames += 1
        engine.tcp.next_flow_id = self.frame_no
        if ts >= self.next_expire:
            before = engine.stats["segments"]
            self.feed.on_frame(frame)
            if engine.stats["segments"] != before:
                self._segment(ts)
        else:
            self.feed.on_frame(frame)  # the engine's last_ts follows this worker's own segments

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
