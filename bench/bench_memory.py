#!/usr/bin/env python3
"""Memory check: one in-process Engine fed the benchmark capture N times over; RSS must stay flat.

    python3 bench/bench_memory.py [--passes 10] [--http] [--fresh-secrets] [--tolerance-mib 8]

Each pass replays every frame of the capture with its timestamps moved past the previous pass and the
client port of every connection remapped, so each pass brings new TCP connections (the same TLS sessions,
so the key log still unlocks them; its secrets are re-announced at the start of each pass, as a key feed
would). Every connection of the capture closes, so after a pass nothing should be left but bounded caches.
After each pass: gc, then RSS (/proc/self/statm), open flows and the engine's stores.

--http also parses HTTP (the `replay` path). --fresh-secrets adds, per pass, as many never-matched key log
secrets as the capture has connections (what a real feed brings for sessions the sensor never sees), to
show whether the key store is bounded in time. Exit 1 when RSS grows by more than --tolerance-mib between
the second pass and the last (the first pass warms up allocators and caches).
"""

from __future__ import annotations

import argparse
import gc
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, client_port_offset, require_capture

sys.path.insert(0, str(REPO / "src"))

from tlsmirror.keys.events import Secret
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.shell.offline.pcapfile import CapturedFrame, read_capture

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / (1 << 20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--http", action="store_true", help="also parse HTTP (ApiCall events)")
    ap.add_argument("--fresh-secrets", action="store_true",
                    help="add unmatched secrets each pass, like a real key feed")
    ap.add_argument("--tolerance-mib", type=float, default=8.0)
    a = ap.parse_args()
    cap, keylog = require_capture()
    secrets, _ = parse_keylog(keylog.read_bytes())
    frames: list[tuple[int, bytes, float, int]] = []
    for item in read_capture(str(cap)):
        if type(item) is CapturedFrame:
            off = client_port_offset(item.data) if item.linktype == 1 else -1
            frames.append((item.linktype, item.data, item.ts, off))
    if not frames:
        sys.exit("no frames in the capture")
    t0, t1 = frames[0][2], frames[-1][2]
    span = (t1 - t0) + 60.0
    conns = len({s.ident for s in secrets})
    engine = Engine(EngineConfig(http=a.http))
    gc.collect()
    base = rss_mib()
    print(f"{cap.name}: {len(frames)} frames, {conns} TLS sessions; RSS with frames loaded {base:.1f} MiB")
    print(f"{'pass':>4} {'RSS MiB':>8} {'growth':>7} {'open flows':>10} {'keys':>8} {'cache':>6} "
          f"{'decrypted':>9} {'events':>8} {'s':>6}")
    history: list[float] = []
    keys_seen: list[int] = []
    fresh = 0
    for p in range(a.passes):
        shift = p * span
        shift_port = p * 7919
        started = time.perf_counter()
        t_pass = t0 + shift
        engine.add_secrets(secrets, t_pass)
        if a.fresh_secrets:
            extra = [Secret("CLIENT_RANDOM", (fresh + i).to_bytes(32, "big"), os.urandom(48))
                     for i in range(conns)]
            fresh += conns
            engine.add_secrets(extra, t_pass)
        decrypted = events = 0
        feed = engine.feed_frame
        for linktype, data, ts, off in frames:
            if off >= 0 and p:
                (port,) = struct.unpack_from("!H", data, off)
                port = (port - 1024 + shift_port) % (65536 - 1024) + 1024
                data = data[:off] + port.to_bytes(2, "big") + data[off + 2:]
            out = feed(linktype, data, ts + shift)
            if out:
                events += len(out)
                for ev in out:
                    if getattr(ev, "outcome", None) == "decrypted":
                        decrypted += 1
        out = engine.expire(t1 + shift + 30.0)
        decrypted += sum(1 for ev in out if getattr(ev, "outcome", None) == "decrypted")
        events += len(out)
        del out
        gc.collect()
        rss = rss_mib()
        history.append(rss)
        keys_seen.append(len(engine.keys))
        print(f"{p + 1:>4} {rss:>8.1f} {rss - history[0]:>+7.1f} {engine.tcp.open_flows:>10} "
              f"{len(engine.keys):>8} {len(engine.tls.cache):>6} {decrypted:>9} {events:>8} "
              f"{time.perf_counter() - started:>6.1f}", flush=True)
        if decrypted != conns:
            print(f"  note: {decrypted} of {conns} connections reported decrypted in this pass")
    if len(history) < 3:
        print("need 3 or more passes to judge growth")
        return 0
    growth = history[-1] - history[1]
    per_pass = growth / (len(history) - 2)
    ok = growth <= a.tolerance_mib
    print(f"RSS pass 2 -> {len(history)}: {growth:+.1f} MiB ({per_pass:+.2f} MiB/pass): "
          + ("flat" if ok else f"GROWS (tolerance {a.tolerance_mib:g} MiB)"))
    if keys_seen[-1] > keys_seen[1]:
        print(f"note: the key store grew from {keys_seen[1]} to {keys_seen[-1]} secrets: "
              "it is bounded only by entry count, not by age")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
