#!/usr/bin/env python3
"""Soak: hours of traffic compressed into minutes through the daemon; RSS of the parent and workers must stay flat.

    python3 bench/bench_soak.py [--passes 10] [--workers 2] [--gap 600] [--quick] [--memory]

Builds a capture of the benchmark capture repeated --passes times (bench/data/https-600x50-soakN-...pcapng,
cached, ~29 MB per pass; delete it when done): pass p has its timestamps moved
p x (capture duration + --gap seconds) on and every client port remapped, so each pass brings 600 new TCP
connections. The secrets travel in the file: each pass carries the key log in a pcapng Decryption
Secrets Block after its first frame (a key feed announcing them again; the daemon keeps secrets only
engine.key_ttl = 600 s of packet time), plus --fresh-secrets never-matched secrets (a real feed sends
secrets for sessions the sensor never sees: they must expire, not pile up). With the default gap of
600 s, 10 passes are 1.7 hours of packet time. Then

    tlsmirror run --pcap SOAK --no-keys --workers N -o /dev/null --metrics-port P

runs as fast as it can (`--pcap` is lossless: the file is read as fast as workers and exporters go), and
every --interval seconds the resident memory (/proc/PID/statm) of the parent and of each worker is
sampled, with the API calls exported so far, the secrets stored and the open flows (from /metrics).
Prints the series and the verdict: flat when no process grew more than --tolerance (10 %) from the end
of the warm-up (the first pass) to the end of the run, else growing. Also checks the output: passes x
30,000 API calls, passes x 600 connections decrypted. --memory also runs bench_memory.py --http (one
in-process engine, the same passes) for comparison.
Exit 1 when growing or incomplete. No root needed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CONNS,
    DATA,
    REPO,
    REQS,
    child_env,
    client_port_offset,
    daemon_stopped,
    print_table,
    require_capture,
    tlsmirror_cmd,
)

sys.path.insert(0, str(REPO / "src"))

from tlsmirror.shell.offline.pcapfile import CapturedFrame, read_capture

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20


# ---------------------------------------------------------------------------- the soak capture
def load_frames(cap: Path) -> tuple[int, list[tuple[float, bytes, int]]]:
    frames: list[tuple[float, bytes, int]] = []
    linktype = -1
    for item in read_capture(str(cap)):
        if type(item) is CapturedFrame:
            if linktype < 0:
                linktype = item.linktype
            elif item.linktype != linktype:
                sys.exit(f"{cap}: several link types; the soak writer handles one")
            frames.append((item.ts, item.data, client_port_offset(item.data) if item.linktype == 1 else -1))
    if not frames:
        sys.exit(f"{cap}: no frames")
    return linktype, frames


def write_soak(fh: object, linktype: int, frames: list[tuple[float, bytes, int]], passes: int, gap: float,
               keylog: bytes | None = None, fresh: int = 0) -> None:
    """The frames *passes* times, timestamps and client ports moved per pass.

    Without *keylog*: classic pcap (microseconds). With it: pcapng, and each pass carries the key log in a
    Decryption Secrets Block right after its first frame (a SYN), as a key feed would announce the
    secrets again, plus *fresh* never-matched secrets per pass (what a real feed sends for sessions the
    sensor does not see).
    """
    write = fh.write  # type: ignore[attr-defined]
    ng = keylog is not None
    if ng:
        shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
        idb = struct.pack("<IIHHI", 1, 20, linktype, 0, 262144) + struct.pack("<I", 20)
        write(shb + idb)
    else:
        write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
    span = frames[-1][0] - frames[0][0] + gap
    rec = struct.Struct("<IIII")
    epb = struct.Struct("<IIIIIII")
    for p in range(passes):
        shift = p * span
        shift_port = p * 7919
        out: list[bytes] = []
        for k, (ts, data, off) in enumerate(frames):
            if off >= 0 and p:
                (port,) = struct.unpack_from("!H", data, off)
                port = (port - 1024 + shift_port) % (65536 - 1024) + 1024
                data = data[:off] + port.to_bytes(2, "big") + data[off + 2:]
            usec = round((ts + shift) * 1e6)
            n = len(data)
            if ng:
                pad = -n % 4
                total = 32 + n + pad
                out.append(epb.pack(6, total, 0, usec >> 32, usec & 0xFFFFFFFF, n, n))
                out.append(data)
                out.append(b"\0" * pad + total.to_bytes(4, "little"))
                if k == 0:
                    assert keylog is not None
                    out.append(_dsb(keylog + _fresh_secrets(p, fresh)))
            else:
                sec, sub = divmod(usec, 1_000_000)
                out.append(rec.pack(sec, sub, n, n))
                out.append(data)
            if len(out) >= 4096:
                write(b"".join(out))
                out.clear()
        write(b"".join(out))


def _dsb(text: bytes) -> bytes:
    pad = -len(text) % 4
    total = 20 + len(text) + pad
    return (struct.pack("<IIII", 0x0000000A, total, 0x544C534B, len(text)) + text + b"\0" * pad
            + total.to_bytes(4, "little"))


def _fresh_secrets(p: int, n: int) -> bytes:
    """*n* key log lines no session will ever match (distinct per pass; values from a fixed pattern)."""
    lines = []
    for i in range(n):
        ident = (0xF0F0 << 240 | p << 32 | i).to_bytes(32, "big").hex()
        lines.append(f"CLIENT_RANDOM {ident} {(p * 1_000_003 + i) % (1 << 384):096x}\n")
    return "".join(lines).encode()


def soak_file(cap: Path, passes: int, gap: float, keylog: Path | None = None, fresh: int = 0) -> Path:
    ext = "pcapng" if keylog is not None else "pcap"
    suffix = f"-keys{fresh}" if keylog is not None else ""
    path = DATA / f"{cap.stem}-soak{passes}-gap{gap:g}{suffix}.{ext}"
    if path.exists() and path.stat().st_mtime >= cap.stat().st_mtime:
        print(f"using cached {path}")
        return path
    t0 = time.perf_counter()
    linktype, frames = load_frames(cap)
    part = path.with_name(path.name + ".part")
    with open(part, "wb", buffering=1 << 20) as fh:
        write_soak(fh, linktype, frames, passes, gap, keylog.read_bytes() if keylog else None, fresh)
    os.replace(part, path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB, {passes} x {len(frames)} frames) "
          f"in {time.perf_counter() - t0:.1f} s")
    return path


# ---------------------------------------------------------------------------- sampling
def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * PAGE / MIB
    except (OSError, ValueError, IndexError):
        return None


def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as fh:
                    if int(fh.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        kids.append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(kids)


def is_worker(pid: int) -> bool:
    """A spawned worker, not multiprocessing's resource tracker."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read()
    except OSError:
        return False
    return b"resource_tracker" not in cmd


SERIES_METRICS = {"exported": "tlsmirror_exported_total", "keys": "tlsmirror_keys_stored",
                  "flows": "tlsmirror_flows_open"}
NOT_RSS = ("t", *SERIES_METRICS)


def scrape(port: int) -> dict[str, float]:
    """Unlabelled samples of /metrics (empty when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and line[0] != "#" and "{" not in line:
            name, _, value = line.partition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gap", type=float, default=600.0, help="seconds of packet time between passes")
    ap.add_argument("--fresh-secrets", type=int, default=CONNS,
                    help="never-matched secrets added to each pass's key log (default: 600, one per connection)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between RSS samples")
    ap.add_argument("--tolerance", type=float, default=10.0, help="growth in %% that counts as growing")
    ap.add_argument("-o", "--output", default=os.devnull, help="the daemon's JSON lines output")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole daemon run")
    ap.add_argument("--quick", action="store_true", help="4 passes")
    ap.add_argument("--memory", action="store_true", help="also run bench_memory.py --http, same passes")
    ap.add_argument("--json", metavar="FILE", help="also write the series and verdict as JSON")
    a = ap.parse_args()
    if a.quick:
        a.passes = min(a.passes, 4)
    if a.passes < 2:
        ap.error("--passes must be at least 2 (one is the warm-up)")
    cap, keylog = require_capture()
    work = Path(tempfile.mkdtemp(prefix="tm-soak-"))
    src = soak_file(cap, a.passes, a.gap, keylog, a.fresh_secrets)
    from common import capture_stats

    hours = a.passes * (capture_stats(cap).duration + a.gap) / 3600
    mport = free_port()
    log_path = work / "daemon.log"
    cmd = [*tlsmirror_cmd(), "run", "--pcap", str(src), "--no-keys",
           "--workers", str(a.workers), "-o", a.output, "--metrics-port", str(mport), "--log-format", "json"]
    print(f"soak: {a.passes} passes of {cap.name} ({a.passes * CONNS * REQS:,} exchanges, "
          f"~{hours:.1f} h of packet time), {a.workers} workers, {os.cpu_count()} CPUs")
    print("  " + " ".join(cmd[len(tlsmirror_cmd()):]), flush=True)
    with open(log_path, "wb") as err:
        daemon = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                  env=child_env(), start_new_session=True)
    names: dict[int, str] = {daemon.pid: "parent"}
    series: list[dict[str, float]] = []
    t0 = time.monotonic()
    timed_out = False
    try:
        while daemon.poll() is None:
            time.sleep(a.interval)
            for pid in children_of(daemon.pid):
                if pid not in names and is_worker(pid):
                    names[pid] = f"worker{sum(1 for n in names.values() if n.startswith('worker'))}"
            row: dict[str, float] = {"t": round(time.monotonic() - t0, 1)}
            m = scrape(mport)
            for key, metric in SERIES_METRICS.items():
                row[key] = m.get(metric, float("nan"))
            for pid, name in names.items():
                r = rss_mib(pid)
                if r:  # None: gone; 0: a zombie
                    row[name] = r
            if "parent" in row:
                series.append(row)
            if time.monotonic() - t0 > a.timeout:
                timed_out = True
                break
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(10)
    wall = time.monotonic() - t0
    stopped = last_stopped(log_path)
    if daemon.returncode or "exported" not in stopped:
        print(f"daemon exit {daemon.returncode}; the end of its log:", file=sys.stderr)
        for line in log_path.read_text(errors="replace").splitlines()[-10:]:
            print("  " + line, file=sys.stderr)
    verdict, rows, growths = judge(series, a.tolerance)
    print_series(series)
    print()
    print_table(["process", "RSS at warm-up end MiB", "halfway MiB", "at end MiB", "peak MiB", "growth",
                 "growth 2nd half"], rows)
    want_calls, want_conns = a.passes * CONNS * REQS, a.passes * CONNS
    calls, decrypted = stopped.get("exported", -1), stopped.get("decrypted", -1)
    complete = calls == want_calls and decrypted == want_conns and not timed_out
    print(f"\ndaemon: exit {daemon.returncode}, {wall:.0f} s, {calls:,} API calls exported (want {want_calls:,}), "
          f"{decrypted:,} connections decrypted (want {want_conns:,}), "
          f"{calls / wall if wall and calls > 0 else 0:,.0f} API calls/s"
          + (" TIMEOUT" if timed_out else ""))
    print(f"verdict: {verdict.upper()} (growth after warm-up: "
          + ", ".join(f"{k} {v:+.1f}%" for k, v in growths.items()) + f"; tolerance {a.tolerance:g}%)"
          + ("" if complete else "; output INCOMPLETE"))
    rc = 0 if verdict == "flat" and complete else 1
    if a.memory:
        print("\nin-process engine, same passes: bench_memory.py --http")
        mem = subprocess.run([sys.executable, str(REPO / "bench" / "bench_memory.py"), "--passes",
                              str(a.passes), "--http"], check=False)
        rc = rc or mem.returncode
    if a.json:
        Path(a.json).write_text(json.dumps({"series": series, "verdict": verdict, "growth_pct": growths,
                                            "calls": calls, "decrypted": decrypted, "wall_s": wall}, indent=1))
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    return rc


def last_stopped(path: Path) -> dict[str, int]:
    """Numbers of the daemon's "stopped: N packets, M API calls exported, TLS connections: ..." line."""
    out: dict[str, int] = {}
    msg = daemon_stopped(path)
    if msg is None:
        return out
    m = re.search(r"(\d+) packets, (\d+) API calls exported", msg)
    if m:
        out["packets"], out["exported"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"decrypted (\d+)", msg)
    out["decrypted"] = int(m.group(1)) if m else 0
    return out


def judge(series: list[dict[str, float]], tolerance: float) -> tuple[str, list[list[str]], dict[str, float]]:
    """Warm-up: until the first pass is exported (at least 3 samples); then compare with the last quarter."""
    per_pass = CONNS * REQS
    procs = [k for k in (series[0] if series else {}) if k not in NOT_RSS]
    for row in series:
        procs += [k for k in row if k not in NOT_RSS and k not in procs]
    warm = next((i for i, r in enumerate(series) if r["exported"] == r["exported"] and r["exported"] >= per_pass),
                len(series) // 5)
    warm = max(warm, min(3, len(series) - 1))
    rows: list[list[str]] = []
    growths: dict[str, float] = {}
    flat = True
    for p in procs:
        vals = [(i, r[p]) for i, r in enumerate(series) if p in r]
        after = [v for i, v in vals if i >= warm]
        if len(after) < 2:
            continue
        base = after[0]
        tail = after[-max(1, len(after) // 4):]
        end = max(tail)
        g = (end - base) / base * 100 if base else 0.0
        growths[p] = g
        flat = flat and g < tolerance
        mid = after[len(after) // 2]  # still climbing, or settled? growth over the second half alone
        g2 = (end - mid) / mid * 100 if mid else 0.0
        rows.append([p, f"{base:.1f}", f"{mid:.1f}", f"{end:.1f}", f"{max(v for _, v in vals):.1f}", f"{g:+.1f}%",
                     f"{g2:+.1f}%"])
    if not growths:
        return "no data", rows, growths
    return ("flat" if flat else "growing"), rows, growths


def print_series(series: list[dict[str, float]]) -> None:
    if not series:
        print("no samples")
        return
    procs: list[str] = []
    for row in series:
        procs += [k for k in row if k not in NOT_RSS and k not in procs]
    print()
    print(f"{'t s':>6} {'exported':>9} {'passes':>6} {'keys':>6} {'flows':>5} "
          + " ".join(f"{p + ' MiB':>12}" for p in procs))

    def num(v: float, width: int) -> str:
        return f"{int(v):{width}d}" if v == v else f"{'-':>{width}}"  # NaN: no scrape

    for r in series:
        ex = r["exported"]
        cells = [f"{r['t']:6.1f}", num(ex, 9), f"{ex / (CONNS * REQS):6.2f}" if ex == ex else f"{'-':>6}",
                 num(r["keys"], 6), num(r["flows"], 5)]
        cells += [f"{r[p]:12.1f}" if p in r else f"{'-':>12}" for p in procs]
        print(" ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
