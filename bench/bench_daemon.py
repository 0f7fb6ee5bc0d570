#!/usr/bin/env python3
"""Live daemon under load: the benchmark capture replayed onto the lab's wire, `tlsmirror run` capturing it.

    sudo python3 bench/bench_daemon.py [--workers 1,2] [--mbps 20,40,80,160,320,0] [--keys parallel]
                                       [--quick] [--buffer-mib N] [--run-timeout 120]

For each worker count and each rate: the lab is up (../shared/lab/lab.sh: namespace tmlab-srv, host side
tmlab0), a fresh `tlsmirror run -i tmlab0 --workers N -o OUT --metrics-port P --key-port Q` captures, the
capture's key log goes to the daemon's key listener with `tlsmirror keys send` (at the same moment as the
traffic: `--keys parallel`, the default; or all of it first: `before`; or `preload` with --keylog), and
`ip netns exec tmlab-srv tcpreplay -i tmlab1 --mbps=R CAP` puts the 102,099 frames on the veth
(0 = --topspeed). The frames keep the capture's MAC and IP addresses (lab addresses only); the host drops
them (foreign MAC), the promiscuous capture socket sees them as a mirror port would.

Once the daemon has caught up (packets and exports still for 2.5 s, and every frame the kernel passed read
by a worker: kernel packets - kernel drops = packets), /metrics is read (kernel drops,
internal drops, exchanges, TLS outcomes, RSS), the CPU time (utime+stime from /proc/PID/stat) of the
daemon and its workers since just before the traffic, then SIGTERM (drain) and the output lines are
counted. A run is complete with no kernel drops, no internal drops, no frame unread at the stop,
30,000 lines and 600/600 connections decrypted. Prints one table row per run and, per worker count, the
highest rate that was complete.

Needs root, the lab (TLSMIRROR_LAB=DIR to move it), tcpreplay, nginx-light, iproute2, ethtool. The lab is
torn down at the end (also on Ctrl-C). Refuses to start while the lab is up (another run); --reset-lab
takes it down first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CONNS,
    DATA,
    REPO,
    REQS,
    child_env,
    daemon_stopped,
    print_table,
    require_capture,
    tlsmirror_cmd,
)

LAB = Path(os.environ.get("TLSMIRROR_LAB", str(REPO.parent / "shared" / "lab")))
NS, IFACE, PEER = "tmlab-srv", "tmlab0", "tmlab1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE = 0.5  # seconds between /metrics scrapes while traffic flows
QUIET = 2.5  # seconds with no change in packets/exports (worker stats arrive every 1 s) ...
# ... and no backlog: every frame the kernel passed to the capture sockets read by a worker. A worker busy
# with a long batch (secrets unlocking held records) reports late, and "still for 2.5 s" alone then
# ended runs with frames unread in the ring; the stop (SIGTERM) does not read them.


# ---------------------------------------------------------------------------- lab
def lab(cmd: str) -> None:
    subprocess.run(["bash", str(LAB / "lab.sh"), cmd], check=cmd == "up", stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL if cmd == "down" else None, timeout=60)


def lab_is_up() -> bool:
    return Path(f"/sys/class/net/{IFACE}").exists()


def free_port() -> int:
    """A free port below the ephemeral range. The capture's clients are this host's address (198.18.0.1, the
    capture interface's) with ephemeral ports, so the daemon's own ports (key listener, metrics), which its
    filter keeps out on its own addresses, must not be one of them: in the ephemeral range, a run lost a
    whole connection about one time in six."""
    import random

    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


# ---------------------------------------------------------------------------- /proc and /metrics
def children_of(pid: int) -> list[int]:
    """All descendants of *pid* (workers, multiprocessing's resource tracker)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as fh:
                    rest = fh.read().rsplit(b")", 1)[1].split()
                parent[int(d)] = int(rest[1])
            except (OSError, IndexError, ValueError):
                continue
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.extend(kids)
        todo.extend(kids)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            rest = fh.read().rsplit(b")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Scrape:
    values: dict[str, float]

    def get(self, name: str, **labels: str) -> float:
        key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        return self.values.get(key, 0.0)

    def total(self, name: str) -> float:
        """Sum over every label set of *name*."""
        return sum(v for k, v in self.values.items() if k == name or k.startswith(name + "{"))

    def labelled(self, name: str, label: str) -> dict[str, float]:
        pat = re.compile(re.escape(name) + r"\{.*" + label + r'="([^"]*)".*\}')
        out = {}
        for k, v in self.values.items():
            m = pat.fullmatch(k)
            if m:
                out[m.group(1)] = v
        return out


def scrape(port: int, timeout: float = 5.0) -> Scrape | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[_sorted_labels(name)] = float(value)
        except ValueError:
            continue
    return Scrape(values)


def _sorted_labels(name: str) -> str:
    if "{" not in name:
        return name
    base, _, rest = name.partition("{")
    parts = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest)
    return base + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(parts)) + "}"


# ---------------------------------------------------------------------------- one run
@dataclass
class Result:
    workers: int
    rate: str  # what was asked ("40 Mbps", "top")
    sent_packets: int = 0
    sent_mbps: float = 0.0
    sent_pps: float = 0.0
    send_s: float = 0.0
    iface_rx: int = 0  # packets the capture interface received during the run (its own counters) ...
    iface_dropped: int = 0  # ... and dropped before any socket saw them
    kernel_packets: int = 0
    kernel_drops: int = 0
    internal_drops: int = 0
    packets: int = 0
    exchanges: int = 0
    lines: int = 0
    decrypted: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    late_key: int = 0
    backlog: int = 0  # frames the kernel passed (not dropped) that no worker had read at the last scrape
    caught_up_s: float = 0.0  # from the first frame sent until the last export
    cpu_parent: float = 0.0
    cpu_workers: float = 0.0
    rss_parent_mib: float = 0.0
    rss_worker_mib: float = 0.0  # largest worker
    restarts: int = 0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and the end of the run
    error: str = ""

    passes: int = 1

    @property
    def complete(self) -> bool:
        return (not self.error and self.kernel_drops == 0 and self.internal_drops == 0 and self.backlog == 0
                and self.lines == self.passes * CONNS * REQS and self.decrypted == self.passes * CONNS)

    @property
    def cpu_per_1000(self) -> float:
        return (self.cpu_parent + self.cpu_workers) / (self.lines / 1000) if self.lines else 0.0


def iface_counters() -> tuple[int, int]:
    """The capture interface's received and dropped packets (sysfs)."""
    base = Path("/sys/class/net") / IFACE / "statistics"
    try:
        return int((base / "rx_packets").read_text()), int((base / "rx_dropped").read_text())
    except (OSError, ValueError):
        return 0, 0


def tcpreplay_cmd(cap: Path, rate: str, unit: str) -> list[str]:
    base = ["ip", "netns", "exec", NS, "tcpreplay", "-i", PEER]
    if rate == "0":
        return [*base, "--topspeed", str(cap)]
    return [*base, f"--{unit}={rate}", str(cap)]


def parse_tcpreplay(out: str, res: Result) -> None:
    m = re.search(r"Actual: (\d+) packets \((\d+) bytes\) sent in ([\d.]+) seconds", out)
    if m:
        res.sent_packets, res.send_s = int(m.group(1)), float(m.group(3))
    m = re.search(r"Rated: [\d.]+ Bps, ([\d.]+) Mbps, ([\d.]+) pps", out)
    if m:
        res.sent_mbps, res.sent_pps = float(m.group(1)), float(m.group(2))


def run_one(cap: Path, keylog: Path, workers: int, rate: str, a: argparse.Namespace, work: Path) -> Result:
    res = Result(workers, ("top" if rate == "0" else f"{rate} {a.unit_label}"), passes=a.passes)
    load0 = os.getloadavg()[0]
    mport, kport = free_port(), free_port()
    run_dir = Path(tempfile.mkdtemp(prefix=f"w{workers}-r{rate}-", dir=work))
    out = run_dir / "out.jsonl"
    cmd = [*tlsmirror_cmd(), "run", "-i", IFACE, "--workers", str(workers), "-o", str(out),
           "--metrics-port", str(mport), "--log-format", "json",
           "--set", f"keys.state_dir={run_dir / 'state'}", "--set", "keys.host=127.0.0.1"]
    if a.buffer_mib:
        cmd += ["--set", f"capture.buffer_bytes={a.buffer_mib << 20}"]
    for kv in a.set or ():
        cmd += ["--set", kv]
    if a.keys == "preload":
        cmd += ["--keylog", str(keylog), "--no-keys"]
    else:
        cmd += ["--key-port", str(kport)]
    err_path = run_dir / "daemon.log"
    deadline = time.monotonic() + (a.run_timeout or 60 + 40 * a.passes)
    with open(err_path, "wb") as err_fh:
        daemon = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_fh,
                                  env=child_env(), start_new_session=True)
    try:
        # ready: every worker has sent statistics (its capture socket is open by then)
        ready = False
        ready_by = min(deadline, time.monotonic() + 60)
        while time.monotonic() < ready_by and daemon.poll() is None:
            s = scrape(mport, 1.0)
            if s is not None and all(_has_worker(s, i) for i in range(workers)):
                ready = True
                break
            time.sleep(0.2)
        if not ready:
            res.error = f"daemon not ready (exit {daemon.poll()}); see {err_path}"
            return res
        pids = [daemon.pid, *children_of(daemon.pid)]
        cpu0 = {p: cpu_seconds(p) for p in pids}
        keysend = None
        send_keys = [*tlsmirror_cmd(), "keys", "send", f"127.0.0.1:{kport}", "--insecure", "--keylog", str(keylog)]
        if a.keys == "before":
            subprocess.run(send_keys, check=True, stdout=subprocess.DEVNULL, env=child_env(), timeout=120)
        rx0 = iface_counters()
        t0 = time.monotonic()
        if a.keys == "parallel":
            keysend = subprocess.Popen(send_keys, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       env=child_env())
        replay = subprocess.Popen(tcpreplay_cmd(cap, rate, a.unit), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        samples: list[tuple[float, float, float]] = []  # (t, packets, exported)
        last_change = time.monotonic()
        replay_out = ""
        prev = (-1.0, -1.0)
        while True:
            time.sleep(SAMPLE)
            now = time.monotonic()
            s = scrape(mport)
            if s is not None:
                cur = (s.get("tlsmirror_packets_total"), s.get("tlsmirror_exported_total"))
                samples.append((now - t0, *cur))
                if cur != prev:
                    prev, last_change = cur, now
                if s.get("tlsmirror_export_queue_depth") > 0 or ring_backlog(s) > 0:
                    last_change = now
            if replay is not None and replay.poll() is not None:
                replay_out = replay.stdout.read() if replay.stdout else ""
                replay = None
                last_change = max(last_change, now)
            busy = replay is not None or (keysend is not None and keysend.poll() is None)
            if not busy and now - last_change >= a.quiet:
                break
            if now > deadline or daemon.poll() is not None:
                res.error = "timeout" if now > deadline else f"daemon exited ({daemon.returncode})"
                break
        if replay is not None:
            replay.kill()
            replay_out = replay.communicate()[0] or ""
        parse_tcpreplay(replay_out, res)
        rx1 = iface_counters()
        res.iface_rx, res.iface_dropped = rx1[0] - rx0[0], rx1[1] - rx0[1]
        if keysend is not None:
            if keysend.poll() is None:
                keysend.kill()
            _, kerr = keysend.communicate()
            if keysend.returncode:
                res.error = res.error or f"keys send failed: {kerr.decode(errors='replace').strip()[-200:]}"
        pids = [daemon.pid, *children_of(daemon.pid)]
        cpu1 = {p: cpu_seconds(p) for p in pids}
        res.cpu_parent = cpu1.get(daemon.pid, 0.0) - cpu0.get(daemon.pid, 0.0)
        res.cpu_workers = sum(v - cpu0.get(p, 0.0) for p, v in cpu1.items() if p != daemon.pid)
        s = scrape(mport)
        if s is not None:
            res.kernel_packets = int(s.get("tlsmirror_kernel_packets_total"))
            res.kernel_drops = int(s.get("tlsmirror_kernel_drops_total"))
            res.internal_drops = int(s.total("tlsmirror_dropped_total"))
            res.packets = int(s.get("tlsmirror_packets_total"))
            res.exchanges = int(s.total("tlsmirror_exchanges_total"))
            res.late_key = int(s.total("tlsmirror_tls_held_sessions_total"))
            res.backlog = ring_backlog(s)
            res.restarts = int(s.get("tlsmirror_worker_restarts_total"))
            rss = s.labelled("tlsmirror_memory_rss_bytes", "process")
            res.rss_parent_mib = rss.get("parent", 0.0) / (1 << 20)
            res.rss_worker_mib = max((v for k, v in rss.items() if k != "parent"), default=0.0) / (1 << 20)
        res.load = (load0, os.getloadavg()[0])
        final_exported = samples[-1][2] if samples else 0.0
        first_final = next((t for t, _p, e in samples if e >= final_exported), 0.0)
        res.caught_up_s = first_final
    finally:
        stopped = stop_daemon(daemon, a.drain_timeout)
    parse_stopped(err_path, res)
    if not stopped:
        res.error = res.error or "daemon did not stop"
    try:
        with open(out, "rb") as fh:
            res.lines = sum(1 for _ in fh)
    except OSError:
        res.lines = 0
    if not a.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return res


def ring_backlog(s: Scrape) -> int:
    """Frames the kernel gave the capture sockets that the workers have not read (as of their last stats:
    PACKET_STATISTICS counts dropped frames in its packets too)."""
    passed = s.get("tlsmirror_kernel_packets_total") - s.get("tlsmirror_kernel_drops_total")
    return max(0, int(passed - s.get("tlsmirror_packets_total")))


def _has_worker(s: Scrape, index: int) -> bool:
    return f'tlsmirror_memory_rss_bytes{{process="worker{index}"}}' in s.values


def stop_daemon(daemon: subprocess.Popen[bytes], timeout: float) -> bool:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)  # its own session: the daemon and its workers only
        daemon.wait(10)
        return False


def parse_stopped(log_path: Path, res: Result) -> None:
    """Outcomes from the daemon's last log line ("stopped: ... TLS connections: decrypted 600, ...")."""
    msg = daemon_stopped(log_path)
    if msg is None:
        return
    m = re.search(r"TLS connections: (.*), \d+ worker restarts", msg)
    if m and m.group(1) != "none":
        for part in m.group(1).split(", "):
            name, _, n = part.rpartition(" ")
            if n.isdigit():
                res.outcomes[name] = int(n)
    res.decrypted = res.outcomes.get("decrypted", 0)


# ---------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="worker counts to try (comma-separated)")
    ap.add_argument("--mbps", help="rates in Mbit/s, rising; 0 = --topspeed (default: 20,40,80,160,320,0; "
                                   "with --passes: 40,80,160,240,320,400)")
    ap.add_argument("--pps", help="rates in packets/s instead of --mbps (0 = --topspeed)")
    ap.add_argument("--keys", choices=("parallel", "before", "preload"), default="parallel",
                    help="secrets through the key listener with the traffic (default), before it, or --keylog")
    ap.add_argument("--buffer-mib", type=int, help="capture.buffer_bytes per worker (default: the daemon's, 64)")
    ap.add_argument("--quick", action="store_true", help="rates 40, 160, top only (about 2 minutes)")
    ap.add_argument("--stop-after", type=int, default=2,
                    help="stop raising the rate after this many incomplete runs in a row (0: never)")
    ap.add_argument("--passes", type=int, default=1,
                    help="replay the capture N times over (new client ports each pass, built once in "
                         "bench/data/): sustained load instead of one burst the socket buffer can absorb")
    ap.add_argument("--run-timeout", type=float, help="seconds per run, start to caught up (60 + 40 x passes)")
    ap.add_argument("--quiet", type=float, default=QUIET,
                    help="seconds with packets and exports still (and no frame unread) that end a run (2.5)")
    ap.add_argument("--drain-timeout", type=float, default=30.0)
    ap.add_argument("--keep", action="store_true", help="keep each run's output and log in bench/data/daemon/")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--reset-lab", action="store_true", help="take a lab that is up (stale) down first")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a configuration key for the daemon (repeatable), e.g. inventory.enabled=false")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root: network namespaces, tcpreplay, AF_PACKET capture", file=sys.stderr)
        return 1
    for tool in ("tcpreplay", "ip", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} not found (apt-get install tcpreplay iproute2 nginx-light)", file=sys.stderr)
            return 1
    if not (LAB / "lab.sh").exists():
        print(f"lab not found at {LAB} (set TLSMIRROR_LAB)", file=sys.stderr)
        return 1
    cap, keylog = require_capture()
    if a.passes > 1:
        from bench_soak import soak_file

        cap = soak_file(cap, a.passes, 1.0)
    workers = [int(x) for x in a.workers.split(",") if x]
    a.unit, a.unit_label = ("pps", "pps") if a.pps else ("mbps", "Mbps")
    default = "20,40,80,160,320,0" if a.passes == 1 else "40,80,160,240,320,400"
    rates = [x.strip() for x in (a.pps or a.mbps or default).split(",") if x.strip()]
    if a.quick:
        rates = (["40", "160", "0"] if a.passes == 1 else ["20", "40", "80"]) if not a.pps else rates[:3]
    if lab_is_up():
        if not a.reset_lab:
            print(f"the lab is already up ({IFACE} exists): wait for the other run, or --reset-lab",
                  file=sys.stderr)
            return 1
        lab("down")
    work_root = DATA / "daemon" if a.keep else Path(tempfile.mkdtemp(prefix="tm-bench-daemon-"))
    work_root.mkdir(parents=True, exist_ok=True)

    def on_term(signo: int, _frame: object) -> None:
        raise SystemExit(128 + signo)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    results: list[Result] = []
    try:
        lab("up")
        print(f"lab up; capture {cap.name}: {a.passes * CONNS} connections, {a.passes * CONNS * REQS} exchanges; "
              f"keys: {a.keys}; capture buffer {a.buffer_mib or 64} MiB per worker; {os.cpu_count()} CPUs",
              flush=True)
        for w in workers:
            misses = 0
            for rate in rates:
                r = run_one(cap, keylog, w, rate, a, work_root)
                results.append(r)
                print(f"  workers={w} rate={r.rate}: sent {r.sent_packets} pkts at {r.sent_mbps:.0f} Mbps "
                      f"({r.sent_pps:.0f} pps) in {r.send_s:.2f} s; {IFACE} received {r.iface_rx} "
                      f"(dropped {r.iface_dropped}), sockets passed {r.kernel_packets}, workers read "
                      f"{r.packets}; kernel drops {r.kernel_drops}, "
                      f"internal drops {r.internal_drops}, unread at the stop {r.backlog}, lines {r.lines}, "
                      f"decrypted {r.decrypted}/{CONNS * a.passes}, "
                      f"late-key {r.late_key}, caught up {r.caught_up_s:.1f} s, CPU {r.cpu_parent:.1f}+"
                      f"{r.cpu_workers:.1f} s{' ERROR ' + r.error if r.error else ''}", flush=True)
                misses = 0 if r.complete else misses + 1
                if a.stop_after and misses >= a.stop_after:
                    break
    finally:
        lab("down")
        if not a.keep:
            shutil.rmtree(work_root, ignore_errors=True)
    report(results, f"{cap.name}, {a.passes} pass{'es' if a.passes > 1 else ''} "
                    f"({a.passes * CONNS * REQS:,} exchanges), keys {a.keys}, {os.cpu_count()} CPUs"
                    + "".join(f", --set {kv}" for kv in a.set or ()))
    if a.json:
        Path(a.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0 if results and all(not r.error for r in results) else 1


def report(results: list[Result], what: str = "") -> None:
    """One table of every run (with the machine's load average during it), then per worker count the
    highest rate with zero drops."""
    header = ["workers", "rate asked", "sent Mbps", "sent pps", "kernel drops", "internal drops", "lines",
              "decrypted", "late-key", "caught up s", "exch/s", "CPU s (parent+workers)", "CPU s/1k exch",
              "RSS MiB parent/worker", "load avg", "complete"]
    rows = []
    for r in results:
        rows.append([str(r.workers), r.rate, f"{r.sent_mbps:.0f}", f"{r.sent_pps:,.0f}", f"{r.kernel_drops:,}",
                     f"{r.internal_drops:,}", f"{r.lines:,}", f"{r.decrypted}/{r.passes * CONNS}", str(r.late_key),
                     f"{r.caught_up_s:.1f}",
                     f"{r.lines / r.caught_up_s:,.0f}" if r.caught_up_s else "-",
                     f"{r.cpu_parent:.1f}+{r.cpu_workers:.1f}", f"{r.cpu_per_1000:.3f}",
                     f"{r.rss_parent_mib:.0f}/{r.rss_worker_mib:.0f}", f"{r.load[0]:.1f}-{r.load[1]:.1f}",
                     "yes" if r.complete else ("ERROR: " + r.error if r.error else "no")])
    print()
    if what:
        print(f"{what}; load average (1 min) at start-end of each run in the table")
    print_table(header, rows)
    print()
    for w in sorted({r.workers for r in results}):
        ok = [r for r in results if r.workers == w and r.complete]
        if ok:
            best = max(ok, key=lambda r: r.sent_mbps)
            print(f"workers={w}: highest complete rate {best.sent_mbps:.0f} Mbps ({best.sent_pps:,.0f} pps, "
                  f"asked {best.rate}); CPU {best.cpu_per_1000:.3f} s per 1,000 exchanges")
        else:
            print(f"workers={w}: no complete run")


if __name__ == "__main__":
    sys.exit(main())
