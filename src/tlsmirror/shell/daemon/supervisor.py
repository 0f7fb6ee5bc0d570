"""`tlsmirror run`: capture -> worker processes (one Engine each) -> exporters; key listener -> workers.

The parent process owns what is shared: the key listener (an asyncio loop in a thread), the metrics
server (a thread, aggregating the workers' reports) and the supervision of the workers (restarted when
they die, the crash counted). Frames and API calls never pass through it: each worker captures (live) or
reads its flow share of the capture file (``--pcap``) and owns its exporters. Only exporters given to
:class:`Daemon` (tests, embedding) are the parent's: then calls come to it in batches and an export thread
fed by a bounded queue writes them. Signals: SIGTERM/SIGINT drain (workers run ``engine.finish()``,
exporters flush, all within ``output.drain_timeout``; undelivered spans stay in the OTLP spool),
SIGHUP reopens output files and reloads the key listener's certificate.

A killed worker is restarted; with a capture file the new one reads its share again from the start,
silently up to the file position its predecessor last reported (after writing the calls up to it), so
records and counts come out as if it had not died.

One module on purpose (about 600 lines): start, supervision, restarts, draining and signals share the
worker handles; the --pcap share (:mod:`.pcapfeed`), exporters (:mod:`.outputs`), messages
(:mod:`.messages`) and workers (:mod:`.workers`) have their own modules.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from ...keys.events import Secret
from ...tls.events import HandshakeFacts, ResumptionState
from ..config import Config, engine_kwargs
from ..errors import InputError
from ..export import Exporter
from ..inventory.live import LiveInventory
from ..inventory.seeds import engine_routes, live_inventory
from ..logs import get_logger
from .messages import (
    CallBatch,
    CaptureRead,
    FactsGiven,
    FactsSeen,
    FromWorker,
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
from .metrics import MetricsServer, MetricsState, make_registry
from .outputs import jsonl_path, stats_of
from .workers import WORKER_START_SIGNALS, WorkerSpec, close_within, worker_main

if TYPE_CHECKING:
    import asyncio

log = get_logger("daemon")

RESTART_DELAY = 0.5  # seconds before a crashed worker is started again
CRASH_LOOP = 5  # consecutive crashes within CRASH_WINDOW seconds of start: give up
CRASH_WINDOW = 3.0


@dataclasses.dataclass(eq=False)
class _Handle:
    index: int
    proc: Any
    ctl: Any
    conn: Connection | None
    started: float
    read: bool = False  # the capture file read to its end
    done: bool = False
    ready: bool = False
    dead: bool = False
    parts: list[Any] = dataclasses.field(default_factory=list)  # --pcap: inventory parts before their stats


class Daemon:
    """One sensor run. ``run()`` blocks until stopped (signal, :meth:`request_stop`, end of --pcap)."""

    def __init__(self, cfg: Config, *, exporters: list[Exporter] | None = None,
                 preload: list[Secret] | None = None) -> None:
        self.cfg = cfg
        c = cfg.capture
        self.mode = "pcap" if c.pcap else "live"
        self.nworkers = c.workers or os.cpu_count() or 1
        self.preload: list[Secret] = list(preload or ())
        self._exporters_given = exporters
        self.worker_exporters = exporters is None  # each worker builds its own from the configuration
        self.exporters: list[Exporter] = []  # the parent's (given ones only)
        self.inventory: LiveInventory | None = None  # /inventory: the workers' parts folded (or an exporter)
        self.state = MetricsState(self.nworkers, self.mode)
        self.state.worker_exporters = self.worker_exporters
        self._positions: dict[int, int] = {}  # --pcap: the file position each worker last reported
        self.handles: list[_Handle] = []
        self._handles_lock = threading.Lock()
        self._ctx = mp.get_context("spawn")
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._stopping = False
        self._deadline = 0.0
        self._fatal: str | None = None
        self._crash_streak: dict[int, int] = {}
        self._incarnation: dict[int, int] = {}
        self._pending_restart: dict[int, float] = {}
        self._replay: collections.deque[Secret] = collections.deque(maxlen=cfg.keys.replay or None)
        self._replay_lock = threading.Lock()
        # with the key fabric: the handshake facts seen and taken in, for a restarted worker's pickup
        self._facts: collections.deque[HandshakeFacts] = collections.deque(maxlen=cfg.keys.replay)
        self._resumption: collections.deque[ResumptionState] = collections.deque(maxlen=cfg.keys.replay)
        lossless = self.mode == "pcap"
        self.lossless = lossless
        self._export_q: queue.Queue[Any] = queue.Queue(maxsize=cfg.output.queue_size)
        self._export_thread: threading.Thread | None = None
        self._export_reopen = threading.Event()
        self._reader_done: float | None = None  # --pcap: when every worker had read the file
        self.metrics: MetricsServer | None = None
        self._ks_loop: asyncio.AbstractEventLoop | None = None
        self._ks_thread: threading.Thread | None = None
        self.keyserver: Any = None
        self.fabric: Any = None  # shell/fabric: secrets shared with other sensors (keys.fabric)
        self._bpf: dict[str, list[tuple[int, int, int, int]]] = {}
        self._groups: dict[str, int] = {}
        self._ready = threading.Event()
        self._started = False
        self._file_frames = 0

    # ------------------------------------------------------------------ public
    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port if self.metrics else None

    @property
    def key_port(self) -> int | None:
        return int(self.keyserver.bound_port) if self.keyserver is not None else None

    def request_stop(self) -> None:
        self._stop.set()

    def wait_ready(self, timeout: float) -> bool:
        """True once every worker has its capture attached and the key listener is open."""
        return self._ready.wait(timeout)

    def run(self) -> int:
        """Start everything, supervise until stopped, drain. Returns the exit code."""
        restore = self._install_signals()
        try:
            self._start()
            self._loop()
        finally:
            self._shutdown()
            restore()
        if self._fatal:
            raise InputError(self._fatal)
        return 0

    # ------------------------------------------------------------------ start
    def _start(self) -> None:
        cfg = self.cfg
        if self.mode == "live":
            self._prepare_live()
        else:
            from ..offline.pcapfile import CaptureReader

            assert cfg.capture.pcap is not None
            CaptureReader(cfg.capture.pcap).close()  # CaptureFileError: a user error, before any worker
        if self._exporters_given is not None:
            self.exporters = self._exporters_given
        else:
            self._check_output()
        out = jsonl_path(cfg) if self.worker_exporters else None
        self.state.output = os.path.abspath(out) if out is not None and out != "-" else out
        for i, ex in enumerate(self.exporters):
            self.state.exporters[f"{type(ex).__name__.lower()}{i if i else ''}"] = stats_of(ex)
        # /inventory, read by the metrics server: the workers' inventory parts folded, or (exporters given
        # to the parent) one more exporter
        inventory = self.inventory = live_inventory(cfg)
        if inventory is not None and not self.worker_exporters:
            self.exporters = [*self.exporters, inventory]
        self.state.export_queue_depth = self._export_q.qsize
        self.state.export_queue_size = cfg.output.queue_size
        self.state.counters["secrets_preloaded"] = len(self.preload)
        if cfg.metrics.enabled:
            self.metrics = MetricsServer(cfg.metrics.host, cfg.metrics.port, make_registry(self.state),
                                         lambda: self.state.health(cfg.metrics.no_packets_after),
                                         inventory.pages() if inventory is not None else None)
            self.metrics.start()
        if self.exporters:
            self._export_thread = threading.Thread(target=self._export_loop, name="export", daemon=True)
            self._export_thread.start()
        if self.mode == "pcap" and cfg.keys.fabric:
            # A capture file is read from its start at once: the fabric's secrets and facts first (bounded
            # by keys.fabric_timeout), so the workers begin with them instead of holding records for them
            self._join_fabric()
        for i in range(self.nworkers):
            self.handles.append(self._spawn(i))
        self._started = True
        log.info("started: %s, %d workers%s", self._describe_input(), self.nworkers,
                 f", metrics on {cfg.metrics.host}:{self.metrics_port}" if self.metrics else "")

    def _check_output(self) -> None:
        """The workers append to ``output.jsonl``: a path that cannot be written is an error now."""
        path = jsonl_path(self.cfg)
        if path is None or path == "-":
            return
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666))
        except OSError as exc:
            raise InputError(f"output.jsonl {path!r}: cannot open: {exc.strerror or exc}") from None

    def _become_ready(self) -> None:
        """Every worker has its capture attached: only now open the key listener (a secret that comes
        earlier is for a connection whose handshake nobody captured) and report ready."""
        if self.cfg.keys.fabric and self.fabric is None:  # the fabric's secrets first, then ready
            self._join_fabric()
        if self.cfg.keys.enabled and self.keyserver is None:
            self._start_keyserver()
        self.state.ready = True
        self._ready.set()
        log.info("ready: capture attached on every interface%s",
                 f", keys on port {self.key_port}" if self.keyserver is not None else "")

    def _join_fabric(self) -> None:
        from ..fabric.client import join_fabric

        self.fabric = join_fabric(self.cfg, lambda s: self._on_secrets(s, shared=True), self.preload,
                                  self._on_facts, self._on_resumption)
        self.state.fabric = self.fabric.snapshot

    def _describe_input(self) -> str:
        c = self.cfg.capture
        if self.mode == "pcap":
            return f"capture file {c.pcap} at speed {c.pcap_speed or 'max'}"
        return "interfaces " + ", ".join(c.interfaces)

    def _prepare_live(self) -> None:
        from .capture import check_capture_permission, compile_bpf, default_filter, interface_linktype

        cfg = self.cfg
        if not cfg.capture.interfaces:
            raise InputError("nothing to capture: give -i IFACE (capture.interfaces) or --pcap FILE")
        check_capture_permission(cfg.capture.interfaces)
        expr = cfg.capture.bpf or default_filter(*self._own_traffic(), own_addresses=self._own_addresses())
        base = cfg.capture.fanout_group or (os.getpid() & 0xFFFF)
        compiled: dict[str, list[tuple[int, int, int, int]]] = {}
        for j, name in enumerate(cfg.capture.interfaces):
            _lt, yname = interface_linktype(name)
            if yname not in compiled:
                compiled[yname] = compile_bpf(expr, yname)
            self._bpf[name] = compiled[yname]
            self._groups[name] = (base + j) & 0xFFFF
        log.info("capture filter: %s", expr)

    def _own_traffic(self) -> tuple[list[int], list[tuple[str, int]]]:
        cfg = self.cfg
        ports: list[int] = []
        hosts: list[tuple[str, int]] = []
        if cfg.keys.enabled:
            ports.append(cfg.keys.port)
        if cfg.metrics.enabled and cfg.metrics.port:
            ports.append(cfg.metrics.port)
        ep = cfg.otlp.endpoint
        if ep:
            hostport = ep.split("://", 1)[-1].split("/", 1)[0]
            host, _, port = hostport.rpartition(":")
            host = host.strip("[]")
            if port.isdigit():
                import ipaddress

                try:
                    ipaddress.ip_address(host)
                    hosts.append((host, int(port)))
                except ValueError:
                    ports.append(int(port))
            else:
                ports.append(443 if ep.startswith("https") else 80)
        return ports, hosts

    def _own_addresses(self) -> list[str]:
        """The addresses the sensor's own connections can have on the capture interfaces: theirs, and the
        listener's and metrics' when bound to one address."""
        import ipaddress

        from ..host import interface_addresses

        cfg = self.cfg
        by_name = interface_addresses()
        found = {a for name in cfg.capture.interfaces for a in by_name.get(name, ())}
        for on, host in ((cfg.keys.enabled, cfg.keys.host), (cfg.metrics.enabled, cfg.metrics.host)):
            with contextlib.suppress(ValueError):
                if on and not ipaddress.ip_address(host).is_unspecified:
                    found.add(str(ipaddress.ip_address(host)))
        return sorted(found)

    def _spec(self, index: int) -> WorkerSpec:
        cfg = self.cfg
        ttl = (cfg.engine.idle_timeout + cfg.engine.key_wait) if self.mode == "live" else None
        return WorkerSpec(
            index=index, mode=self.mode, engine={**engine_kwargs(cfg), "routes": engine_routes(cfg)},
            interfaces=tuple((n, self._groups.get(n)) for n in cfg.capture.interfaces),
            bpf=dict(self._bpf), snaplen=cfg.capture.snaplen, buffer_bytes=cfg.capture.buffer_bytes,
            batch=cfg.capture.batch, stats_interval=cfg.metrics.stats_interval, lossless=self.lossless,
            key_ttl=ttl, workers=self.nworkers, incarnation=self._incarnation.get(index, 0),
            ring_bytes=cfg.capture.ring_bytes,
            log_level=cfg.log.level, log_format=cfg.log.format, log_rate=cfg.log.rate,
            pcap=cfg.capture.pcap, pcap_speed=cfg.capture.pcap_speed,
            resume=self._positions.get(index, 0) if self.mode == "pcap" else 0,
            config=cfg if self.worker_exporters else None, drain_timeout=cfg.output.drain_timeout,
            share_facts=bool(cfg.keys.fabric),
            # default, live capture: a 16 MiB ring absorbs the parent's pauses (calls are dropped when
            # it is full); a capture file waits instead of dropping, so a small ring keeps the pipe
            # busy and a backlog does not sit in the workers' memory
            outbox_bytes=cfg.capture.outbox_bytes or ((2 << 20) if self.lossless else (16 << 20)))

    def _spawn(self, index: int) -> _Handle:
        ctx = self._ctx
        with _start_signals_blocked():  # the first Queue starts multiprocessing's resource tracker: it
            ctl = ctx.Queue()  # keeps SIGHUP blocked for good (a group SIGHUP killed it: KeyErrors at exit)
        r, w = ctx.Pipe(duplex=False)
        with self._replay_lock:
            secrets = self.preload + list(self._replay)
        proc = ctx.Process(target=worker_main, args=(self._spec(index), ctl, w, secrets),
                           name=f"tlsmirror-worker{index}", daemon=True)
        # The new interpreter inherits this mask: a Ctrl-C or stop sent to the group while it imports stays
        # pending (no KeyboardInterrupt traceback) until worker_main has its handlers and unblocks. Here it is
        # delivered, to our handler, once start() returns.
        with _start_signals_blocked():
            proc.start()
        w.close()  # the worker holds the only write end: its death shows as EOF here
        with self._replay_lock:
            facts = list(self._facts)
            states = list(self._resumption)
        if facts or states:  # a restarted worker picks its connections up again from the facts known here
            ctl.put(FactsGiven(facts_rows(facts), resumption_rows(states)))
        h = _Handle(index, proc, ctl, r, time.monotonic())
        self.state.alive[index] = True
        return h

    # ------------------------------------------------------------------ key listener
    def _start_keyserver(self) -> None:
        try:
            from ..keylistener.server import KeyServer, KeyServerConfig
        except ImportError:
            raise InputError("the key listener is not available in this build; run with --no-keys "
                             "(keys.enabled: false) and --keylog FILE") from None
        k = self.cfg.keys
        extra: dict[str, Any] = {}
        state_dir = k.state_dir or os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        if state_dir:
            extra["state_dir"] = state_dir
        kcfg = KeyServerConfig(host=k.host, port=k.port, tls=k.tls, cert=k.cert, key=k.key,
                               client_ca=k.client_ca, allow=list(k.allow), keylog_out=k.keylog_out,
                               max_connections=k.max_connections, **extra)
        import asyncio  # here: a run without the key listener (--no-keys) never loads it

        server = KeyServer(kcfg, self._on_secrets)
        loop = asyncio.new_event_loop()
        started = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(server.start())
            except BaseException as exc:
                error.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            with contextlib.suppress(Exception):
                loop.run_until_complete(server.stop())
            loop.close()

        t = threading.Thread(target=run, name="keyserver", daemon=True)
        t.start()
        started.wait(30)
        if error:
            exc = error[0]
            if isinstance(exc, InputError):
                raise exc
            msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InputError(f"key listener cannot start on {k.host}:{k.port}: {msg}; choose another "
                             "keys.port (--key-port), or --no-keys")
        self.keyserver, self._ks_loop, self._ks_thread = server, loop, t
        self.state.keyserver = lambda: dict(server.stats)

    def _on_secrets(self, secrets: list[Secret], shared: bool = False) -> None:
        """Called by the key listener (its thread), or the fabric's (*shared*: other sensors' secrets, not
        published again): hand the secrets to every worker now, and to the fabric."""
        if not secrets:
            return
        secrets = list(secrets)
        with self._replay_lock:
            self._replay.extend(secrets)
        if self.fabric is not None and not shared:
            self.fabric.publish(secrets)
        self.state.counters["secrets_shared" if shared else "secrets_received"] += len(secrets)
        msg = KeysGiven(secrets)
        with self._handles_lock:
            handles = list(self.handles)
        for h in handles:
            if not h.done:
                with contextlib.suppress(Exception):
                    h.ctl.put(msg)
        self.state.counters["keys_to_workers"] += len(secrets)

    def _on_facts(self, facts: list[HandshakeFacts]) -> None:
        """Other sensors' handshake facts (the fabric's thread): to every worker, for mid-stream pickup."""
        with self._replay_lock:
            self._facts.extend(facts)
        self._to_workers(FactsGiven(facts_rows(facts)))

    def _on_resumption(self, states: list[ResumptionState]) -> None:
        """Other sensors' TLS 1.2 resumption states (the fabric's thread): to every worker."""
        with self._replay_lock:
            self._resumption.extend(states)
        self._to_workers(FactsGiven([], resumption_rows(states)))

    def _to_workers(self, msg: FactsGiven) -> None:
        with self._handles_lock:
            handles = list(self.handles)
        for h in handles:
            if not h.done:
                with contextlib.suppress(Exception):
                    h.ctl.put(msg)

    # ------------------------------------------------------------------ exporters
    def _export_loop(self) -> None:
        q = self._export_q
        exporters = self.exporters
        counters = self.state.counters
        dirty = False
        while True:
            if self._export_reopen.is_set():
                self._export_reopen.clear()
                for ex in exporters:
                    try:
                        ex.reopen()
                    except Exception as exc:
                        log.error("exporter %s: reopen failed: %s", type(ex).__name__, exc)
            try:
                item = q.get(timeout=0.2 if dirty else 1.0)
            except queue.Empty:
                if dirty:  # idle: push buffered output out (a quiet link must not hold records back)
                    dirty = False
                    for ex in exporters:
                        try:
                            ex.flush(0.0)
                        except Exception as exc:
                            log.error("exporter %s: flush failed: %s", type(ex).__name__, exc)
                continue
            if item is None:
                return
            dirty = True
            for ex in exporters:
                try:
                    ex.export(item)
                except Exception as exc:
                    counters["export_errors"] = counters.get("export_errors", 0) + 1
                    log.error("exporter %s failed: %s", type(ex).__name__, exc)
            counters["exported"] += 1

    def _export(self, calls: list[Any]) -> None:
        q = self._export_q
        if self.lossless:
            for c in calls:
                q.put(c)
            return
        for i, c in enumerate(calls):
            try:
                q.put_nowait(c)
            except queue.Full:
                self.state.counters["export_queue_drops"] += len(calls) - i
                log.warning("export queue full: API calls dropped (exporters too slow)")
                return

    # ------------------------------------------------------------------ supervision
    def _loop(self) -> None:
        linger = self.cfg.capture.pcap_linger
        while True:
            conns = {h.conn: h for h in self.handles if h.conn is not None}
            if conns:
                for c in wait(list(conns), timeout=0.1):
                    self._receive(conns[c])  # type: ignore[index]
            else:
                time.sleep(0.05)
            if self._fatal and not self._stopping:
                self._begin_stop("fatal error")
            if self._stop.is_set() and not self._stopping:
                self._begin_stop("signal")
            if self._reload.is_set():
                self._reload.clear()
                self._do_reload()
            if self.mode == "pcap" and self._reader_done is None and all(h.read for h in self.handles):
                self._reader_done = time.monotonic()
                log.info("capture file read: %d frames", self._file_frames)
            if (self.mode == "pcap" and not self._stopping and self._reader_done is not None
                    and self._ready.is_set()  # a short file: ready first (key listener, fabric), then stop
                    and time.monotonic() >= self._reader_done + linger):
                self._begin_stop("end of capture file")
            self._supervise()
            if self._stopping:
                if all(h.done or h.conn is None for h in self.handles):
                    return
                if time.monotonic() > self._deadline:
                    log.warning("drain timeout: %d workers did not finish",
                                sum(1 for h in self.handles if not h.done))
                    return
            elif not self._ready.is_set() and all(h.ready for h in self.handles):
                self._become_ready()

    def _receive(self, h: _Handle) -> None:
        assert h.conn is not None
        try:
            while True:
                msg = pickle.loads(h.conn.recv_bytes())
                self._message(h, msg)
                if not h.conn.poll():
                    return
        except (EOFError, OSError, pickle.UnpicklingError):
            with contextlib.suppress(OSError):
                h.conn.close()
            h.conn = None

    def _message(self, h: _Handle, msg: FromWorker) -> None:
        if type(msg) is CallBatch:
            self._export(msg.calls)
        elif type(msg) is FactsSeen:
            facts = facts_of(msg.facts)
            states = resumption_of(msg.resumption)
            with self._replay_lock:
                self._facts.extend(facts)
                self._resumption.extend(states)
            if self.fabric is not None:
                self.fabric.publish_facts(facts)
                if states:
                    self.fabric.publish_resumption(states)
        elif type(msg) is InventoryPart:
            if self.mode == "pcap":
                h.parts.append(msg.part)  # taken in with the position the next stats report
            elif self.inventory is not None:
                self.inventory.fold(msg.part)
        elif type(msg) is WorkerStats:
            self.state.update(h.index, msg.stats)
            if self.mode == "pcap":
                self._positions[h.index] = msg.stats.get("position", 0)
                if h.parts and self.inventory is not None:
                    for part in h.parts:
                        self.inventory.fold(part)
                h.parts.clear()
        elif type(msg) is CaptureRead:
            h.read = True
            self._file_frames = max(self._file_frames, msg.frames)
        elif type(msg) is WorkerReady:
            h.ready = True
        elif type(msg) is WorkerDone:
            h.done = True
        elif type(msg) is WorkerFailed:
            self._fatal = self._fatal or msg.message
            h.done = True

    def _supervise(self) -> None:
        now = time.monotonic()
        for i, h in enumerate(self.handles):
            if i in self._pending_restart:
                if now >= self._pending_restart[i] and not self._stopping:
                    del self._pending_restart[i]
                    self._incarnation[i] = self._incarnation.get(i, 0) + 1
                    new = self._spawn(i)
                    if self.mode == "pcap":
                        self._reader_done = None  # no end of capture before the new one has read it
                    with self._handles_lock:
                        self.handles[i] = new
                    self.state.restarts += 1
                continue
            if h.dead or h.conn is not None or h.proc.is_alive():
                continue  # running, or still sending its last messages
            h.proc.join(0)
            h.dead = True
            self._abandon(h)
            if h.done:
                self.state.alive[i] = False
                continue
            # died without finishing: a crash. Live, its counters are kept and a new one starts from zero;
            # with a capture file, the new one counts again from the start of the file (its last report
            # stands until the new one has caught up with it)
            if self.mode == "pcap":
                self.state.alive[i] = False
            else:
                self.state.retire(i)
            self.state.crashes += 1
            if self._stopping:
                h.done = True
                continue
            streak = self._crash_streak.get(i, 0) + 1 if now - h.started < CRASH_WINDOW else 1
            self._crash_streak[i] = streak
            log.error("worker %d died (exit code %s); restarting it", i, h.proc.exitcode)
            if streak >= CRASH_LOOP:
                self._fatal = f"worker {i} keeps crashing right after start; see the log above"
                h.done = True
                continue
            self._pending_restart[i] = now + RESTART_DELAY

    def _abandon(self, h: _Handle) -> None:
        with contextlib.suppress(Exception):
            h.ctl.cancel_join_thread()
            h.ctl.close()

    def _begin_stop(self, why: str) -> None:
        self._stopping = True
        self._deadline = time.monotonic() + self.cfg.output.drain_timeout
        log.info("stopping (%s): draining workers", why)
        for h in self.handles:
            if not h.done:
                with contextlib.suppress(Exception):
                    h.ctl.put(StopRequest(self._deadline))

    def _do_reload(self) -> None:
        log.info("SIGHUP: reopening outputs, reloading key listener certificates")
        self._export_reopen.set()
        with self._handles_lock:
            handles = list(self.handles)
        for h in handles:
            if not h.done:
                with contextlib.suppress(Exception):
                    h.ctl.put(Reopen())
        if self.keyserver is not None and self._ks_loop is not None:
            def reload() -> None:
                try:
                    self.keyserver.reload_certificates()
                    reopen = getattr(self.keyserver, "reopen", None)
                    if reopen is not None:
                        reopen()  # keys.keylog_out
                except Exception as exc:
                    log.error("key listener: certificate reload failed: %s", exc)

            self._ks_loop.call_soon_threadsafe(reload)

    # ------------------------------------------------------------------ shutdown
    def _shutdown(self) -> None:
        self._stopping = True
        for h in self.handles:
            if h.proc.is_alive():
                h.proc.join(timeout=max(0.0, self._deadline - time.monotonic()) if self._deadline else 0)
            if h.proc.is_alive():
                h.proc.terminate()
                h.proc.join(2)
            if h.proc.is_alive():
                h.proc.kill()
                h.proc.join(1)
            if h.conn is not None:
                with contextlib.suppress(OSError):
                    h.conn.close()
            self._abandon(h)
            self.state.alive[h.index] = False
        if self._ks_loop is not None:
            self._ks_loop.call_soon_threadsafe(self._ks_loop.stop)
            if self._ks_thread is not None:
                self._ks_thread.join(10)
        if self.fabric is not None:
            self.fabric.stop()
        end = self._deadline or time.monotonic() + self.cfg.output.drain_timeout
        if self._export_thread is not None:
            self._export_q.put(None)
            self._export_thread.join(max(1.0, end - time.monotonic()))
        for ex in self.exporters:
            close_within(ex, end - time.monotonic())
        if self.inventory is not None and self.worker_exporters:
            close_within(self.inventory, 0.0)  # inventory.state: the route table of every part
        if self.metrics is not None:
            self.metrics.stop()
        if not self._started:
            return
        t = self.state.totals()
        outcomes = ", ".join(f"{k} {v}" for k, v in t.get("outcomes", {}).items() if v) or "none"
        log.info("stopped: %d packets, %d API calls exported, TLS connections: %s, %d worker restarts",
                 t.get("packets", 0), self.state.exported(t), outcomes, self.state.restarts)
        unread = self.state.unread(t)
        if unread:  # the workers stop reading at the stop: what the kernel still held is decoded by no one
            log.warning("stopped with %d captured frames unread (left in the capture rings: not decoded, "
                        "not in kernel drops)", unread)

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old = {}

        def stop(_signo: int, _frame: Any) -> None:
            self._stop.set()

        def hup(_signo: int, _frame: Any) -> None:
            self._reload.set()

        for sig, fn in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, hup)):
            old[sig] = signal.signal(sig, fn)

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore


@contextlib.contextmanager
def _start_signals_blocked() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP held pending in this thread (and in processes started meanwhile)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_START_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def load_preload(paths: list[str]) -> list[Secret]:
    """Secrets of --keylog files (bad lines are logged by number and skipped)."""
    from ..offline.inputs import load_keylog_files

    return load_keylog_files(paths, lambda note: log.warning("%s", note))
