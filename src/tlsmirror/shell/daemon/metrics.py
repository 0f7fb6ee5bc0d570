"""Metrics and health: a prometheus registry of our own, served with /healthz on 127.0.0.1:9464.

Workers send cumulative statistics; :class:`MetricsState` keeps the latest snapshot of each worker and
the totals of its dead incarnations (a restarted worker starts from zero), so every counter only grows.
The collector turns the state into metric families at scrape time. :func:`status_table` renders a
scrape as the table ``tlsmirror status`` prints.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ...tls.events import HOLD_OUTCOMES
from .workers import GAUGES, KEY_LAG_BUCKETS, rss_bytes

P = "tlsmirror_"


def _merge(into: dict[str, Any], add: dict[str, Any]) -> None:
    """Add the counters of *add* into *into* (nested dicts; gauges skipped)."""
    for k, v in add.items():
        if k in GAUGES:
            continue
        if isinstance(v, dict):
            _merge(into.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            into[k] = into.get(k, 0) + v


class MetricsState:
    """What the parent knows; updated by the daemon's main thread, read by scrapes (under a lock)."""

    def __init__(self, workers: int, mode: str = "live") -> None:
        self.lock = threading.Lock()
        self.mode = mode
        self.workers = workers
        self.latest: dict[int, dict[str, Any]] = {}
        self.retired: dict[str, Any] = {}
        self.alive: dict[int, bool] = {}
        self.restarts = 0
        self.crashes = 0
        self.export_queue_depth: Callable[[], int] = lambda: 0
        self.export_queue_size = 0
        self.counters: dict[str, int] = {"export_queue_drops": 0, "exported": 0, "secrets_received": 0,
                                         "secrets_preloaded": 0, "keys_to_workers": 0, "secrets_shared": 0}
        self.exporters: dict[str, Callable[[], dict[str, int]]] = {}
        self.keyserver: Callable[[], dict[str, int]] | None = None
        self.fabric: Callable[[], dict[str, int]] | None = None  # shell/fabric's counters, when keys.fabric
        self.started = time.time()
        self.extra_reasons: dict[str, str] = {}
        self.ready = False  # capture attached on every interface (and the key listener open)
        self.worker_exporters = False  # the workers own the exporters (and count what they exported)
        self.output: str | None = None  # where the JSON lines go ("-": stdout), for `doctor`

    def exported(self, totals: dict[str, Any]) -> int:
        """API calls handed to the exporters: counted by the workers when they own them."""
        return int(totals.get("exported", 0)) if self.worker_exporters else self.counters["exported"]

    @staticmethod
    def unread(totals: dict[str, Any]) -> int:
        """Frames the kernel passed to the capture sockets (not dropped: PACKET_STATISTICS counts drops in
        its packets too) that no worker has read, as of the workers' last stats; 0 with a capture file.
        At the stop these are the frames left in the rings (socket buffers): decoded by no one."""
        passed = int(totals.get("kernel_packets", 0)) - int(totals.get("kernel_drops", 0))
        return max(0, passed - int(totals.get("packets", 0)))

    def update(self, index: int, stats: dict[str, Any]) -> None:
        with self.lock:
            self.latest[index] = stats

    def retire(self, index: int) -> None:
        """Worker *index* died: keep its counters."""
        with self.lock:
            last = self.latest.pop(index, None)
            if last is not None:
                _merge(self.retired, last)
            self.alive[index] = False

    def totals(self) -> dict[str, Any]:
        """Counters summed over workers and retired incarnations; gauges summed over live workers."""
        with self.lock:
            out: dict[str, Any] = {}
            _merge(out, self.retired)
            gauges: dict[str, float] = {}
            last_packet = 0.0
            for st in self.latest.values():
                _merge(out, st)
                for g in ("held_bytes", "flows_open", "tcp_buffered", "outbox", "outbox_bytes",
                          "fragments_pending"):
                    gauges[g] = gauges.get(g, 0) + st.get(g, 0)
                # every worker holds a copy of every secret: the store's size is the largest copy's
                gauges["keys_stored"] = max(gauges.get("keys_stored", 0), st.get("keys_stored", 0))
                for name, ex in st.get("exporters", {}).items():  # the exporters' gauges, live workers'
                    for k in ("queue_depth", "spool_bytes"):
                        if k in ex:
                            into = out.setdefault("exporters", {}).setdefault(name, {})
                            into[k] = into.get(k, 0) + ex[k]
                last_packet = max(last_packet, st.get("last_packet_wall", 0.0))
                for k in ("added", "expired", "evicted"):  # every worker gets every secret: max, not sum
                    out.setdefault("keys_max", {})
                    out["keys_max"][k] = max(out["keys_max"].get(k, 0), st.get("keys", {}).get(k, 0))
            out.update(gauges)
            out["last_packet_wall"] = last_packet
            out["rss_workers"] = {i: st.get("rss", 0) for i, st in self.latest.items()}
            return out

    def health(self, no_packets_after: float, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        reasons: list[str] = []
        with self.lock:
            down = [i for i in range(self.workers) if not self.alive.get(i, False)]
        if down:
            reasons.append(f"worker down: {', '.join(str(i) for i in down)}")
        t = self.totals()
        if self.mode == "live" and no_packets_after > 0:
            last = t["last_packet_wall"] or self.started
            if now - last > no_packets_after:
                reasons.append(f"no packets for {int(now - last)} s")
        reasons.extend(self.extra_reasons.values())
        if self.fabric is not None and not self.fabric().get("connected"):
            reasons.append("key fabric unreachable: decrypting with the secrets held")
        status = "degraded" if reasons else "ok"
        if not self.ready:
            status = "starting"
            reasons.insert(0, "capture is not attached on every interface yet")
        return {"status": status, "ready": self.ready, "reasons": reasons,
                "workers": self.workers, "workers_alive": self.workers - len(down),
                "packets": t.get("packets", 0), "uptime_s": round(now - self.started, 1)}


class Collector:
    """prometheus_client collector over a :class:`MetricsState`."""

    def __init__(self, state: MetricsState) -> None:
        self.state = state

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        st = self.state
        t = st.totals()

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(P + name, doc, value=value)

        def labelled(name: str, doc: str, label: str, values: dict[str, Any], gauge: bool = False) -> Metric:
            fam: Metric = (GaugeMetricFamily(P + name, doc, labels=[label]) if gauge
                           else CounterMetricFamily(P + name, doc, labels=[label]))
            for k, v in sorted(values.items()):
                fam.add_metric([str(k)], v)  # type: ignore[attr-defined]
            return fam

        yield counter("packets", "Frames captured (read from sockets or the capture file)",
                      t.get("packets", 0))
        yield counter("bytes", "Bytes of captured frames", t.get("bytes", 0))
        yield counter("kernel_packets", "Packets the kernel passed the filter (PACKET_STATISTICS)",
                      t.get("kernel_packets", 0))
        yield counter("kernel_drops", "Packets the kernel dropped: socket buffer full (PACKET_STATISTICS)",
                      t.get("kernel_drops", 0))
        if st.mode == "live":
            with st.lock:
                modes = {"ring": 0, "recv": 0}
                for w in st.latest.values():
                    for m in w.get("capture_mode", ()):
                        modes[m] = modes.get(m, 0) + 1
            yield labelled("capture_mode", "Capture sockets by how they read: ring (TPACKET_V3, per-packet "
                           "kernel timestamps) or recv (the fallback: see the log)", "mode", modes, gauge=True)
        exporters = dict(t.get("exporters", {}))  # the workers' exporters, summed over workers
        for name, stats_fn in st.exporters.items():  # the parent's
            try:
                exporters[name] = dict(stats_fn())
            except Exception:  # an exporter's stats must never break a scrape
                exporters[name] = {}
        yield labelled("dropped", "API calls dropped inside the sensor, by where", "where", {
            "worker_outbox": t.get("result_drops", 0),
            "export_queue": st.counters["export_queue_drops"],
            "exporter": sum(int(x.get("dropped", 0)) for x in exporters.values()),
        })
        yield labelled("frames_skipped", "Frames without a TCP segment we decode, by reason", "reason",
                       t.get("frames", {}))
        yield labelled("tcp", "TCP reassembly counters", "counter", t.get("tcp", {}))
        yield labelled("engine", "Engine counters", "counter", t.get("engine", {}))
        yield GaugeMetricFamily(P + "flows_open", "TCP flows tracked now", value=t.get("flows_open", 0))
        yield GaugeMetricFamily(P + "tcp_buffered_bytes", "Out-of-order bytes held now",
                                value=t.get("tcp_buffered", 0))
        yield GaugeMetricFamily(P + "tls_held_bytes", "Ciphertext held now waiting for secrets",
                                value=t.get("held_bytes", 0))
        yield labelled("tls_connections", "TLS connections by outcome", "outcome", t.get("outcomes", {}))
        held = CounterMetricFamily(P + "tls_held_sessions", "TLS connections that held records for their "
                                   "secrets, by how the wait ended (unlocked: every record used; expired: "
                                   "engine.key_wait passed; evicted: a hold budget), per TLS version",
                                   labels=["outcome", "tls_version"])
        for version, by in sorted(t.get("held", {}).items()):
            for outcome in HOLD_OUTCOMES:
                held.add_metric([outcome, version], by.get(outcome, 0))
        yield held
        lag = HistogramMetricFamily(P + "tls_key_lag_seconds", "Time from a TLS connection's ClientHello to "
                                    "the secret that made it decryptable, per TLS version", labels=["tls_version"])
        for version, hist in sorted(t.get("key_lag", {}).items()):
            buckets, running = [], 0.0
            for b in KEY_LAG_BUCKETS:
                running += hist.get(str(b), 0)
                buckets.append((str(b), running))
            buckets.append(("+Inf", hist.get("count", 0)))
            lag.add_metric([version], buckets, hist.get("sum", 0.0))
        yield lag
        yield counter("keys_received", "Secrets received by the key listener",
                      st.counters["secrets_received"])
        yield counter("keys_preloaded", "Secrets loaded from key log files at start",
                      st.counters["secrets_preloaded"])
        keys = t.get("keys", {})
        kmax = t.get("keys_max", {})
        yield counter("keys_matched", "Secrets used by a TLS session", keys.get("matched", 0))
        yield counter("keys_expired", "Secrets dropped unused (age limit)", kmax.get("expired", 0))
        yield counter("keys_evicted", "Secrets dropped unused (store full)", kmax.get("evicted", 0))
        yield GaugeMetricFamily(P + "keys_stored", "Secrets held now (each worker holds every secret)",
                                value=t.get("keys_stored", 0))
        if st.keyserver is not None:
            yield labelled("keyserver", "Key listener counters", "counter", dict(st.keyserver()))
        if st.fabric is not None:
            yield from _fabric_metrics(st.fabric())
        yield labelled("exchanges", "HTTP exchanges (API calls) by HTTP version", "http_version",
                       t.get("exchanges", {}))
        yield counter("http_issues", "Connections whose HTTP parsing stopped", t.get("http_issues", 0))
        yield counter("exported", "API calls handed to the exporters", st.exported(t))
        yield GaugeMetricFamily(P + "export_queue_depth", "API calls waiting for the exporters",
                                value=st.export_queue_depth())
        yield GaugeMetricFamily(P + "export_queue_capacity", "Size of the export queue",
                                value=st.export_queue_size)
        yield GaugeMetricFamily(P + "worker_outbox_messages", "Batches of API calls waiting in the workers' "
                                "outboxes for the parent (summed over workers)", value=t.get("outbox", 0))
        yield GaugeMetricFamily(P + "worker_outbox_bytes", "Bytes of pickled messages waiting in the workers' "
                                "outboxes (summed over workers)", value=t.get("outbox_bytes", 0))
        fam = CounterMetricFamily(P + "exporter", "Exporter counters (the workers' summed over workers)",
                                  labels=["exporter", "counter"])
        for name, stats in sorted(exporters.items()):
            for k, v in sorted(stats.items()):
                if isinstance(v, (int, float)):
                    fam.add_metric([name, k], v)
        yield fam
        yield counter("worker_restarts", "Worker processes restarted after they died", st.restarts)
        yield GaugeMetricFamily(P + "workers_alive", "Worker processes running",
                                value=sum(1 for v in st.alive.values() if v))
        yield GaugeMetricFamily(P + "workers_configured", "Worker processes configured", value=st.workers)
        mem = GaugeMetricFamily(P + "memory_rss_bytes", "Resident memory per process", labels=["process"])
        mem.add_metric(["parent"], rss_bytes())
        for i, v in sorted(t.get("rss_workers", {}).items()):
            mem.add_metric([f"worker{i}"], v)
        yield mem
        if st.output is not None:
            out = GaugeMetricFamily(P + "output_info", "Where the JSON lines of API calls go ('-': stdout)",
                                    labels=["jsonl"])
            out.add_metric([st.output], 1)
            yield out
        last = t.get("last_packet_wall", 0.0)
        yield GaugeMetricFamily(P + "last_packet_timestamp_seconds", "Wall clock of the latest packet",
                                value=last)


def _fabric_metrics(f: dict[str, int]) -> Iterator[Metric]:
    """The key fabric's families (docs/fabric.md)."""
    fam = CounterMetricFamily(P + "fabric_secrets", "Secrets through the key fabric: out, written and published "
                              "by this sensor; in, new secrets taken from the other sensors", labels=["direction"])
    fam.add_metric(["in"], f.get("secrets_in", 0))
    fam.add_metric(["out"], f.get("secrets_out", 0))
    yield fam
    fam = CounterMetricFamily(P + "fabric_facts", "Connections' handshake facts through the key fabric: out, seen "
                              "here and published; in, new facts taken from the other sensors", labels=["direction"])
    fam.add_metric(["in"], f.get("facts_in", 0))
    fam.add_metric(["out"], f.get("facts_out", 0))
    yield fam
    fam = CounterMetricFamily(P + "fabric_resumption", "TLS 1.2 resumption states (session id or ticket digest -> "
                              "master secret) through the key fabric: out, seen here and published; in, new states "
                              "taken from the other sensors (entries and messages)", labels=["direction"])
    fam.add_metric(["in"], f.get("resume_in", 0))
    fam.add_metric(["out"], f.get("resume_out", 0))
    yield fam
    for name, key, doc in (
            ("fabric_errors", "errors", "Fabric operations that failed: Redis unreachable, refusing, or slower "
                                        "than keys.fabric_timeout"),
            ("fabric_bad_entries", "bad_entries", "Fabric entries and message lines skipped: not key log lines or "
                                                  "handshake facts (of their key)"),
            ("fabric_reconnects", "reconnects", "Connections to the fabric made again after a failure"),
            ("fabric_dropped", "dropped", "Secrets and facts never published: the queue overflowed while the "
                                          "fabric was unreachable")):
        yield CounterMetricFamily(P + name, doc, value=f.get(key, 0))
    yield GaugeMetricFamily(P + "fabric_connected", "1 while the key fabric (Redis) is connected",
                            value=f.get("connected", 0))
    yield GaugeMetricFamily(P + "fabric_pending", "Secrets and facts waiting to be published to the fabric",
                            value=f.get("pending", 0))


def make_registry(state: MetricsState) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Collector(state))  # type: ignore[arg-type]
    return reg


class MetricsServer:
    """HTTP server for /metrics and /healthz (and the ``pages`` given: /inventory) in a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 health: Callable[[], dict[str, Any]],
                 pages: dict[str, Callable[[], tuple[bytes, str]]] | None = None) -> None:
        reg = registry
        extra = dict(pages or {})  # more routes: path -> (body, content type), e.g. /inventory

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(reg)
                    ctype = "text/plain; version=0.0.4; charset=utf-8"
                    code = 200
                elif path in ("/healthz", "/health"):
                    h = health()
                    strict = "strict" in self.path
                    code = 503 if strict and h["status"] != "ok" else 200
                    body = (json.dumps(h) + "\n").encode()
                    ctype = "application/json"
                elif path in extra:
                    body, ctype = extra[path]()
                    code = 200
                else:
                    code, body, ctype = 404, b"not found: try /metrics or /healthz\n", "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            from ..errors import InputError

            raise InputError(f"metrics server cannot listen on {host}:{port}: {exc.strerror or exc}; "
                             "choose another metrics.port (--metrics-port) or stop the other "
                             "process") from None
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------- status table
def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Scrape text -> {sample name: {sorted labels: value}} (counters keep their _total suffix)."""
    from prometheus_client.parser import text_string_to_metric_families  # status and doctor only

    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _get(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    series = m.get(P + name) or m.get(P + name + "_total") or {}
    key = tuple(sorted(labels.items()))
    return series.get(key, 0.0)


def _by(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, label: str) -> dict[str, float]:
    series = m.get(P + name + "_total") or m.get(P + name) or {}
    return {dict(k).get(label, ""): v for k, v in series.items()}


def _sum_by(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, label: str, value: str) -> float:
    """The sum of a metric's series whose ``label`` is ``value`` (over its other labels)."""
    series = m.get(P + name + "_total") or m.get(P + name) or {}
    return sum(v for k, v in series.items() if dict(k).get(label) == value)


def _n(x: float) -> str:
    if x >= 10 * 1024 * 1024 * 1024:
        return f"{x / 2**30:.1f}G"
    return f"{int(x):,}" if float(x).is_integer() else f"{x:.2f}"


def _mib(x: float) -> str:
    return f"{x / 2**20:.1f} MiB"


def status_table(text: str, health: dict[str, Any] | None = None) -> str:
    """The readable summary `tlsmirror status` prints from a /metrics scrape (and /healthz)."""
    m = parse_metrics(text)
    rows: list[tuple[str, str]] = []
    if health is not None:
        rows.append(("health", health.get("status", "?") + (": " + "; ".join(health.get("reasons", []))
                                                              if health.get("reasons") else "")))
    rows += [
        ("workers", f"{_n(_get(m, 'workers_alive'))}/{_n(_get(m, 'workers_configured'))} alive, "
                    f"{_n(_get(m, 'worker_restarts'))} restarts"),
        ("packets", f"{_n(_get(m, 'packets'))} ({_mib(_get(m, 'bytes'))})"),
        ("kernel drops", _n(_get(m, "kernel_drops"))),
        ("internal drops", ", ".join(f"{k} {_n(v)}" for k, v in sorted(_by(m, "dropped", "where").items()))
         or "0"),
        ("flows open", _n(_get(m, "flows_open"))),
    ]
    outcomes = _by(m, "tls_connections", "outcome")
    total = sum(outcomes.values())
    rows.append(("TLS connections", f"{_n(total)}: " + (", ".join(f"{k} {_n(v)}" for k, v in
                                                                 sorted(outcomes.items()) if v) or "none")))
    rows.append(("held for keys", ", ".join(f"{o} {_n(_sum_by(m, 'tls_held_sessions', 'outcome', o))}"
                                            for o in HOLD_OUTCOMES)))
    rows.append(("keys", f"received {_n(_get(m, 'keys_received'))}, "
                         f"preloaded {_n(_get(m, 'keys_preloaded'))}, "
                         f"matched {_n(_get(m, 'keys_matched'))}, expired {_n(_get(m, 'keys_expired'))}"))
    if P + "fabric_connected" in m:
        rows.append(("key fabric", f"{'connected' if _get(m, 'fabric_connected') else 'UNREACHABLE'}, "
                                   f"in {_n(_get(m, 'fabric_secrets', direction='in'))}, "
                                   f"out {_n(_get(m, 'fabric_secrets', direction='out'))}, "
                                   f"errors {_n(_get(m, 'fabric_errors'))}"))
    ex = _by(m, "exchanges", "http_version")
    rows.append(("API calls", f"{_n(sum(ex.values()))}" + (" (" + ", ".join(
        f"HTTP/{k} {_n(v)}" for k, v in sorted(ex.items())) + ")" if ex else "")))
    rows.append(("export", f"exported {_n(_get(m, 'exported'))}, queue {_n(_get(m, 'export_queue_depth'))}/"
                           f"{_n(_get(m, 'export_queue_capacity'))}"))
    mem = _by(m, "memory_rss_bytes", "process")
    rows.append(("memory (RSS)", ", ".join(f"{k} {_mib(v)}" for k, v in sorted(mem.items())) or "?"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows) + "\n"
