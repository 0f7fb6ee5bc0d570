#!/usr/bin/env python3
"""The cost of the key fabric (issue 14): `tlsmirror run --pcap` with every secret from Redis, beside the
same run with the secrets from the key log file, and tshark doing the same work.

    python3 bench/bench_fabric.py [--runs 3] [--workers 2] [--check] [--no-tshark]

- without the fabric: ``tlsmirror run --pcap CAP --keylog KEYLOG --no-keys --no-metrics -o /dev/null``;
- with the fabric: a real local ``redis-server`` (a free port on 127.0.0.1, no persistence) holding every
  secret of the key log as fabric entries (``tlsmirror:secret:<LABEL>:<ident>``, written again before each
  run), and ``tlsmirror run --pcap CAP --no-keys ... --set keys.fabric=redis://...``: no key log, every
  secret comes from the fabric's snapshot (the run checks the sensor's log line ``fabric: N secrets
  loaded`` against the key log's count, and that every call was exported);
- tshark: the HTTP fields of bench_replay.py (exchanges = responses printed).

Each runs --runs times in interleaved rounds (a slow spell of the shared machine falls on each alike).
Measured: CPU time (user + system) of the sensor, its parent and its workers together (``os.wait4`` of the
parent, which reaps its workers), and for the fabric runs also redis-server's CPU time over the run (from
/proc/PID/stat); wall time is printed but means little on a loaded machine. Medians of the runs; the ratio
fabric/no fabric of the sensor's CPU time is the figure (target: within 10%).
--check: exit 1 unless that ratio is at most 1.10 and every run exported every call.

CPU time moves by tens of percent between runs on a shared machine. ``--callgrind SLICE`` counts
instructions instead, which do not move: each variant once on a slice of the capture (default
bench/data/small.pcap, ``tcpdump -r CAP -c 12000 -w SLICE``) under ``valgrind --tool=callgrind``, every
process of the sensor counted (parent and workers: one callgrind file each), with Python from
``sys.executable`` (run the script with the real interpreter, not a pyenv shim).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_replay import tshark_exchanges
from common import (
    CONNS,
    DATA,
    REPO,
    REQS,
    Timing,
    child_env,
    print_table,
    require_capture,
    timed_run,
    tlsmirror_cmd,
    warm_bytecode,
)

sys.path.insert(0, str(REPO / "src"))

TARGET = 1.10
CLK_TCK = os.sysconf("SC_CLK_TCK")
NO_FABRIC, FABRIC, TSHARK = "run --keylog", "run, keys.fabric", "tshark"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Redis:
    """A local redis-server without persistence, for the length of the benchmark."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            sys.exit("redis-server is not installed (Debian: redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(workdir),
                                      "--logfile", str(workdir / "redis.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=30)
        end = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    sys.exit("redis-server did not start: " + (workdir / "redis.log").read_text()[-300:])
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def seed(self, keylog: Path, ttl: int) -> int:
        """Every secret of the key log as a fabric entry (what a sensor publishes); returns the count."""
        from tlsmirror.keys.keylog import parse_keylog
        from tlsmirror.shell.fabric.entries import SECRET_PATTERN, secret_key, secret_line

        secrets, problems = parse_keylog(keylog.read_text())
        if problems:
            sys.exit(f"{keylog}: {len(problems)} lines do not parse")
        old = list(self.client.scan_iter(match=SECRET_PATTERN, count=1000))
        pipe = self.client.pipeline(transaction=False)
        for key in old:
            pipe.delete(key)
        for s in secrets:
            pipe.set(secret_key(s), secret_line(s), ex=ttl)
        pipe.execute()
        return len({secret_key(s) for s in secrets})

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def callgrind_instructions(cmd: list[str], outdir: Path) -> tuple[int, list[int], str]:
    """Run ``cmd`` under callgrind; the instructions of all its processes, of each, and its stderr."""
    outdir.mkdir(parents=True)
    vg = ["valgrind", "--tool=callgrind", "--trace-children=yes",
          f"--callgrind-out-file={outdir}/cg.%p.out"]
    r = subprocess.run([*vg, *cmd], env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       check=False)
    counts = []
    for f in sorted(outdir.glob("cg.*.out")):
        m = re.search(r"^(?:summary|totals): (\d+)", f.read_text(errors="replace"), re.M)
        if m:
            counts.append(int(m.group(1)))
    return sum(counts), counts, r.stderr.decode(errors="replace")


def callgrind_main(a: argparse.Namespace, keylog: Path) -> int:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    sl = Path(a.callgrind)
    if not sl.exists():
        sys.exit(f"{sl} not found: tcpdump -r bench/data/https-600x50.pcap -c 12000 -w {sl}")
    tmp = Path(tempfile.mkdtemp(prefix="tlsmirror-bench-"))
    redis = Redis(tmp)
    base = [sys.executable, "-m", "tlsmirror", "run", "--pcap", str(sl), "--no-keys", "--no-metrics",
            "-o", os.devnull, "--workers", str(a.workers), "--log-format", "text"]
    cmds = {NO_FABRIC: [*base, "--keylog", str(keylog)],
            FABRIC: [*base, "--set", f"keys.fabric={redis.url}", "--set", "keys.fabric_timeout=600"]}
    warm_bytecode("replay")
    totals: dict[str, int] = {}
    rc = 0
    try:
        for i, (tool, cmd) in enumerate(cmds.items()):
            if tool == FABRIC:
                redis.seed(keylog, ttl=7200)
            print("$ valgrind --tool=callgrind --trace-children=yes " + " ".join(cmd), flush=True)
            total, each, err = callgrind_instructions(cmd, tmp / f"cg{i}")
            m = re.search(r"stopped: .*", err)
            print(f"  {tool}: {total / 1e6:,.1f} M instructions ({' + '.join(f'{c / 1e6:,.1f}' for c in each)} "
                  f"M by process); {m.group(0) if m else 'no stop line: ' + err[-300:]}", flush=True)
            if not m:
                rc = 1
            totals[tool] = total
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if totals.get(NO_FABRIC):
        print(f"fabric / no fabric, instructions: {totals[FABRIC] / totals[NO_FABRIC]:.3f}")
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="sensor workers (default 2)")
    ap.add_argument("--no-tshark", action="store_true", help="skip tshark")
    ap.add_argument("--check", action="store_true", help=f"exit 1 unless fabric/no fabric CPU <= {TARGET:g}")
    ap.add_argument("--callgrind", nargs="?", const=str(DATA / "small.pcap"), metavar="SLICE",
                    help="count instructions on a slice of the capture instead (default bench/data/small.pcap)")
    a = ap.parse_args()
    cap, keylog = require_capture()
    if a.callgrind:
        return callgrind_main(a, keylog)
    expected = CONNS * REQS
    tmp = Path(tempfile.mkdtemp(prefix="tlsmirror-bench-"))
    redis = Redis(tmp)
    base = [*tlsmirror_cmd(), "run", "--pcap", str(cap), "--no-keys", "--no-metrics", "-o", os.devnull,
            "--workers", str(a.workers), "--log-format", "text"]
    cmds: dict[str, list[str]] = {
        NO_FABRIC: [*base, "--keylog", str(keylog)],
        # fabric_timeout: how long the sensor waits for the snapshot before it reads packets; generous, so
        # that a slow spell of the machine cannot start the capture before every secret is in
        FABRIC: [*base, "--set", f"keys.fabric={redis.url}", "--set", "keys.fabric_timeout=60"],
    }
    if not a.no_tshark:
        cmds[TSHARK] = ["tshark", "-n", "-r", str(cap), "-o", f"tls.keylog_file:{keylog}", "-Y", "http",
                        "-T", "fields", "-e", "http.request.method", "-e", "http.request.uri",
                        "-e", "http.response.code"]
    print(f"{cap.name}: {expected} exchanges; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"redis-server on port {redis.port}")
    for cmd in cmds.values():
        print("$ " + " ".join(cmd), flush=True)
    warm_bytecode("replay")
    runs: dict[str, list[Timing]] = {tool: [] for tool in cmds}
    redis_cpu: list[float] = []
    failures: list[str] = []
    try:
        for i in range(a.runs):
            for tool, cmd in cmds.items():
                note = ""
                if tool == FABRIC:
                    n_secrets = redis.seed(keylog, ttl=3600)
                    r0 = redis.cpu()
                t = timed_run(cmd, stdout_path=str(tmp / "out"))
                err = t.stderr.decode(errors="replace")
                if tool == FABRIC:
                    redis_cpu.append(redis.cpu() - r0)
                    m = re.search(r"fabric: (\d+) secrets loaded", err)
                    loaded = int(m.group(1)) if m else -1
                    note = f", {loaded}/{n_secrets} secrets from the fabric, redis-server {redis_cpu[-1]:.2f} s CPU"
                    if loaded != n_secrets:
                        failures.append(f"round {i + 1}: the sensor loaded {loaded} of {n_secrets} secrets "
                                        "from the fabric")
                if tool == TSHARK:
                    n = min(tshark_exchanges(tmp / "out"))
                else:
                    m = re.search(r"stopped: .*?(\d+) API calls exported, TLS connections: decrypted (\d+)", err)
                    n = int(m.group(1)) if m else 0
                    if not m or int(m.group(2)) != CONNS:
                        failures.append(f"round {i + 1} {tool}: not every connection decrypted: "
                                        + (m.group(0) if m else err[-300:]))
                if t.returncode != 0 or n != expected:
                    failures.append(f"round {i + 1} {tool}: exit {t.returncode}, {n} of {expected} exchanges")
                runs[tool].append(t)
                print(f"  round {i + 1} {tool}: {t.user + t.sys:.2f} s CPU, {t.wall:.2f} s wall, "
                      f"{t.max_rss_kib / 1024:.0f} MiB peak RSS, {n} exchanges{note}", flush=True)
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def cpu(tool: str) -> float:
        return statistics.median(t.user + t.sys for t in runs[tool])

    rows = []
    for tool, ts in runs.items():
        c = cpu(tool)
        extra = f" + {statistics.median(redis_cpu):.2f}" if tool == FABRIC else ""
        rows.append([tool, f"{c:.2f}{extra}", f"{statistics.median(t.wall for t in ts):.2f}",
                     f"{expected / c:,.0f}", f"{cpu(NO_FABRIC) / c:.2f}x",
                     f"{cpu(TSHARK) / c:.2f}x" if TSHARK in runs else "-"])
    print()
    print(f"medians of {a.runs} runs, {expected} HTTP exchanges, --workers {a.workers} "
          "(CPU s: the sensor's parent and workers; + redis-server's for the fabric):")
    print_table(["tool", "CPU s", "wall s", "exchanges per CPU s", "vs no fabric", "vs tshark"], rows)
    ratio = cpu(FABRIC) / cpu(NO_FABRIC)
    with_redis = (cpu(FABRIC) + statistics.median(redis_cpu)) / cpu(NO_FABRIC)
    met = ratio <= TARGET
    print(f"fabric / no fabric, sensor CPU time: {ratio:.3f} (target <= {TARGET:.2f}: "
          + ("met" if met else "NOT met") + f"); with redis-server's CPU added: {with_redis:.3f}")
    rc = 0
    for f in failures:
        print("FAIL:", f)
        rc = 1
    if a.check and not met:
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
