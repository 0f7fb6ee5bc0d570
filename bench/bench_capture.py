#!/usr/bin/env python3
"""Capture cost: the TPACKET_V3 ring against one packet per recv, on a veth pair fed by tcpreplay.

    sudo python3 bench/bench_capture.py [--loops 4] [--runs 3] [--mbps 0] [--modes ring,recv]

For each mode a reader process opens one LiveSocket (as a worker does: poll, read_batch, stamped) on
one end of a fresh veth pair while tcpreplay puts the benchmark capture (bench/data/https-600x50.pcap,
--loops times over) on the other end, at top speed or --mbps. The reader stops when nothing arrived for
a second after tcpreplay ended and reports the frames it read, the kernel's packets and drops
(PACKET_STATISTICS), and its own CPU time (getrusage), so: frames/s of CPU and drops. The runs of the
modes are interleaved (ring, recv, ring, recv, ...); medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, require_capture

sys.path.insert(0, str(REPO / "src"))

TX, RX = "tmbcap0", "tmbcap1"


def reader(mode: str, ready_fd: int, ring_mib: int, buffer_mib: int) -> None:
    from tlsmirror.shell.daemon.capture import LiveSocket

    ls = LiveSocket(RX, program=None, fanout_group=None, ring_bytes=(ring_mib << 20) if mode == "ring" else 0,
                    buffer_bytes=buffer_mib << 20)
    assert ls.mode == mode, ls.fallback_reason
    poller = select.poll()
    poller.register(ls.fileno(), select.POLLIN)
    os.write(ready_fd, b"r")
    frames = wakeups = size = 0
    first = last = 0.0
    batch: list[bytes] = []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    while True:
        ev = poller.poll(1000)
        if not ev:
            if frames:
                break
            continue
        wakeups += 1
        batch.clear()
        size += ls.read_batch(256, batch)
        if batch:
            stamped = ls.stamped(batch)
            frames += len(stamped)
            if not first:
                first = time.monotonic()
            last = time.monotonic()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    packets, drops = ls.read_stats()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    print(json.dumps({"mode": mode, "frames": frames, "bytes": size, "kernel_packets": packets,
                      "kernel_drops": drops, "cpu": cpu, "wall": last - first,
                      "wakeups": wakeups}), flush=True)


def run_one(mode: str, cap: Path, loops: int, mbps: float, ring_mib: int, buffer_mib: int) -> dict[str, float]:
    r, w = os.pipe()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    child = subprocess.Popen([sys.executable, __file__, "--reader", mode, "--ready-fd", str(w),
                              "--ring-mib", str(ring_mib), "--buffer-mib", str(buffer_mib)],
                             pass_fds=(w,), stdout=subprocess.PIPE, text=True, env=env)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    speed = ["--topspeed"] if not mbps else [f"--mbps={mbps:g}"]
    subprocess.run(["tcpreplay", "-q", "-i", TX, *speed, f"--loop={loops}", str(cap)], check=True,
                   capture_output=True)
    out, _ = child.communicate(timeout=120)
    res: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loops", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mbps", type=float, default=0.0, help="tcpreplay rate (0: --topspeed)")
    ap.add_argument("--modes", default="ring,recv")
    ap.add_argument("--ring-mib", type=int, default=32, help="capture.ring_bytes of the ring mode")
    ap.add_argument("--buffer-mib", type=int, default=64, help="capture.buffer_bytes of the recv mode")
    ap.add_argument("--reader", help=argparse.SUPPRESS)
    ap.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.reader:
        reader(a.reader, a.ready_fd, a.ring_mib, a.buffer_mib)
        return 0
    if os.geteuid() != 0 or shutil.which("tcpreplay") is None:
        sys.exit("needs root and tcpreplay")
    cap, _ = require_capture()
    subprocess.run(["ip", "link", "del", TX], capture_output=True)
    subprocess.run(["ip", "link", "add", TX, "type", "veth", "peer", "name", RX], check=True)
    for name in (TX, RX):
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1"], capture_output=True)
        subprocess.run(["ip", "link", "set", name, "up", "mtu", "9000"], check=True)
    results: dict[str, list[dict[str, float]]] = {}
    try:
        modes = a.modes.split(",")
        for i in range(a.runs):
            for mode in modes:
                res = run_one(mode, cap, a.loops, a.mbps, a.ring_mib, a.buffer_mib)
                results.setdefault(mode, []).append(res)
                print(f"run {i + 1} {mode:>4}: {res['frames']:>8.0f} frames, drops {res['kernel_drops']:>7.0f}, "
                      f"CPU {res['cpu']:.2f} s, wall {res['wall']:.2f} s, {res['wakeups']:.0f} wake-ups",
                      flush=True)
    finally:
        subprocess.run(["ip", "link", "del", TX], capture_output=True)
    print(f"\n{'mode':>5} {'frames':>8} {'drops':>7} {'CPU s':>6} {'frames/s CPU':>12} {'frames/s wall':>13} "
          f"{'frames/wake':>11}")
    for mode, rs in results.items():
        frames = statistics.median(r["frames"] for r in rs)
        drops = statistics.median(r["kernel_drops"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        wall = statistics.median(r["wall"] for r in rs)
        per_wake = statistics.median(r["frames"] / max(1, r["wakeups"]) for r in rs)
        print(f"{mode:>5} {frames:>8.0f} {drops:>7.0f} {cpu:>6.2f} {frames / cpu:>12,.0f} "
              f"{frames / max(wall, 1e-9):>13,.0f} {per_wake:>11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
