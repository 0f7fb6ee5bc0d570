#!/usr/bin/env python3
"""Time `tlsmirror replay --workers N` on the benchmark capture several times over (issue 13), beside
one process and tshark doing the same work.

    python3 bench/bench_replay_workers.py [--passes 4] [--workers 1,2] [--runs 3] [--check] [--no-tshark]

The capture is bench/data/https-600x50.pcap written --passes times into one file (timestamps and client
ports moved per pass: every pass brings new connections; ``bench_soak.soak_file``, cached in bench/data).
Each tool runs --runs times in interleaved rounds; the best wall time is reported with CPU time (the
process and its workers, from ``os.wait4``), exchanges/s, peak RSS and the speed-up over --workers 1.
Each worker's CPU time is sampled from ``/proc`` (every 10 ms, while it runs): "path CPU" is the
parent's CPU plus the busiest worker's, the CPU time the run would take on idle cores, and the CPU
speed-up is that of --workers 1 over that of --workers 2 (on a loaded machine wall time says less).

tlsmirror: ``tlsmirror replay CAP --keylog K -o /dev/null [--workers N]`` (exchanges from its summary).
tshark: the HTTP fields of bench_replay.py (exchanges = responses printed).
--check: exit 1 unless --workers 2 is at least 1.7x faster (wall) than --workers 1 with every exchange.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_replay import tshark_exchanges
from bench_soak import soak_file
from common import CONNS, REQS, Timing, _drain, child_env, print_table, require_capture, tlsmirror_cmd, warm_bytecode

TARGET = 1.7
_TICK = os.sysconf("SC_CLK_TCK")


def _children_cpu(pid: int, seen: dict[int, float]) -> None:
    """CPU seconds of each child of ``pid`` so far, into ``seen`` (the largest reading per child)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(x) for x in fh.read().split()]
    except OSError:
        return
    for kid in kids:
        try:
            with open(f"/proc/{kid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
        if cpu > seen.get(kid, 0.0):
            seen[kid] = cpu


def timed_run(cmd: list[str], *, stdout_path: str) -> tuple[Timing, list[float]]:
    """Run ``cmd``: wall, CPU (with its workers, ``os.wait4``), peak RSS; and each worker's CPU seconds."""
    workers: dict[int, float] = {}
    with open(stdout_path, "wb") as out_fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_fh, stderr=subprocess.PIPE, env=child_env())
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                _children_cpu(proc.pid, workers)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, err = _drain(proc)
        done.set()
        sampler.join()
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    return Timing(wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss, code, out, err), sorted(workers.values())


def path_cpu(t: Timing, workers: list[float]) -> float:
    """The parent's CPU plus its busiest worker's: what the run costs on idle cores."""
    total = t.user + t.sys
    if not workers:
        return total
    return total - sum(workers) + max(workers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=4, help="the capture this many times over (default 4)")
    ap.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--plain", action="store_true", help="also time replay without --workers")
    ap.add_argument("--no-tshark", action="store_true", help="skip tshark (slow on the large capture)")
    ap.add_argument("--check", action="store_true", help=f"exit 1 unless 2 workers are >= {TARGET:g}x 1")
    a = ap.parse_args()
    cap, keylog = require_capture()
    big = soak_file(cap, a.passes, 1.0)
    expected = CONNS * REQS * a.passes
    counts = [int(x) for x in a.workers.split(",") if x]
    base = [*tlsmirror_cmd(), "replay", str(big), "--keylog", str(keylog), "-o", os.devnull]
    cmds: dict[str, list[str]] = {}
    if a.plain:
        cmds["replay"] = base
    for n in counts:
        cmds[f"replay --workers {n}"] = [*base, "--workers", str(n)]
    if not a.no_tshark:
        cmds["tshark"] = ["tshark", "-n", "-r", str(big), "-o", f"tls.keylog_file:{keylog}", "-Y", "http",
                          "-T", "fields", "-e", "http.request.method", "-e", "http.request.uri",
                          "-e", "http.response.code"]
    print(f"{big}: {big.stat().st_size / 1e6:.0f} MB, {expected} exchanges; {os.cpu_count()} CPUs")
    for cmd in cmds.values():
        print("$ " + " ".join(cmd), flush=True)
    warm_bytecode("replay")
    best: dict[str, Timing] = {}
    best_path: dict[str, float] = {}  # the least path CPU of each tool's rounds
    per_worker: dict[str, list[float]] = {}
    exchanges: dict[str, int] = {}
    failures: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="tlsmirror-bench-"))
    try:
        failed: set[str] = set()
        for i in range(a.runs):  # interleaved rounds: a slow spell of the machine hits every tool alike
            for tool, cmd in cmds.items():
                if tool in failed:
                    continue
                t, workers = timed_run(cmd, stdout_path=str(tmp / "out"))
                path = path_cpu(t, workers)
                print(f"  round {i + 1} {tool}: {t.wall:.2f} s wall, {t.user + t.sys:.2f} s CPU "
                      f"(workers {', '.join(f'{w:.2f}' for w in workers) or '-'}; path {path:.2f}), "
                      f"{t.max_rss_kib / 1024:.0f} MiB peak RSS, exit {t.returncode}; "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
                if t.returncode != 0:
                    failures.append(f"{tool} exited {t.returncode}: " + t.stderr.decode(errors="replace")[-300:])
                    failed.add(tool)
                    continue
                if tool not in best or t.wall < best[tool].wall:
                    best[tool] = t
                if tool not in best_path or path < best_path[tool]:
                    best_path[tool] = path
                    per_worker[tool] = workers
                if tool == "tshark":
                    exchanges[tool] = min(tshark_exchanges(tmp / "out"))
                else:
                    m = re.search(rb"(\d+) exchanges", t.stderr)
                    exchanges[tool] = int(m.group(1)) if m else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for tool, n in exchanges.items():
        if n != expected:
            failures.append(f"{tool} reported {n} exchanges, the capture has {expected}")
    one = best.get("replay --workers 1")
    ref = best.get("tshark")
    rows = []
    for tool, t in best.items():
        n = exchanges.get(tool, 0)
        rows.append([tool, f"{t.wall:.2f}", f"{t.user + t.sys:.2f}", f"{best_path[tool]:.2f}",
                     ", ".join(f"{w:.2f}" for w in per_worker[tool]) or "-", str(n), f"{n / t.wall:,.0f}",
                     f"{t.max_rss_kib / 1024:.0f}", f"{one.wall / t.wall:.2f}x" if one else "-",
                     f"{(n / t.wall) / (exchanges['tshark'] / ref.wall):.2f}x"
                     if ref and exchanges.get("tshark") else "-"])
    print()
    print(f"best of {a.runs} runs, the capture {a.passes}x over ({expected} HTTP exchanges):")
    print_table(["tool", "wall s", "CPU s", "path CPU s", "workers' CPU s", "exchanges", "exchanges/s",
                 "peak RSS MiB", "vs 1 worker", "vs tshark"], rows)
    rc = 0
    for f in failures:
        print("FAIL:", f)
        rc = 1
    two = best.get("replay --workers 2")
    if one and two:
        ratio = one.wall / two.wall
        print(f"target --workers 2 >= {TARGET:g}x --workers 1 (wall): {ratio:.2f}x: "
              + ("met" if ratio >= TARGET else "NOT met"))
        cpu_ratio = best_path["replay --workers 1"] / best_path["replay --workers 2"]
        print(f"by path CPU (parent + busiest worker, best rounds): {cpu_ratio:.2f}x: "
              + ("met" if cpu_ratio >= TARGET else "NOT met"))
        if a.check and ratio < TARGET:
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
