"""What the sensor's own /metrics say: is it up, do keys match connections, is it dropping, is memory flat."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .result import DROP_RATIO, FAIL, MATCH_RATIO, OK, SKIP, WARN, Result, num, percent, see, size_text


class Scrape:
    """One reading of /metrics (and /healthz) of the sensor."""

    def __init__(self, text: str, health: dict[str, Any] | None, at: float) -> None:
        from ..daemon.metrics import parse_metrics

        self.m = parse_metrics(text)
        self.health = health
        self.at = at

    def value(self, name: str, **labels: str) -> float:
        series = self.m.get("tlsmirror_" + name) or self.m.get("tlsmirror_" + name + "_total") or {}
        return float(series.get(tuple(sorted(labels.items())), 0.0))

    def by(self, name: str, label: str) -> dict[str, float]:
        series = self.m.get("tlsmirror_" + name + "_total") or self.m.get("tlsmirror_" + name) or {}
        out: dict[str, float] = {}
        for key, v in series.items():
            k = dict(key).get(label, "")
            out[k] = out.get(k, 0.0) + float(v)
        return out

    def exporters(self) -> dict[str, dict[str, float]]:
        series = self.m.get("tlsmirror_exporter_total") or self.m.get("tlsmirror_exporter") or {}
        out: dict[str, dict[str, float]] = {}
        for key, v in series.items():
            d = dict(key)
            out.setdefault(d.get("exporter", "?"), {})[d.get("counter", "?")] = float(v)
        return out


def metrics_base(url: str) -> str:
    base = url.rstrip("/")
    for suffix in ("/metrics", "/healthz", "/health"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    if "://" not in base:
        base = "http://" + base
    return base


def scrape(url: str, timeout: float) -> Scrape:
    """Read /metrics and /healthz. Raises OSError (with a readable message) when they do not answer."""
    base = metrics_base(url)
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code} from {base}/metrics") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise OSError(str(reason)) from None
    health: dict[str, Any] | None = None
    with contextlib.suppress(urllib.error.URLError, OSError, ValueError), \
            urllib.request.urlopen(base + "/healthz", timeout=timeout) as resp:
        data = json.loads(resp.read())
        health = data if isinstance(data, dict) else None
    try:
        return Scrape(text, health, time.monotonic())
    except ValueError as exc:
        raise OSError(f"{base}/metrics is not Prometheus text ({exc}): is --url the sensor's metrics "
                      "server?") from None


def check_metrics(url: str | None, s0: Scrape | None, error: str | None, why_no_url: str = "") -> Result:
    """The metrics endpoint answers, /healthz, workers."""
    if url is None:
        return Result("metrics", SKIP, why_no_url or "no metrics URL", [
            "enable metrics (metrics.enabled: true) or give --url; without them only the probes below run"])
    base = metrics_base(url)
    if s0 is None:
        return Result("metrics", FAIL, f"{base} does not answer: {error}", [
            "is `tlsmirror run` running (systemctl status tlsmirror)? with metrics on this address "
            "(metrics.host/metrics.port, or give --url)?", see("sensor-not-running")], {"url": base})
    h = s0.health or {}
    alive = s0.value("workers_alive")
    configured = s0.value("workers_configured")
    restarts = s0.value("worker_restarts")
    data = {"url": base, "health": h, "workers_alive": alive, "workers_configured": configured,
            "worker_restarts": restarts}
    status = h.get("status", "?")
    msg = (f"{base}: {status}, {num(alive)}/{num(configured)} workers, up {num(round(h.get('uptime_s', 0)))} s"
           if h else f"{base}: /metrics answers, /healthz does not")
    res = Result("metrics", OK, msg, data=data)
    if not h:
        res.status = WARN
        res.advice.append("/healthz did not answer: is --url the sensor's metrics server?")
    reasons = [str(r) for r in h.get("reasons", [])]
    if status not in ("ok", "?") or reasons:
        res.status = WARN
        res.message += ": " + "; ".join(reasons)
        for r in reasons:
            if r.startswith("worker down"):
                res.advice.append("a worker process is down: the log (journalctl -u tlsmirror) shows why; "
                                  "it is restarted after 0.5 s unless it keeps crashing")
            elif r.startswith("no packets"):
                res.advice.append("no packet was captured lately: see the interface line below")
    if restarts:
        res.status = WARN
        res.message += f"; {num(restarts)} worker restarts"
        res.advice.append("workers died and were restarted: the log has the traceback (report it); "
                          "their flows were lost")
    return res


def check_match(s0: Scrape | None, s1: Scrape | None) -> Result:
    """Share of TLS connections whose secrets were found: decrypted vs no_key."""
    label = "match rate"
    if s0 is None:
        return Result(label, SKIP, "needs the metrics endpoint")
    last = s1 or s0
    out = last.by("tls_connections", "outcome")
    matched = out.get("decrypted", 0) + out.get("gap", 0)
    no_key = out.get("no_key", 0)
    total = matched + no_key
    data: dict[str, Any] = {"decrypted": out.get("decrypted", 0), "gap": out.get("gap", 0), "no_key": no_key}
    if total == 0:
        tls_flows = last.by("engine", "counter").get("tls_flows", 0)
        return Result(label, SKIP, f"no TLS connection with its handshake has ended yet ({num(tls_flows)} TLS "
                                   "flows seen); outcomes count when a connection closes or idles out "
                                   "(engine.idle_timeout)", data=data)
    ratio = matched / total
    data["ratio"] = round(ratio, 4)
    msg = f"{num(matched)} of {num(total)} TLS connections had their secrets ({percent(matched, total)})"
    if matched != out.get("decrypted", 0):
        msg += f"; {num(out.get('gap', 0))} of them with gaps"
    if ratio >= MATCH_RATIO:
        return Result(label, OK, msg, data=data)
    advice: list[str] = []
    received = last.value("keys_received") + last.value("keys_preloaded")
    expired = last.value("keys_expired")
    if received == 0:
        advice.append("no secrets arrive at all: see the keys line")
    else:
        if expired:
            advice.append(f"{num(expired)} secrets expired unused: keys arrive for connections the mirror "
                          "does not carry: the iRule is on a virtual server whose traffic is not mirrored here "
                          "(wrong virtual server, another VLAN or F5 unit)")
        advice.append("the iRule must be attached to every virtual server that is mirrored (an iRule missing "
                      "on one virtual server leaves its connections without keys)")
        advice.append("keys that arrive later than engine.key_wait (30 s) after their records are too late: "
                      "F5 sideband timeouts or a slow listener (check /var/log/ltm); raise engine.key_wait")
        advice.append("a mirror that misses one direction or drops packets makes handshakes unreadable: "
                      "see the mirror and drops lines")
    advice.append(see("keys-arrive-but-do-not-match"))
    return Result(label, WARN, msg + f", below {MATCH_RATIO:.0%}", advice, data)


_REASONS = ("to see each connection's reason, record a minute of the mirror (sudo tcpdump -i IFACE -w /tmp/m.pcap) "
            "with keys.keylog_out set, then run `tlsmirror decrypt /tmp/m.pcap --keylog KEYLOG_OUT`")


def check_outcomes(s0: Scrape | None, s1: Scrape | None) -> Result:
    """The other TLS outcomes: decrypt failures, unsupported, no handshake, gaps."""
    label = "TLS outcomes"
    if s0 is None:
        return Result(label, SKIP, "needs the metrics endpoint")
    last = s1 or s0
    out = last.by("tls_connections", "outcome")
    total = sum(out.values())
    data = dict(out)
    if total == 0:
        return Result(label, SKIP, "no TLS connection has ended yet", data=data)
    shown = ", ".join(f"{k} {num(v)}" for k, v in sorted(out.items()) if v)
    res = Result(label, OK, f"{num(total)} connections: {shown}", data=data)
    failed = out.get("decrypt_failed", 0)
    unsupported = out.get("unsupported", 0)
    no_hs = out.get("no_handshake", 0)
    gap = out.get("gap", 0)
    if failed / total > 0.01:
        res.status = WARN
        res.advice += [f"{num(failed)} connections failed to decrypt: a secret for another session, frames cut "
                       "by the mirror (truncation/slicing on the SPAN/ERSPAN session, capture.snaplen too "
                       "small) or corrupted; " + _REASONS, see("decrypt-failures")]
    if unsupported / total > 0.01:
        res.status = WARN
        res.advice += [f"{num(unsupported)} connections use a version or cipher suite tlsmirror cannot decrypt "
                       "(ARIA, Camellia-GCM, GOST or SM4 suites, SSL 2.0); " + _REASONS,
                       see("unsupported-suites-or-versions")]
    if no_hs / total > 0.10:
        res.status = WARN
        res.advice += [f"{num(no_hs)} connections without a readable handshake: normal for connections that "
                       "began before the sensor started; otherwise the mirror misses one direction (the "
                       "ClientHello and ServerHello are both needed), or tunnelled mirrors split flows "
                       "across workers (capture.workers: 1)", see("only-one-direction-mirrored")]
    if gap / total > 0.10:
        res.status = WARN
        res.advice += [f"{num(gap)} connections lost bytes (TCP gaps): kernel or mirror drops; see the drops "
                       "line", see("gaps-and-kernel-drops")]
    return res


def check_drops(s0: Scrape | None, s1: Scrape | None, wait: float) -> Result:
    """Kernel (socket buffer) drops and drops inside the sensor, against 0.1 % of the traffic."""
    label = "drops"
    if s0 is None:
        return Result(label, SKIP, "needs the metrics endpoint")
    last = s1 or s0
    kd = last.value("kernel_drops")
    kp = last.value("kernel_packets")
    packets = max(kp, last.value("packets") + kd)
    dropped = last.by("dropped", "where")
    internal = sum(dropped.values())
    calls = sum(last.by("exchanges", "http_version").values())
    budget = last.by("tcp", "counter").get("budget_dropped_bytes", 0)
    data: dict[str, Any] = {"kernel_drops": kd, "kernel_packets": kp, "internal": dropped, "api_calls": calls,
                            "tcp_budget_dropped_bytes": budget}
    msg = f"kernel {num(kd)} of {num(packets)} packets ({percent(kd, packets)})"
    msg += f", internal {num(internal)} of {num(calls + internal)} API calls"
    modes = {k: int(v) for k, v in last.by("capture_mode", "mode").items() if v}
    if modes:  # live capture: how the sockets read (recv: the ring could not be set up, see the log)
        data["capture_mode"] = modes
        msg += "; capture " + ", ".join(f"{k} {v}" for k, v in sorted(modes.items()))
    if s1 is not None:
        dk = kd - s0.value("kernel_drops")
        di = internal - sum(s0.by("dropped", "where").values())
        msg += f" (+{num(dk)} / +{num(di)} in {wait:g} s)"
        data.update(kernel_drops_in_wait=dk, internal_in_wait=di)
    res = Result(label, OK, msg, data=data)
    if packets and kd / packets > DROP_RATIO:
        res.status = WARN
        res.advice += [
            "the kernel drops packets because the workers do not read fast enough: add workers "
            "(capture.workers, up to one per core), raise capture.buffer_bytes (e.g. 256MiB) for bursts, "
            "narrow the capture (capture.bpf, engine.ports), and keep other load off the sensor's cores",
            see("gaps-and-kernel-drops")]
        if modes.get("recv"):
            res.advice.insert(-1, "some capture sockets read one packet per recv: the TPACKET_V3 ring could not "
                              "be set up (the sensor's log says why) or capture.ring_bytes is 0")
    if internal and internal / (calls + internal) > DROP_RATIO:
        res.status = WARN
        where = ", ".join(f"{k} {num(v)}" for k, v in sorted(dropped.items()) if v)
        res.message += f" [{where}]"
        if dropped.get("worker_outbox"):
            res.advice.append("worker_outbox: the parent process does not take API calls fast enough "
                              "(busy exporters or an overloaded machine); capture.outbox_bytes absorbs bursts")
        if dropped.get("export_queue"):
            res.advice.append("export_queue: the exporters are slower than the traffic or stalled: see the "
                              "exporter line; output.queue_size absorbs bursts")
        res.advice.append(see("gaps-and-kernel-drops"))
    if budget:
        res.message += f"; reassembly budget dropped {size_text(budget)}"
    return res


def check_memory(url: str | None, s0: Scrape | None, s1: Scrape | None) -> Result:
    """Resident memory of the sensor's processes against the machine's memory."""
    label = "memory"
    last = s1 or s0
    if last is None:
        return Result(label, SKIP, "needs the metrics endpoint")
    rss = last.by("memory_rss_bytes", "process")
    total = sum(rss.values())
    held = last.value("tls_held_bytes")
    buffered = last.value("tcp_buffered_bytes")
    data: dict[str, Any] = {"rss": rss, "rss_total": total, "tls_held_bytes": held, "tcp_buffered_bytes": buffered}
    msg = f"{size_text(total)} resident in {len(rss)} processes (TLS held {size_text(held)}, TCP out-of-order " \
          f"{size_text(buffered)})"
    res = Result(label, OK, msg, data=data)
    host = urllib.parse.urlsplit(metrics_base(url or "http://127.0.0.1")).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return res
    mem_total = 0
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    if mem_total:
        data["mem_total"] = mem_total
        res.message += f", {percent(total, mem_total)} of the machine's {size_text(mem_total)}"
        if total / mem_total > 0.6:
            res.status = WARN
            res.advice += [
                "memory per worker is bounded by engine.max_total_buffer + engine.max_hold_bytes_total plus the "
                "flow table (engine.max_flows): lower them, lower engine.idle_timeout / engine.key_wait, or use "
                "fewer workers", see("high-memory")]
    return res
