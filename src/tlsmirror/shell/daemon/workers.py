"""Worker processes: one :class:`~tlsmirror.pipeline.Engine` each, and its own exporters.

A worker reads frames (from its own AF_PACKET sockets in a fanout group, or its flow share of a capture
file, :mod:`.pcapfeed`), feeds its engine and hands the API calls to its own exporters (the shared JSON lines
file, OTLP with its own spool: :func:`~.outputs.build_worker_exporters`); no frame and no call goes through
the parent. It sends the parent

- :class:`~.messages.WorkerStats` every ``stats_interval`` seconds, and with a capture file after every
  batch of calls it exported, with the file position they were exported up to (cumulative counters and
  gauges, its exporters' counters), each preceded by an :class:`~.messages.InventoryPart` when it folded
  calls into its share of the live inventory since the last one (``inventory.enabled``:
  :class:`~tlsmirror.shell.inventory.live.InventoryFeed`),
- :class:`~.messages.CaptureRead` at the end of a capture file, :class:`~.messages.WorkerDone` after
  ``engine.finish()`` and the exporters' flush on stop, :class:`~.messages.WorkerFailed` on a start-up
  error,
- :class:`~.messages.FactsSeen` with the key fabric (``WorkerSpec.share_facts``): the handshake facts of
  the connections whose handshakes it saw and the TLS 1.2 resumption states it learnt, a batch per timer
  tick, for the parent to publish,
- :class:`~.messages.CallBatch` only when the exporters are the parent's (``WorkerSpec.config`` is None:
  exporters given to :class:`~.supervisor.Daemon`), through a bounded outbox (pickled at once into a fixed
  ring of ``outbox_bytes``, written to the pipe by a thread; full: the calls are dropped and counted,
  capture never waits; in lossless mode, used for capture files, it waits instead).

Secrets, other sensors' handshake facts and commands reach it on its control queue
(:class:`~.messages.KeysGiven`, :class:`~.messages.FactsGiven`, :class:`~.messages.Reopen`,
:class:`~.messages.StopRequest`); every message is one of the classes of :mod:`.messages`. Results travel
over a pipe whose only writer is the worker (a killed worker cannot leave a lock held for anyone else; the
JSON lines file's ``flock`` dies with it too).
"""

from __future__ import annotations

import collections
import mmap
import os
import pickle
import queue
import select
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from typing import TYPE_CHECKING, Any

from ...calls import ApiCall, HttpIssue
from ...frames.addresses import endpoint
from ...tls.events import DECRYPTED, OUTCOMES, HandshakeFacts, ResumptionState, TlsOutcome
from ..logs import get_logger
from .messages import (
    CallBatch,
    CaptureRead,
    FactsGiven,
    FactsSeen,
    InventoryPart,
    KeysGiven,
    Reopen,
    StopRequest,
    WorkerDone,
    WorkerFailed,
    WorkerReady,
    WorkerStats,
    facts_of,
    facts_rows,
    resumption_of,
    resumption_rows,
)

if TYPE_CHECKING:
    from ..inventory.live import InventoryFeed

log = get_logger("worker")

# Counters that are gauges (not summed over dead incarnations of a worker).
GAUGES = frozenset({"held_bytes", "flows_open", "tcp_buffered", "rss", "keys_stored", "outbox", "outbox_bytes", "pid",
                    "last_packet_wall", "fragments_pending", "wall", "alive", "position", "queue_depth",
                    "spool_bytes"})

FILE_BATCH = 1024  # API calls of a capture file written (their position, inventory part reported) together
# Live: the calls of the blocks read go to the exporters together, at most this long after they were read (each
# flush of the shared JSON lines file is a lock, two stats and a write), or at FILE_BATCH calls
LIVE_FLUSH = 0.05
# ... and, with the worker's own exporters, every LIVE_BATCH calls as the frames are fed: serialised while the
# exchange is still in the CPU's cache (a whole read's calls at once cost 10-15 % more CPU), written out by the
# exporter's own batching, the forced write left to the LIVE_FLUSH timer
LIVE_BATCH = 32
CONTROL_EVERY = 0.2  # live: the control queue is also looked at this often when its pipe did not poll readable

# Key lag histogram buckets (seconds): an F5 sends a session's secrets right after its handshake (ms);
# a relay or a High Speed Logging pool may add seconds; beyond engine.key_wait (30 s) nothing is held.
KEY_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _observe(hist: dict[str, float], value: float) -> None:
    """Count ``value`` in a histogram kept as plain numbers (so worker statistics add up)."""
    for b in KEY_LAG_BUCKETS:
        if value <= b:
            key = str(b)
            hist[key] = hist.get(key, 0) + 1
            break
    hist["sum"] = hist.get("sum", 0.0) + value
    hist["count"] = hist.get("count", 0) + 1


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs (picklable: crosses the process boundary)."""

    index: int
    mode: str  # "live" or "pcap"
    engine: dict[str, Any]
    interfaces: tuple[tuple[str, int | None], ...] = ()  # (name, fanout group id)
    bpf: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    snaplen: int = 65535
    buffer_bytes: int = 64 << 20
    ring_bytes: int = 128 << 20  # TPACKET_V3 ring per socket (0: one packet per recv)
    batch: int = 256
    stats_interval: float = 1.0
    expire_interval: float = 1.0
    lossless: bool = False
    outbox_size: int = 256  # messages (each a batch of calls)
    outbox_bytes: int = 16 << 20  # bytes of pickled messages waiting to be sent (the outbox's ring)
    key_ttl: float | None = None
    # connection ids are unique over workers: (flow id + incarnation << 32) * workers + index
    workers: int = 1
    incarnation: int = 0
    log_level: str = "info"
    log_format: str = "text"
    log_rate: float = 10.0
    pcap: str | None = None  # the capture file (mode "pcap"): the worker reads its flow share of it
    pcap_speed: float = 0.0
    resume: int = 0  # file position up to which a predecessor exported: read again silently
    config: Any = None  # the Config its exporters are built from; None: calls go to the parent
    drain_timeout: float = 30.0
    share_facts: bool = False  # the key fabric is on: send the parent the handshake facts seen (FactsSeen)


class MessageBuffer:
    """A write-only file over one bytearray that is reused for every message.

    ``pickle.dumps`` builds each message in a new buffer that it grows step by step (4 KiB, 6, 9, 13.5,
    ... x 1.5) and then shrinks; with messages of varying size, the steps freed by one message are too
    small for the next one's larger steps, and glibc keeps them (see docs/benchmarks.md, "Soak"). A
    pickler writing here instead leaves one buffer that grows to the largest message it has held; a
    message larger than *limit* is sent and the buffer then starts again at *size*.
    """

    def __init__(self, size: int = 256 << 10, limit: int = 1 << 20) -> None:
        self.size = size
        self.limit = limit
        self.buf = bytearray(size)
        self.n = 0

    def write(self, data: Any) -> int:
        k = len(data)
        end = self.n + k
        if end > len(self.buf):
            grown = bytearray(max(end, 2 * len(self.buf)))
            grown[:self.n] = memoryview(self.buf)[:self.n]
            self.buf = grown
        self.buf[self.n:end] = data  # same length: a copy, no reallocation
        self.n = end
        return k

    def view(self) -> memoryview:
        return memoryview(self.buf)[:self.n]

    def reset(self) -> bool:
        """Empty it for the next message; True when it was larger than its limit (and is now small)."""
        self.n = 0
        if len(self.buf) > self.limit:
            self.buf = bytearray(self.size)
            return True
        return False


class Outbox:
    """Messages to the parent: pickled by the caller into a fixed ring, sent from there by a thread.

    The worker's loop pickles each message at once (one reused pickler and :class:`MessageBuffer`)
    and copies it into a ring of *max_bytes* (an anonymous mapping made once); the thread writes it
    to the pipe, so a slow parent never blocks capture. What waits is bytes in the ring, not the
    message's Python objects: the outbox is bounded exactly by *max_bytes* and *size* messages, and a
    backlog does not leave the worker's object allocator at a higher-water mark. A message larger
    than the ring is sent on its own when the outbox is idle. After a backlog, the ring's pages above
    *keep* bytes are given back to the system. ``put`` is for one thread (the worker's loop).
    """

    def __init__(self, conn: Connection, size: int, max_bytes: int = 16 << 20, keep: int = 1 << 20) -> None:
        self.conn = conn
        self.size = size
        self.capacity = max_bytes
        self.keep = keep
        self.ring = mmap.mmap(-1, max_bytes)
        self.pending_bytes = 0  # bytes of the queued messages and of the one being sent
        self.broken = False
        self.sent = 0
        self.failed = 0  # messages that did not pickle (a bug; logged)
        self.buffer = MessageBuffer()
        self._pickler = self._new_pickler()
        self._q: collections.deque[tuple[int, int, bytes | None]] = collections.deque()  # (offset, n, big)
        self._head = 0  # where the next message goes in the ring
        self._tail = 0  # start of the oldest message not yet sent
        self._touched = 0  # ring bytes written since the last release
        self._sending = False
        self._closing = False
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self.thread.start()

    def qsize(self) -> int:
        return len(self._q)

    def _new_pickler(self) -> pickle.Pickler:
        return pickle.Pickler(self.buffer, protocol=pickle.HIGHEST_PROTOCOL)

    def _reserve(self, n: int) -> int:
        """Offset of *n* free bytes in the ring, -1 if the message goes on its own, -2 if full."""
        if self.broken:
            return -2
        idle = not self._q and not self._sending
        if idle:
            self._head = self._tail = 0
        elif len(self._q) >= self.size:
            return -2
        cap, head, tail = self.capacity, self._head, self._tail
        if n > cap:
            return -1 if idle else -2
        if idle or head > tail:  # used: [tail, head)
            if head + n <= cap:
                return head
            return 0 if n <= tail else -2  # wrap around (the end stays unused until then)
        return head if head + n <= tail else -2  # used: [tail, cap) and [0, head); head == tail: full

    def put(self, msg: Any, *, block: bool = False, timeout: float | None = None) -> bool:
        """Queue *msg*; False when the outbox is full (after waiting *timeout* if *block*) or broken."""
        if self.broken:
            return False
        buf = self.buffer
        try:
            self._pickler.dump(msg)
        except Exception:  # a value that does not pickle: a bug; lose this message, not the worker
            log.exception("outbox: message %s not sent", type(msg).__name__)
            self.failed += 1
            self._pickler = self._new_pickler()  # it may hold half a message
            buf.reset()
            return True
        finally:
            self._pickler.clear_memo()  # the memo holds the message's objects; its table keeps its size
        n = buf.n
        try:
            with self._cond:
                off = self._reserve(n)
                if off == -2 and block:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while off == -2 and not self.broken:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            break
                        self._cond.wait(left)
                        off = self._reserve(n)
                if off == -2:
                    return False
                if off == -1:
                    self._q.append((0, n, bytes(buf.view())))
                else:
                    self.ring[off:off + n] = buf.view()
                    self._head = off + n
                    self._touched = max(self._touched, off + n)
                    self._q.append((off, n, None))
                self.pending_bytes += n
                self._cond.notify_all()
                return True
        finally:
            if buf.reset():
                self._pickler = self._new_pickler()  # its frame buffer grew with the large message too

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                cond.wait_for(lambda: bool(self._q) or self._closing)
                if not self._q:
                    return
                off, n, big = self._q.popleft()
                self._sending = True
                if big is None:
                    self._tail = off
            view = memoryview(big) if big is not None else memoryview(self.ring)[off:off + n]
            try:
                self.conn.send_bytes(view)
                self.sent += 1
            except OSError:
                with cond:
                    self.broken = True  # the parent is gone
                    self._sending = False
                    cond.notify_all()
                return
            finally:
                view.release()
                del big
            with cond:
                self._sending = False
                self.pending_bytes -= n
                if not self._q:
                    self._head = self._tail = 0
                    if self._touched > self.keep:  # after a backlog: give the ring's pages back
                        start = self.keep - self.keep % mmap.PAGESIZE
                        self.ring.madvise(mmap.MADV_DONTNEED, start, self.capacity - start)
                        self._touched = start
                elif self._q[0][2] is None:
                    self._tail = self._q[0][0]
                cond.notify_all()

    def wait_sent(self, timeout: float) -> bool:
        """Wait until everything queued has been written to the pipe; False after *timeout*."""
        with self._cond:
            return self._cond.wait_for(lambda: self.broken or (not self._q and not self._sending), timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, then stop the thread (within *timeout*)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.thread.join(timeout)


# The engine's events Worker.handle does something with (a list of none of them, mostly decrypted records, is
# not handed to it)
HANDLED: tuple[type, ...] = (ApiCall, TlsOutcome, HttpIssue, HandshakeFacts, ResumptionState)


class Worker:
    """The state and loop of one worker process."""

    def __init__(self, spec: WorkerSpec, outbox: Outbox, exporters: list[Any] | None = None,
                 inventory: InventoryFeed | None = None) -> None:
        self.spec = spec
        self.out = outbox
        self.exporters: list[Any] = list(exporters or ())  # its own; none: calls go to the parent
        self.inventory = inventory  # its share of the live inventory: parts go to the parent, calls do not
        self._inventory_unsent: Any = None  # a part the full outbox did not take
        self._inventory_direct = inventory is not None and not self._record_hook(inventory)
        self.calls_to_parent = not self.exporters
        self._early = bool(self.exporters)  # live: calls to the exporters every LIVE_BATCH (see there)
        # the calls (renumbered, counted, queued: compiled, every call passes there) and the counts; here, not
        # at the top: the parent imports this module, not the engine
        from .callsink import CallSink, feed_frames

        self._feed_frames = feed_frames
        self.sink = CallSink(spec.index, spec.workers, (spec.incarnation << 32) if spec.mode == "live" else 0)
        self.export_errors = 0
        self.position = 0  # capture file items handled (see FlowShare.position)
        self.deadline = 0.0  # of the stop (time.monotonic()); 0: none given
        self.share: Any = None  # the capture file's FlowShare (mode "pcap")
        from ...pipeline import Engine, EngineConfig  # here: the parent imports this module, not the engine

        # with the key fabric, the engine emits resumption states and takes the other sensors' ones
        self.engine = Engine(EngineConfig(**spec.engine, share_resumption=spec.share_facts))
        if spec.key_ttl:
            self.engine.keys.ttl = spec.key_ttl
        self.stop = False
        self.eof = spec.mode != "pcap"
        self.facts: list[HandshakeFacts] = []  # seen since the last FactsSeen (share_facts)
        self.resumption: list[ResumptionState] = []  # learnt since the last FactsSeen (share_facts)
        self.packets = 0
        self.bytes = 0
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.held: dict[str, dict[str, int]] = {}  # TLS version -> how the wait for keys ended -> sessions
        self.key_lag: dict[str, dict[str, float]] = {}  # TLS version -> histogram buckets, sum, count
        self.http_issues = 0
        self.result_drops = 0
        self.secrets_received = 0
        self.last_ts = 0.0  # latest packet time
        self.last_wall = time.time()  # wall clock when it arrived
        self.last_packet_wall = 0.0
        self.sockets: list[Any] = []
        self._next_stats = 0.0
        self._ppid = os.getppid()
        self._next_expire = time.monotonic() + spec.expire_interval
        self._next_flush = 0.0  # live: when the calls read since the last flush go to the exporters

    # ------------------------------------------------------------------ events
    @property
    def calls(self) -> list[ApiCall]:
        """The calls queued since the last flush."""
        return self.sink.calls

    @property
    def exported(self) -> int:
        """API calls handed to the exporters (or the parent), including a catch-up's."""
        return self.sink.exported

    @property
    def exchanges(self) -> dict[str, int]:
        return self.sink.exchanges

    @property
    def silent(self) -> bool:
        """Catching up on a capture file: count, but export and log nothing."""
        return self.sink.silent

    @silent.setter
    def silent(self, value: bool) -> None:
        self.sink.silent = value

    def handle(self, events: list[Any]) -> None:
        rest = self.sink.take(events)  # the calls; what is left comes once per connection at most
        if rest is None:
            return
        for ev in rest:
            cls = type(ev)
            if cls is TlsOutcome:
                self.outcomes[ev.outcome] = self.outcomes.get(ev.outcome, 0) + 1
                version = ev.version or "unknown"
                if ev.held is not None:
                    by = self.held.setdefault(version, {})
                    by[ev.held] = by.get(ev.held, 0) + 1
                if ev.key_lag is not None:
                    _observe(self.key_lag.setdefault(version, {}), ev.key_lag)
                if ev.outcome != DECRYPTED and not self.silent:
                    # Rate-limited per outcome by the log filter; the reason never holds secrets.
                    f, c = ev.flow, ev.client_dir
                    log.info("TLS connection %s -> %s not decrypted: %s (%s)", endpoint(f.addr[c], f.port[c]),
                             endpoint(f.addr[c ^ 1], f.port[c ^ 1]), ev.outcome, ev.reason,
                             extra={"outcome": ev.outcome})
            elif cls is HttpIssue:
                self.http_issues += 1
            elif cls is HandshakeFacts and self.spec.share_facts and not self.silent:
                self.facts.append(ev)
            elif cls is ResumptionState and not self.silent:  # (emitted only with share_facts)
                self.resumption.append(ev)

    def flush_facts(self) -> None:
        """The facts seen to the parent (the key fabric); an outbox that stays full loses them."""
        if self.facts or self.resumption:
            batch, self.facts = self.facts, []
            states, self.resumption = self.resumption, []
            self.out.put(FactsSeen(self.spec.index, facts_rows(batch), resumption_rows(states)), block=True,
                         timeout=0.2)

    def _record_hook(self, inventory: InventoryFeed) -> bool:
        """Let the JSON lines exporter hand the inventory each record it builds (one record per call, not
        two); False when there is none that can (the inventory builds its own)."""
        from ..export.sharedjsonl import SharedJsonlExporter

        for ex in self.exporters:
            if type(ex) is SharedJsonlExporter and not ex.per_message:
                ex.on_record = inventory.add_record
                return True
        return False

    def flush_calls(self, flush: bool = True) -> None:
        """The calls queued to the inventory and the exporters (*flush*: and written out), or to the parent."""
        if not self.calls:
            return
        batch = self.sink.drain()
        inv = self.inventory
        if self._inventory_direct and inv is not None:
            try:
                for c in batch:
                    inv.add(c)
            except Exception as exc:  # a bug: the inventory misses these calls, the exports go on
                self.export_errors += 1
                log.error("live inventory failed: %s", exc)
        if self.exporters:
            for ex in self.exporters:
                try:
                    export = ex.export
                    for c in batch:
                        export(c)
                    if flush:
                        ex.flush(0.0)  # written out before the position that covers them is reported
                except BrokenPipeError:
                    raise
                except Exception as exc:
                    self.export_errors += 1
                    log.error("exporter %s failed: %s", type(ex).__name__, exc)
            if not self.calls_to_parent:
                return
        msg = CallBatch(self.spec.index, batch)
        if self.spec.lossless:
            while not self.out.put(msg, block=True, timeout=1.0):
                if self.out.broken:
                    return
        elif not self.out.put(msg):
            self.result_drops += len(batch)

    def frames(self, linktype: int, frames: list[bytes], ts: float) -> None:
        """Live frames read together at wall-clock time *ts*."""
        feed = self.engine.feed_frame
        handle = self.handle
        sink, early = self.sink, self._early
        size = 0
        for data in frames:
            size += len(data)
            ev = feed(linktype, data, ts)
            if ev:
                handle(ev)
                if early and len(sink.calls) >= LIVE_BATCH:
                    self.flush_calls(flush=False)
        self._count(len(frames), size, ts)

    def file_frames(self, frames: list[tuple[float, int, bytes]]) -> None:
        """Frames with their own capture times: (ts, linktype, data) (the capture ring stamps each)."""
        feed = self.engine.feed_frame
        handle = self.handle
        size = 0
        for fts, lt, data in frames:
            size += len(data)
            ev = feed(lt, data, fts)
            if ev:
                handle(ev)
        if frames:
            self._count(len(frames), size, frames[-1][0])

    def live_frames(self, linktype: int, frames: list[bytes], stamps: list[float]) -> None:
        """The frames of one socket read with their capture times (:attr:`.capture.LiveSocket.stamps`;
        the read's last time for all of them if the two do not pair up)."""
        if len(stamps) != len(frames):
            self.frames(linktype, frames, stamps[-1] if stamps else time.time())
            return
        size = self._feed_frames(self.engine, self.handle, self.sink, self._export_some if self._early else None,
                           LIVE_BATCH, linktype, frames, stamps)
        if frames:
            self._count(len(frames), size, stamps[-1])

    def _export_some(self) -> None:
        self.flush_calls(flush=False)

    def _count(self, n: int, size: int, ts: float) -> None:
        if n:
            self.packets += n
            self.bytes += size
            if ts > self.last_ts:
                self.last_ts = ts
            self.last_wall = self.last_packet_wall = time.time()

    def now(self) -> float:
        """Packet time now: the latest packet time, advanced by the wall clock since it arrived."""
        if self.share is not None and self.share.last_ts > self.last_ts:
            self.last_ts = self.share.last_ts
        if self.last_ts == 0.0:
            return time.time() if self.spec.mode == "live" else 0.0
        return self.last_ts + max(0.0, time.time() - self.last_wall)

    def secrets(self, secrets: list[Any], ts: float | None = None, *, pinned: bool = False) -> None:
        self.secrets_received += len(secrets)
        self.handle(self.engine.add_secrets(secrets, self.now() if ts is None else ts, pinned=pinned))

    def control(self, msg: Any) -> None:
        if type(msg) is KeysGiven:
            self.secrets(msg.secrets)
        elif type(msg) is FactsGiven:
            self.engine.add_facts(facts_of(msg.facts))
            if msg.resumption:
                self.handle(self.engine.add_resumption(resumption_of(msg.resumption), self.now()))
        elif type(msg) is StopRequest:
            self.stop = True
            self.deadline = msg.deadline
        elif type(msg) is Reopen:
            for ex in self.exporters:
                try:
                    ex.reopen()
                except Exception as exc:
                    log.error("exporter %s: reopen failed: %s", type(ex).__name__, exc)

    # ------------------------------------------------------------------ timers
    def timers(self, force_stats: bool = False, mono: float | None = None) -> None:
        if mono is None:
            mono = time.monotonic()
        if mono >= self._next_expire:
            self._next_expire = mono + self.spec.expire_interval
            now = self.now()
            if now:
                self.handle(self.engine.expire(now))
                if self.engine.keys.ttl:
                    self.engine.keys.expire(now)
        due = force_stats or mono >= self._next_stats
        if self.facts:
            self.flush_facts()
        share = self.share
        if share is None:  # live: calls out every LIVE_FLUSH s (or FILE_BATCH calls), stats every stats_interval
            if self.calls and (due or mono >= self._next_flush or len(self.calls) >= FILE_BATCH):
                self._next_flush = mono + LIVE_FLUSH
                self.flush_calls()
        elif self.silent:
            return  # catching up: a predecessor exported and reported all of this already
        else:  # a capture file: calls in batches, each followed by the position they were exported up to
            self.position = share.position
            if self.calls and (due or len(self.calls) >= FILE_BATCH):
                self.flush_calls()
                due = True
        if due:
            self._next_stats = mono + self.spec.stats_interval
            if self.out.broken or os.getppid() != self._ppid:  # the parent is gone: stop, do not linger
                self.stop = self.eof = True
            self.send_inventory(block=share is not None)
            self.out.put(WorkerStats(self.spec.index, self.stats()), block=share is not None, timeout=1.0)
            if share is not None and self.exporters:
                # the position is with the parent before more calls are written: a kill in between
                # repeats at most the calls written since it
                self.out.wait_sent(1.0)

    def send_inventory(self, block: bool) -> None:
        """The inventory part folded since the last one, just before the stats (with a capture file, the
        parent takes it in with the position those stats report: a kill in between loses the part and
        the calls are folded again by the successor)."""
        if self.inventory is None:
            return
        part = self.inventory.take()
        unsent = self._inventory_unsent
        if unsent is not None:  # the outbox was full last time: that part goes with this one
            if part is not None:
                unsent.merge(part)
            part = unsent
        if part is None:
            return
        sent = self.out.put(InventoryPart(self.spec.index, part), block=block, timeout=1.0)
        self._inventory_unsent = None if sent or self.out.broken else part

    def stats(self) -> dict[str, Any]:
        e = self.engine
        if self.share is not None:  # a capture file: the share counts its frames
            self.packets, self.bytes = self.share.packets, self.share.bytes
            self.last_ts = max(self.last_ts, self.share.last_ts)
        kp = kd = 0
        for s in self.sockets:
            p, d = s.read_stats()
            kp += p
            kd += d
        return {
            "pid": os.getpid(), "wall": time.time(), "packets": self.packets, "bytes": self.bytes,
            "kernel_packets": kp, "kernel_drops": kd, "result_drops": self.result_drops,
            "engine": dict(e.stats), "tcp": e.tcp.stats, "frames": dict(e.frames.counters),
            "keys": dict(e.keys.stats), "keys_stored": len(e.keys), "outcomes": dict(self.outcomes),
            "held": {v: dict(c) for v, c in self.held.items()},
            "key_lag": {v: dict(h) for v, h in self.key_lag.items()}, "exchanges": dict(self.exchanges),
            "http_issues": self.http_issues,
            "secrets_received": self.secrets_received, "held_bytes": e.tls.held_bytes,
            "flows_open": e.tcp.open_flows, "tcp_buffered": e.tcp.buffered_bytes,
            "fragments_pending": e.frames.fragments_pending, "rss": rss_bytes(),
            "last_packet_wall": self.last_packet_wall, "outbox": self.out.qsize(),
            "outbox_bytes": self.out.pending_bytes, "exported": self.exported,
            "export_errors": self.export_errors, "position": self.position,
            "exporters": {_exporter_name(ex, i): dict(ex.stats) for i, ex in enumerate(self.exporters)},
            "capture_mode": [s.mode for s in self.sockets],
        }

    def finish(self) -> None:
        """Flush the engine and the exporters (by the stop's deadline), send the last stats, done."""
        if self.silent:  # stopped while catching up: the predecessor's records and last report stand
            for ex in self.exporters:
                close_within(ex, 0.0)
            self.out.put(WorkerDone(self.spec.index), block=True, timeout=5.0)
            return
        self.handle(self.engine.finish())
        self.flush_calls()
        self.flush_facts()
        deadline = self.deadline or time.monotonic() + self.spec.drain_timeout
        for ex in self.exporters:
            close_within(ex, deadline - time.monotonic() - 0.5)  # the rest: stats, done, exit
        self.send_inventory(block=True)
        self.out.put(WorkerStats(self.spec.index, self.stats()), block=True, timeout=5.0)
        self.out.put(WorkerDone(self.spec.index), block=True, timeout=5.0)

    # ------------------------------------------------------------------ loops
    def run_live(self, ctl: Any) -> None:
        from .capture import LiveSocket, read_what_is_left

        spec = self.spec
        for name, group in spec.interfaces:
            self.sockets.append(LiveSocket(name, program=spec.bpf.get(name), fanout_group=group,
                                           buffer_bytes=spec.buffer_bytes, snaplen=spec.snaplen,
                                           ring_bytes=spec.ring_bytes))
        ctl_fd = _reader_fd(ctl)
        poller = select.poll()
        by_fd = {}
        for s in self.sockets:
            poller.register(s.fileno(), select.POLLIN)
            by_fd[s.fileno()] = s
        if ctl_fd is not None:
            poller.register(ctl_fd, select.POLLIN)
        self.out.put(WorkerReady(spec.index, os.getpid()), block=True, timeout=5.0)
        batch: list[bytes] = []
        limit = spec.batch
        next_drain = 0.0
        threshold = _collect_less()
        try:
            while not self.stop:
                ready = poller.poll(200 if ctl_fd is not None else 20)
                ctl_ready = ctl_fd is None or not ready
                for fd, _ev in ready:
                    s = by_fd.get(fd)
                    if s is None:
                        ctl_ready = True
                        continue
                    batch.clear()
                    s.read_batch(limit, batch)
                    if batch:
                        self.live_frames(s.linktype, batch, s.stamps)  # per-packet capture times
                # the control queue when its pipe polls readable (and every CONTROL_EVERY s), not per block:
                # a multiprocessing queue's get_nowait takes a lock and polls the pipe
                mono = time.monotonic()
                if ctl_ready or mono >= next_drain:
                    next_drain = mono + CONTROL_EVERY
                    _drain(ctl, self.control)
                self.timers(mono=mono)
        finally:
            _collect_as_before(threshold)
        if not self.eof:  # stopping, not orphaned: what the rings hold was captured; read it first, in up to
            # half the time the stop left (the rest: finish and flush); anything later is logged as unread
            left = (self.deadline or time.monotonic() + spec.drain_timeout) - time.monotonic()
            read_what_is_left(self.sockets, limit, time.monotonic() + max(0.0, left) / 2,
                              lambda s, frames: self.live_frames(s.linktype, frames, s.stamps))
        for s in self.sockets:
            s.read_stats()

    def run_pcap(self, ctl: Any) -> None:
        """This worker's flow share of the capture file, then wait for the stop (``pcap_linger``)."""
        from ..errors import CaptureFileError
        from ..offline.loop import pump
        from ..offline.pcapfile import CaptureReader
        from .pcapfeed import FlowShare

        spec = self.spec
        ctl_reader = _reader(ctl)

        def wait(seconds: float) -> None:  # pacing: sleep, but keep to the control queue and the timers
            end = time.monotonic() + seconds
            while not self.stop and (left := end - time.monotonic()) > 0:
                if ctl_reader is not None:
                    wait_for([ctl_reader], timeout=min(left, 0.2))
                else:
                    time.sleep(min(left, 0.05))
                _drain(ctl, self.control)
                self.timers()

        def caught_up() -> None:
            self.silent = False

        share = FlowShare(spec.index, spec.workers, self.engine.feed_frame, self.handle, self.secrets,
                          speed=spec.pcap_speed, wait=wait, resume=spec.resume, on_caught_up=caught_up,
                          wanted=HANDLED)
        self.share = share
        self.silent = spec.resume > 0

        def tick(_frames: int) -> bool:
            self.last_wall = self.last_packet_wall = time.time()
            _drain(ctl, self.control)
            self.timers()
            return self.stop

        self.out.put(WorkerReady(spec.index, os.getpid()), block=True, timeout=5.0)
        assert spec.pcap is not None
        try:
            with CaptureReader(spec.pcap) as reader:
                # every worker reads the file: one (the first) reports its problems
                warn = ((lambda note: log.warning("capture file: %s", note)) if spec.index == 0
                        else (lambda note: None))
                threshold = _collect_less()
                try:
                    pump(reader, share, warn, every=128, tick=tick)  # control queue and timers
                finally:
                    _collect_as_before(threshold)
        except CaptureFileError as exc:
            log.error("capture file: %s", exc)
        self.silent = self.stop and share.catching_up  # read to the end: caught up, whatever was last
        if not self.stop:
            self.timers(force_stats=True)
            self.out.put(CaptureRead(spec.index, share.frames), block=True, timeout=5.0)
        readers = [ctl_reader] if ctl_reader is not None else []
        while not self.stop:
            if readers:
                wait_for(readers, timeout=0.2)
            else:
                time.sleep(0.05)
            _drain(ctl, self.control)
            self.timers()

# Allocations between collections of the youngest generation while frames are read (default 700), as in replay
GC_YOUNG = 50_000


def _collect_less() -> tuple[int, int, int]:
    """Start-up's objects (modules, classes, tables, the preloaded secrets) frozen out of the collector's
    scans, and the youngest generation collected less often, while the worker reads frames: events and
    records are freed by reference counting, so frequent scans find next to nothing (as replay does).
    Returns the thresholds to restore."""
    import gc

    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, threshold[1], threshold[2])
    return threshold


def _collect_as_before(threshold: tuple[int, int, int]) -> None:
    import gc

    gc.set_threshold(*threshold)
    gc.unfreeze()


def _exporter_name(ex: Any, i: int) -> str:
    return f"{type(ex).__name__.lower()}{i if i else ''}"


def close_within(ex: Any, seconds: float) -> None:
    """Flush *ex* for at most *seconds*, then close it (an OTLP exporter keeps the rest in its spool)."""
    try:
        if not ex.flush(max(0.0, seconds)):
            log.warning("exporter %s: not everything was delivered before the drain timeout",
                        type(ex).__name__)
        cfg = getattr(ex, "config", None)
        if cfg is not None and hasattr(cfg, "flush_timeout"):
            cfg.flush_timeout = 0.0  # close() flushes again: the time is up
        ex.close()
    except BrokenPipeError:
        raise
    except Exception as exc:
        log.error("exporter %s: close failed: %s", type(ex).__name__, exc)


def _reader(q: Any) -> Connection | None:
    r = getattr(q, "_reader", None)  # multiprocessing.Queue's pipe end: lets us wait on several queues
    return r if isinstance(r, Connection) else None


def _reader_fd(q: Any) -> int | None:
    r = _reader(q)
    return r.fileno() if r is not None else None


def _drain(ctl: Any, handle: Any) -> None:
    while True:
        try:
            msg = ctl.get_nowait()
        except queue.Empty:
            return
        except (EOFError, OSError):
            handle(StopRequest())
            return
        handle(msg)


# Blocked by the supervisor while it starts a worker; the worker unblocks them once its handlers are in.
WORKER_START_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def worker_main(spec: WorkerSpec, ctl: Any, results: Connection, preload: list[Any] | None = None) -> None:
    """Entry point of a worker process."""
    worker: Worker | None = None
    term = False

    def on_term(_signo: int, _frame: Any) -> None:
        nonlocal term
        term = True
        if worker is not None:
            worker.stop = True
            worker.eof = True

    # Handlers first, then the signals the supervisor blocked for the start (pending ones arrive now)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches the whole group
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_START_SIGNALS)
    from ..logs import get_logger, setup_logging

    setup_logging(spec.log_level, spec.log_format, spec.log_rate)
    log = get_logger(f"worker{spec.index}")
    outbox = Outbox(results, spec.outbox_size, spec.outbox_bytes)
    try:
        exporters: list[Any] = []
        inventory: InventoryFeed | None = None
        if spec.config is not None:
            from ..inventory.live import inventory_feed
            from .outputs import build_worker_exporters

            exporters = build_worker_exporters(spec.config, spec.index, spec.workers)
            routes = spec.engine.get("routes")
            inventory = inventory_feed(spec.config, routes if isinstance(routes, dict) else None)
        worker = Worker(spec, outbox, exporters, inventory)
        if term:  # SIGTERM before the worker existed: stop as soon as it runs
            worker.stop = worker.eof = True
        if preload:
            # A capture-file run keeps its key log secrets whatever engine.key_ttl says (as decrypt and
            # replay do); a live sensor ages them like every received secret.
            worker.secrets(preload, 0.0 if spec.mode == "pcap" else None, pinned=spec.mode == "pcap")
        if spec.mode == "live":
            worker.run_live(ctl)
        else:
            worker.run_pcap(ctl)
        worker.finish()
    except Exception as exc:
        from ..errors import InputError

        if isinstance(exc, InputError):  # a start-up problem the operator must fix: the parent stops
            outbox.put(WorkerFailed(spec.index, str(exc)), block=True, timeout=5.0)
        else:  # a bug: the parent restarts this worker and counts the crash
            log.exception("worker %d failed", spec.index)
            outbox.close()
            os._exit(70)
    finally:
        for s in (worker.sockets if worker is not None else ()):
            s.close()
        outbox.close()
        results.close()
