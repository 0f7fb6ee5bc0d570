#!/usr/bin/env python3
"""Time `tlsmirror replay` (decrypt + HTTP -> JSON lines) beside tshark's HTTP fields (issue 3).

    python3 bench/bench_replay.py [--runs 3] [--check] [--verify]

tlsmirror: ``tlsmirror replay CAP --keylog KEYLOG -o /dev/null`` (exchange count from its summary on
stderr). tshark: ``tshark -n -r CAP -o tls.keylog_file:KEYLOG -Y http -T fields -e http.request.method
-e http.request.uri -e http.response.code`` (exchanges = responses printed). Each runs --runs times, in
interleaved rounds; the best wall time is reported with exchanges/s and that process's peak RSS (``os.wait4``),
and the median CPU time of each with their ratio (the target: replay >= 5x tshark by CPU medians). The
interpreter's start-up cost is printed first: every tlsmirror run includes it.

--verify adds one untimed tlsmirror run writing to a file and checks every record has a method and a status.
--check: exit 1 unless replay >= 5x tshark by CPU medians, and >= 3x by best wall time with a lower peak RSS.
A missing `tlsmirror replay` command (older checkout) is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CONNS,
    REQS,
    Timing,
    child_env,
    cpu_median_line,
    print_table,
    require_capture,
    startup_floor,
    timed_run,
    tlsmirror_cmd,
    warm_bytecode,
)

TARGET = 3.0  # best wall time, with a lower peak RSS (issue 3)
TARGET_CPU = 5.0  # CPU medians of interleaved runs (issue 13)


def replay_available() -> str | None:
    """None when `tlsmirror replay` exists, else why not."""
    import subprocess

    r = subprocess.run([*tlsmirror_cmd(), "replay", "--help"], capture_output=True, env=child_env())
    if r.returncode == 0:
        return None
    err = r.stderr.decode(errors="replace").strip().splitlines()
    return err[-1] if err else f"exit {r.returncode}"


def tshark_exchanges(path: Path) -> tuple[int, int]:
    requests = responses = 0
    with path.open("rb") as fh:
        for line in fh:
            method, _uri, code = [*line.rstrip(b"\n").split(b"\t"), b"", b""][:3]
            requests += method.count(b",") + 1 if method else 0
            responses += code.count(b",") + 1 if code else 0
    return requests, responses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--check", action="store_true", help=f"exit 1 unless replay >= {TARGET_CPU:g}x tshark")
    ap.add_argument("--verify", action="store_true", help="one more tlsmirror run, checking its records")
    a = ap.parse_args()
    cap, keylog = require_capture()
    expected = CONNS * REQS
    tmp = Path(tempfile.mkdtemp(prefix="tlsmirror-bench-"))
    best: dict[str, Timing] = {}
    exchanges: dict[str, int] = {}
    failures: list[str] = []
    cpus: dict[str, list[float]] = {}
    cmds = {
        "tlsmirror replay": [*tlsmirror_cmd(), "replay", str(cap), "--keylog", str(keylog),
                             "-o", "/dev/null"],
        "tshark": ["tshark", "-n", "-r", str(cap), "-o", f"tls.keylog_file:{keylog}", "-Y", "http",
                   "-T", "fields", "-e", "http.request.method", "-e", "http.request.uri",
                   "-e", "http.response.code"],
    }
    why = replay_available()
    if why is not None:
        print(f"tlsmirror replay is not available ({why}): it is skipped; only tshark is timed")
        del cmds["tlsmirror replay"]
    else:
        warm_bytecode("replay")
    print(startup_floor(), flush=True)
    try:
        for cmd in cmds.values():
            print("$ " + " ".join(cmd), flush=True)
        failed: set[str] = set()
        for i in range(a.runs):  # interleaved rounds: a slow spell of the machine hits both tools alike
            for tool, cmd in cmds.items():
                if tool in failed:
                    continue
                out = tmp / "out"
                t = timed_run(cmd, stdout_path=str(out))
                print(f"  round {i + 1} {tool}: {t.wall:.2f} s wall, {t.user + t.sys:.2f} s CPU, "
                      f"{t.max_rss_kib / 1024:.0f} MiB peak RSS, exit {t.returncode}", flush=True)
                if t.returncode != 0:
                    failures.append(f"{tool} exited {t.returncode}: "
                                    + t.stderr.decode(errors="replace")[-300:])
                    failed.add(tool)
                    continue
                cpus.setdefault(tool, []).append(t.user + t.sys)
                if tool not in best or t.wall < best[tool].wall:
                    best[tool] = t
                if tool == "tshark":
                    req, resp = tshark_exchanges(out)
                    exchanges[tool] = min(req, resp)
                else:
                    m = re.search(rb"(\d+) exchanges", t.stderr)
                    if m:
                        exchanges[tool] = int(m.group(1))
        if a.verify and "tlsmirror replay" in cmds:
            path = tmp / "replay.jsonl"
            cmd = [*cmds["tlsmirror replay"][:-1], str(path)]
            t = timed_run(cmd)
            recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            good = sum(1 for r in recs if r.get("method") and r.get("status"))
            print(f"verify: {len(recs)} records, {good} with method and status")
            if good != expected:
                failures.append(f"tlsmirror replay wrote {good} complete exchanges, expected {expected}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for tool, n in exchanges.items():
        if n != expected:
            failures.append(f"{tool} reported {n} exchanges, the capture has {expected}")
    ref = best.get("tshark")
    ref_rate = exchanges["tshark"] / ref.wall if ref and exchanges.get("tshark") else None
    rows = []
    for tool, t in best.items():
        n = exchanges.get(tool, 0)
        rate = n / t.wall
        ratio = f"{rate / ref_rate:.2f}x" if ref_rate else "-"
        rows.append([tool, f"{t.wall:.2f}", f"{t.user + t.sys:.2f}", str(n), f"{rate:,.0f}",
                     f"{t.max_rss_kib / 1024:.0f}", ratio])
    print()
    print(f"best of {a.runs} runs, {expected} HTTP exchanges:")
    print_table(["tool", "wall s", "CPU s", "exchanges", "exchanges/s", "peak RSS MiB", "vs tshark"], rows)
    rc = 0
    for f in failures:
        print("FAIL:", f)
        rc = 1
    tm = best.get("tlsmirror replay")
    if tm and ref and exchanges.get("tshark") and exchanges.get("tlsmirror replay"):
        ratio = (exchanges["tlsmirror replay"] / tm.wall) / (exchanges["tshark"] / ref.wall)
        rss_ok = tm.max_rss_kib < ref.max_rss_kib
        met = ratio >= TARGET and rss_ok
        print(f"target replay >= {TARGET:g}x tshark exchanges/s with lower peak RSS: {ratio:.2f}x, "
              f"RSS {tm.max_rss_kib / 1024:.0f} vs {ref.max_rss_kib / 1024:.0f} MiB: "
              + ("met" if met else "NOT met"))
        cpu_ratio = ((exchanges["tlsmirror replay"] / (tm.user + tm.sys))
                     / (exchanges["tshark"] / (ref.user + ref.sys)))
        print(f"by CPU time, which other load disturbs less: {cpu_ratio:.2f}x")
        median = cpu_median_line(cpus, "tlsmirror replay", TARGET_CPU, expected)
        if median is not None:
            print(median[0])
            met = met and median[1]
        if a.check and not met:
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
