#!/usr/bin/env python3
"""Profile `tlsmirror decrypt` (or `replay`) on the benchmark capture with py-spy and pyinstrument.

    python3 bench/profile.py [decrypt|replay] [--top 15] [--rate 1000] [--no-pyinstrument]

py-spy samples the process (no instrumentation overhead) twice: per function and per line. The tables
give each function's / line's self time (samples where it is the innermost frame) and total time (where
it is anywhere on the stack) as a share of all samples. pyinstrument's call tree goes to
bench/data/prof/pyinstrument-<command>.txt; the raw py-spy stacks next to it (flamegraph.pl input).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, child_env, print_table, require_capture, warm_bytecode

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?):(?P<line>\d+)\)$")


def parse_raw(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """Self and total samples per 'function file:line' from py-spy's raw (collapsed) output."""
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    n = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        n += k
        frames = []
        for fr in stack.split(";"):
            m = FRAME.match(fr)
            frames.append(f"{m['func']}  {short(m['file'])}:{m['line']}" if m else fr)
        self_c[frames[-1]] += k
        for f in set(frames):
            total_c[f] += k
    return self_c, total_c, n


def short(path: str) -> str:
    i = path.find("tlsmirror/")
    return path[i:] if i >= 0 else path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="decrypt", choices=["decrypt", "replay"])
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    ap.add_argument("--no-pyinstrument", action="store_true")
    a = ap.parse_args()
    cap, keylog = require_capture()
    outdir = DATA / "prof"
    outdir.mkdir(parents=True, exist_ok=True)
    target = [sys.executable, "-m", "tlsmirror", a.command, str(cap), "--keylog", str(keylog),
              "-o", "/dev/null"]
    env = child_env()
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed (pip install py-spy)")
    warm_bytecode(a.command)
    results = {}
    for mode in ("function", "line"):
        raw = outdir / f"py-spy-{a.command}-{mode}.txt"
        cmd = ["py-spy", "record", "-r", str(a.rate), "-f", "raw", "-o", str(raw)]
        if mode == "function":
            cmd.append("--function")
        subprocess.run([*cmd, "--", *target], check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        results[mode] = parse_raw(raw)
    self_f, total_f, n_f = results["function"]
    print(f"py-spy, `tlsmirror {a.command}`, {n_f} samples at {a.rate}/s; by function (self time):")
    rows = [[str(i + 1), name, f"{100 * c / n_f:.1f}", f"{100 * total_f[name] / n_f:.1f}"]
            for i, (name, c) in enumerate(self_f.most_common(a.top))]
    print_table(["#", "function  file:first line", "self %", "total %"], rows)
    print()
    self_l, _total_l, n_l = results["line"]
    print(f"by line (self time), {n_l} samples:")
    rows = [[str(i + 1), name, f"{100 * c / n_l:.1f}"]
            for i, (name, c) in enumerate(self_l.most_common(a.top))]
    print_table(["#", "function  file:line", "self %"], rows)
    print()
    print("largest total times (function):")
    rows = [[name, f"{100 * c / n_f:.1f}"] for name, c in total_f.most_common(a.top + 10)
            if "tlsmirror/" in name]
    print_table(["function  file:first line", "total %"], rows[:a.top])
    if not a.no_pyinstrument and shutil.which("pyinstrument"):
        text = outdir / f"pyinstrument-{a.command}.txt"
        subprocess.run(["pyinstrument", "-r", "text", "-o", str(text), "-m", "tlsmirror", *target[3:]],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"\npyinstrument call tree: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
