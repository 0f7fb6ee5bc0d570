#!/usr/bin/env python3
"""CPU of the daemon's --pcap path against `replay` on the same capture (issue 13: at most 1.3x).

    python3 bench/bench_daemon_pcap.py [--workers 1,2] [--runs 3] [--capture FILE --keylog FILE]

Interleaved, --runs times each:

    tlsmirror replay CAP --keylog K -o /dev/null
    tlsmirror run --pcap CAP --keylog K --no-keys --workers N -o /dev/null --metrics-port P --pcap-linger 0

(the daemon in its default configuration otherwise: the live inventory on, each worker with its own
exporters). CPU = user + system time of the command and every process it waited for (`os.wait4`: the
parent and its workers), so it does not depend on how loaded the machine is, unlike wall time (shown
only for reference). Prints the median CPU per 1,000 exchanges of each and its ratio to replay's, with
the load average. No root needed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CONNS, REQS, print_table, require_capture, timed_run, tlsmirror_cmd, warm_bytecode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="worker counts (comma-separated)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--capture", help="another capture (default: the benchmark capture)")
    ap.add_argument("--keylog", help="its key log")
    ap.add_argument("--exchanges", type=int, default=CONNS * REQS, help="exchanges in the capture")
    ap.add_argument("--no-inventory", action="store_true",
                    help="also each worker count with inventory.enabled=false (the live inventory's share)")
    a = ap.parse_args()
    if a.capture:
        cap, keylog = Path(a.capture), Path(a.keylog) if a.keylog else None
    else:
        cap, keylog = require_capture()
    keys = ["--keylog", str(keylog)] if keylog else []
    workers = [int(w) for w in a.workers.split(",") if w]
    warm_bytecode("replay")
    cmds: dict[str, list[str]] = {"replay": [*tlsmirror_cmd(), "replay", str(cap), *keys, "-o", os.devnull]}
    for n in workers:
        for inventory in (True, False) if a.no_inventory else (True,):
            name = f"run --pcap, {n} worker{'s' if n > 1 else ''}" + ("" if inventory else ", no inventory")
            cmds[name] = [*tlsmirror_cmd(), "run", "--pcap", str(cap), *keys, "--no-keys", "--workers", str(n),
                          "-o", os.devnull, "--pcap-linger", "0", "--log-level", "warning", "--metrics-port",
                          "PORT", *(() if inventory else ("--set", "inventory.enabled=false"))]
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    wall: dict[str, list[float]] = {k: [] for k in cmds}
    loads: list[float] = []
    for r in range(a.runs):
        for name, cmd in cmds.items():
            cmd = [str(free_port()) if c == "PORT" else c for c in cmd]
            t = timed_run(cmd)
            if t.returncode != 0:
                sys.exit(f"{name} failed ({t.returncode}): {t.stderr.decode(errors='replace')[-2000:]}")
            cpu[name].append(t.user + t.sys)
            wall[name].append(t.wall)
            loads.append(os.getloadavg()[0])
            print(f"run {r + 1} {name}: CPU {t.user + t.sys:.2f} s (user {t.user:.2f}, sys {t.sys:.2f}), "
                  f"wall {t.wall:.2f} s", file=sys.stderr)
    ref = statistics.median(cpu["replay"])
    rows = []
    for name in cmds:
        c = statistics.median(cpu[name])
        rows.append([name, f"{c:.2f}", f"{1000 * c / a.exchanges:.4f}", f"{c / ref:.2f}x",
                     f"{statistics.median(wall[name]):.2f}"])
    print(f"\n{cap.name}: {a.exchanges:,} exchanges; medians of {a.runs} interleaved runs; "
          f"load average during the runs {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
    print_table(["command", "CPU s (parent+workers)", "CPU s / 1k exch", "vs replay", "wall s (loaded)"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
