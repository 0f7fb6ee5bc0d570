#!/usr/bin/env python3
"""Memory check: one in-process Engine fed the benchmark capture N times over; RSS must stay flat.

    python3 bench/bench_memory.py [--passes 10] [--http] [--fresh-secrets] [--tolerance-mib 8]
    python3 bench/bench_memory.py --no-keys [--conns 50000]
    python3 bench/bench_memory.py --open-flows [--conns 50000] [--budget-mib 128] [--http]

Each pass replays every frame of the capture with its timestamps moved past the previous pass and the
client port of every connection remapped, so each pass brings new TCP connections (the same TLS sessions,
so the key log still unlocks them; its secrets are re-announced at the start of each pass, as a key feed
would). Every connection of the capture closes, so after a pass nothing should be left but bounded caches.
After each pass: gc, then RSS (/proc/self/statm), open flows and the engine's stores.

--http also parses HTTP (the `replay` path). --fresh-secrets adds, per pass, as many never-matched key log
secrets as the capture has connections (what a real feed brings for sessions the sensor never sees), to
show whether the key store is bounded in time. Exit 1 when RSS grows by more than --tolerance-mib between
the second pass and the last (the first pass warms up allocators and caches).

--no-keys: the budgets instead. The capture is fed until --conns TLS connections (50,000) have been seen,
each pass on new connections (the client address moved per pass), 0.1 s of packet time after the
previous one, so that every connection is still within engine.key_wait of its records; no secret is
ever given. Prints the peak RSS (VmHWM) less what the script's copy of the capture takes, the held and
buffered bytes, and the hold drops by outcome; exit 1 when that peak exceeds 1.3 x max_hold_bytes_total +
64 MiB (the budget target of issue 13).

--open-flows: the reassembly budget instead. Only the first 20 frames of each connection are fed (its
handshake and first exchanges, no FIN: it stays open), with its keys, each pass on new connections, until
--conns have been opened, against max_total_buffer = --budget-mib. Prints the peak RSS less the capture
copy and the flows evicted for the budget; exit 1 over 1.3 x budget + 64 MiB or when an open or evicted
flow is unaccounted for.
"""

from __future__ import annotations

import argparse
import gc
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, client_port_offset, require_capture

sys.path.insert(0, str(REPO / "src"))

from tlsmirror.keys.events import Secret
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.shell.offline.pcapfile import CapturedFrame, read_capture
from tlsmirror.tls.events import TlsOutcome

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
    ap.add_argument("--no-keys", action="store_true", help="connections whose keys never arrive: the budgets")
    ap.add_argument("--conns", type=int, default=50_000, help="--no-keys: connections to feed")
    ap.add_argument("--open-flows", action="store_true", help="connections that stay open: the reassembly budget")
    ap.add_argument("--budget-mib", type=int, default=128, help="--open-flows: max_total_buffer in MiB")
    ap.add_argument("--breakdown", type=int, default=0, metavar="N",
                    help="--no-keys: trace allocations, print the N biggest holders by file:line at the end")
    a = ap.parse_args()
    if a.no_keys:
        return no_keys(a.conns, a.http, a.breakdown)
    if a.open_flows:
        return open_flows(a.conns, a.http, a.budget_mib)
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


def hwm_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def client_ip_offset(data: bytes) -> int:
    """Offset of the third byte of the client's IPv4 address in an Ethernet frame to port 443, or -1."""
    off = client_port_offset(data)
    if off < 0 or struct.unpack_from("!H", data, 12)[0] != 0x0800:
        return -1
    tcp = 14 + (data[14] & 0x0F) * 4
    return 26 + 2 if off == tcp else 30 + 2


def breakdown(top: int) -> None:
    """The allocations alive now (traced since the engine was made), grouped by file:line."""
    import tracemalloc
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*tlsmirror*")])
    stats = snap.statistics("lineno")
    total = sum(st.size for st in stats)
    print(f"traced in tlsmirror: {total / (1 << 20):.1f} MiB in {sum(st.count for st in stats)} blocks")
    for st in stats[:top]:
        fr = st.traceback[0]
        print(f"{st.size / (1 << 20):>8.2f} MiB {st.count:>9} blocks {st.size / max(st.count, 1):>7.0f} B  "
              f"{'/'.join(Path(fr.filename).parts[-2:])}:{fr.lineno}")


def no_keys(conns_wanted: int, http: bool, top: int = 0) -> int:
    cap, keylog = require_capture()
    secrets, _ = parse_keylog(keylog.read_bytes())
    conns = len({s.ident for s in secrets})
    gc.collect()
    rss0 = rss_mib()
    frames: list[tuple[int, bytes, float, int]] = []
    for item in read_capture(str(cap)):
        if type(item) is CapturedFrame:
            off = client_ip_offset(item.data) if item.linktype == 1 else -1
            frames.append((item.linktype, item.data, item.ts, off))
    gc.collect()
    copy = rss_mib() - rss0  # the script's copy of the capture: not the engine's
    if top:
        import tracemalloc
        tracemalloc.start()
    engine = Engine(EngineConfig(http=http))
    budget = engine.tls.max_hold_bytes_total / (1 << 20)
    passes = -(-conns_wanted // conns)
    print(f"{cap.name}: {len(frames)} frames, {conns} TLS sessions x {passes} passes, no keys; "
          f"RSS {rss0:.1f} MiB before the capture, +{copy:.1f} MiB for it; hold budget {budget:.0f} MiB")
    print(f"{'pass':>4} {'conns':>7} {'RSS MiB':>8} {'peak-copy':>9} {'held MiB':>8} {'charged':>7} "
          f"{'tcp MiB':>7} {'open flows':>10} {'cpu s':>6}")
    started = time.process_time()
    outcomes: dict[str, int] = {}
    reported = dropped = 0
    peak = 0.0

    def count(events: list[Any]) -> None:
        nonlocal reported, dropped
        for ev in events:
            if type(ev) is TlsOutcome:
                reported += 1
                dropped += ev.held_dropped_bytes
                if ev.held:
                    outcomes[ev.held] = outcomes.get(ev.held, 0) + 1

    for p in range(passes):
        shift = p * 0.1
        feed = engine.feed_frame
        third = p // 256 + 1
        for linktype, data, ts, off in frames:
            if off >= 0:
                data = data[:off] + bytes([(data[off] + third) & 0xFF, (data[off + 1] + p) & 0xFF]) + data[off + 2:]
            out = feed(linktype, data, ts + shift)
            if out:
                count(out)
        rss = rss_mib()
        peak = max(peak, hwm_mib() - copy)
        if p % 8 == 7 or p == passes - 1:
            print(f"{p + 1:>4} {(p + 1) * conns:>7} {rss:>8.1f} {peak:>9.1f} "
                  f"{engine.tls.held_bytes / (1 << 20):>8.1f} {engine.tls.charge / (1 << 20):>7.1f} "
                  f"{engine.tcp.buffered_bytes / (1 << 20):>7.1f} {engine.tcp.open_flows:>10} "
                  f"{time.process_time() - started:>6.0f}", flush=True)
    if top:
        breakdown(top)
    count(engine.finish())
    limit = 1.3 * budget + 64
    total = passes * conns
    ok = peak <= limit
    print(f"peak RSS less the capture copy: {peak:.1f} MiB (limit 1.3 x {budget:.0f} + 64 = {limit:.0f} MiB): "
          + ("within" if ok else "OVER"))
    tls, tcp = engine.tls, engine.tcp.stats
    print(f"connections reported: {reported} of {total}; by how the wait ended: {dict(sorted(outcomes.items()))}; "
          f"ciphertext dropped {dropped / (1 << 20):.1f} MiB; hold budget evictions {tls.evicted_sessions} "
          f"({tls.evicted_bytes / (1 << 20):.1f} MiB); tcp budget_dropped_bytes {tcp['budget_dropped_bytes']}, "
          f"flows_evicted {tcp['flows_evicted']} (budget {tcp['flows_evicted_budget']})")
    if reported != total or sum(outcomes.values()) != total:
        print("NOT every connection was reported with how its wait ended")
        ok = False
    return 0 if ok else 1


def open_flows(conns_wanted: int, http: bool, budget_mib: int, first: int = 20) -> int:
    cap, keylog = require_capture()
    secrets, _ = parse_keylog(keylog.read_bytes())
    gc.collect()
    rss0 = rss_mib()
    seen: dict[bytes, int] = {}
    frames: list[tuple[int, bytes, float, int]] = []
    for item in read_capture(str(cap)):
        if type(item) is not CapturedFrame or item.linktype != 1:
            continue
        off = client_port_offset(item.data)
        if off < 0:
            continue
        port = item.data[off:off + 2]
        seen[port] = seen.get(port, 0) + 1
        if seen[port] <= first:
            frames.append((item.linktype, item.data, item.ts, client_ip_offset(item.data)))
    gc.collect()
    copy = rss_mib() - rss0
    conns = len(seen)
    engine = Engine(EngineConfig(http=http, max_total_buffer=budget_mib << 20, max_flows=10 * conns_wanted))
    engine.add_secrets(secrets, 0.0)
    passes = -(-conns_wanted // conns)
    print(f"{cap.name}: the first {first} frames of each of {conns} connections x {passes} passes, keys known, "
          f"http {http}; RSS {rss0:.1f} MiB before the capture, +{copy:.1f} MiB for it; "
          f"max_total_buffer {budget_mib} MiB")
    print(f"{'pass':>4} {'conns':>7} {'RSS MiB':>8} {'peak-copy':>9} {'charged':>7} {'open flows':>10} "
          f"{'evicted':>7} {'cpu s':>6}")
    started = time.process_time()
    peak = 0.0
    for p in range(passes):
        third = p // 256 + 1
        for linktype, data, ts, off in frames:
            if off >= 0:
                data = data[:off] + bytes([(data[off] + third) & 0xFF, (data[off + 1] + p) & 0xFF]) + data[off + 2:]
            engine.feed_frame(linktype, data, ts + p * 0.1)
        peak = max(peak, hwm_mib() - copy)
        if p % 10 == 9 or p == passes - 1:
            st = engine.tcp.stats
            print(f"{p + 1:>4} {(p + 1) * conns:>7} {rss_mib():>8.1f} {peak:>9.1f} "
                  f"{engine.tcp.charge / (1 << 20):>7.1f} {engine.tcp.open_flows:>10} "
                  f"{st['flows_evicted_budget']:>7} {time.process_time() - started:>6.0f}", flush=True)
    limit = 1.3 * budget_mib + 64
    st = engine.tcp.stats
    ok = peak <= limit
    print(f"peak RSS less the capture copy: {peak:.1f} MiB (limit 1.3 x {budget_mib} + 64 = {limit:.0f} MiB): "
          + ("within" if ok else "OVER"))
    print(f"flows opened {st['flows_opened']}, open {engine.tcp.open_flows}, evicted for the budget "
          f"{st['flows_evicted_budget']} (closed as evicted {st['flows_closed_evicted']})")
    if st["flows_opened"] != engine.tcp.open_flows + st["flows_evicted_budget"]:
        print("NOT every flow is accounted for")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
