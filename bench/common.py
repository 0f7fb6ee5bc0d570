"""Shared pieces of the benchmark scripts: the capture's location, its statistics, timed child processes."""

from __future__ import annotations

import json
import os
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"

# The benchmark capture (issue 2): 600 connections x 50 keep-alive requests = 30,000 HTTPS requests.
CONNS = 600
REQS = 50
BODY = 300
PARALLEL = 4


def capture_paths(conns: int = CONNS, reqs: int = REQS) -> tuple[Path, Path]:
    stem = DATA / f"https-{conns}x{reqs}"
    return stem.with_suffix(".pcap"), stem.with_suffix(".keylog")


@dataclass
class CaptureStats:
    packets: int
    bytes: int  # captured frame bytes (what a decoder has to read), without pcap record headers
    file_bytes: int
    connections: int  # client SYNs (SYN without ACK)
    duration: float


def capture_stats(path: Path) -> CaptureStats:
    """Count a classic pcap's packets, bytes and TCP connections (Ethernet, IPv4 or IPv6)."""
    data = path.read_bytes()
    if len(data) < 24:
        raise SystemExit(f"{path}: not a pcap file")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        raise SystemExit(f"{path}: not a classic pcap file")
    frac = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    (linktype,) = struct.unpack_from(end + "I", data, 20)
    rec = struct.Struct(end + "IIII")
    off = 24
    packets = nbytes = conns = 0
    first = last = None
    n = len(data)
    while off + 16 <= n:
        sec, sub, incl, _orig = rec.unpack_from(data, off)
        off += 16
        frame = data[off:off + incl]
        off += incl
        packets += 1
        nbytes += incl
        ts = sec + sub * frac
        if first is None:
            first = ts
        last = ts
        if linktype != 1 or len(frame) < 14:
            continue
        etype = struct.unpack_from("!H", frame, 12)[0]
        if etype == 0x0800 and len(frame) >= 34 and frame[23] == 6:
            ihl = (frame[14] & 0x0F) * 4
            tcp = 14 + ihl
        elif etype == 0x86DD and len(frame) >= 54 and frame[20] == 6:
            tcp = 54
        else:
            continue
        if len(frame) >= tcp + 14 and frame[tcp + 13] & 0x12 == 0x02:
            conns += 1
    return CaptureStats(packets, nbytes, len(data), conns, (last or 0.0) - (first or 0.0))


def require_capture(conns: int = CONNS, reqs: int = REQS) -> tuple[Path, Path]:
    cap, keylog = capture_paths(conns, reqs)
    if not (cap.exists() and keylog.exists()):
        sys.exit(f"benchmark capture {cap} not found: run `python3 bench/make_capture.py` first (root)")
    return cap, keylog


def tlsmirror_cmd() -> list[str]:
    """The console script installed beside this Python if there is one, else ``python -m tlsmirror``."""
    exe = Path(sys.executable).parent / "tlsmirror"
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-m", "tlsmirror"]


PYCACHE = DATA / "pycache"


def child_env() -> dict[str, str]:
    """The environment of timed children: tlsmirror from src/, with cached bytecode like a normal install.

    PYTHONDONTWRITEBYTECODE (set on some dev machines) would make every run compile all of tlsmirror
    again (~0.2 s); bytecode goes to bench/data/pycache instead of the source tree.
    """
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def warm_bytecode(command: str = "decrypt") -> None:
    """Fill the bytecode cache before anything is timed: one run of ``command`` on the small sample."""
    sample = REPO / "samples" / "api-mixed"
    cmd = [*tlsmirror_cmd(), command, str(sample.with_suffix(".pcap")), "--keylog",
           str(sample.with_suffix(".keylog")), "-o", os.devnull]
    subprocess.run(cmd, env=child_env(), check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Timing:
    wall: float
    user: float
    sys: float
    max_rss_kib: int
    returncode: int
    stdout: bytes
    stderr: bytes


SITE_STARTUP_WARN = 0.03  # CPU s: a bare interpreter start-up costs about 0.01 s; more means site hooks


def startup_floor(runs: int = 5) -> str:
    """A line for the report: the CPU time of this Python starting and exiting (``-c pass``), with and
    without its site start-up (``-S``), medians of ``runs``. Every timed tlsmirror process pays the first
    figure; tshark pays nothing like it. A site directory with heavy ``.pth`` start-up hooks (some machines
    install them for every process) adds its cost to every run: measure from a venv without system site
    packages then, and compare the two figures printed here."""
    with_site = statistics.median(_cpu([sys.executable, "-c", "pass"]) for _ in range(runs))
    bare = statistics.median(_cpu([sys.executable, "-S", "-c", "pass"]) for _ in range(runs))
    line = (f"interpreter start-up ({sys.executable}): {with_site:.3f} s CPU, {bare:.3f} s without site "
            "packages")
    if with_site - bare > SITE_STARTUP_WARN:
        line += (f"\nwarning: this Python's site start-up costs {with_site - bare:.3f} s per process "
                 "(.pth hooks?); every tlsmirror figure below includes it: run from a venv without system "
                 "site packages")
    return line


def _cpu(cmd: list[str]) -> float:
    t = timed_run(cmd)
    return t.user + t.sys


def cpu_median_line(cpus: dict[str, list[float]], tool: str, target: float, work: int,
                    ref: str = "tshark") -> tuple[str, bool] | None:
    """``tool``'s and ``ref``'s median CPU time over the interleaved rounds, the ratio of their rates
    for the same ``work`` and whether it meets ``target``; None unless both ran."""
    if not cpus.get(tool) or not cpus.get(ref):
        return None
    mine, theirs = statistics.median(cpus[tool]), statistics.median(cpus[ref])
    ratio = theirs / mine
    met = ratio >= target
    return (f"CPU medians of {len(cpus[tool])} interleaved rounds: {tool} {mine:.3f} s "
            f"({work / mine:,.0f}/s), {ref} {theirs:.3f} s: {ratio:.2f}x, target >= {target:g}x: "
            + ("met" if met else "NOT met")), met


def timed_run(cmd: list[str], *, keep_stdout: bool = False, stdout_path: str | None = None) -> Timing:
    """Run ``cmd`` to completion; wall time, CPU time and peak RSS of that one child (``os.wait4``)."""
    out_fh = open(stdout_path, "wb") if stdout_path else None  # noqa: SIM115
    stdout = out_fh if out_fh is not None else (subprocess.PIPE if keep_stdout else subprocess.DEVNULL)
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env=child_env())
        # not communicate(): it reaps the child, and wait4 must do that to get the child's own rusage
        out, err = _drain(proc)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    finally:
        if out_fh is not None:
            out_fh.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Timing(wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss, proc.returncode, out, err)


def _drain(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Read stdout/stderr to EOF without reaping the child (so wait4 still gets its rusage)."""
    import selectors

    sel = selectors.DefaultSelector()
    chunks: dict[int, list[bytes]] = {}
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            sel.register(f, selectors.EVENT_READ)
            chunks[f.fileno()] = []
    while sel.get_map():
        for key, _ in sel.select():
            fd = key.fd
            buf = os.read(fd, 1 << 16)
            if buf:
                chunks[fd].append(buf)
            else:
                sel.unregister(key.fileobj)
    sel.close()
    out = b"".join(chunks[proc.stdout.fileno()]) if proc.stdout is not None else b""
    err = b"".join(chunks[proc.stderr.fileno()]) if proc.stderr is not None else b""
    return out, err


def fmt_row(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(fmt_row(header, widths))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(fmt_row(r, widths))


def client_port_offset(data: bytes, server_port: int = 443) -> int:
    """Offset of the client's TCP port in an Ethernet IPv4/IPv6 frame, or -1 (used to move every pass of a
    replayed capture onto new connections)."""
    if len(data) < 14:
        return -1
    etype = struct.unpack_from("!H", data, 12)[0]
    if etype == 0x0800 and len(data) >= 34 and data[23] == 6:
        tcp = 14 + (data[14] & 0x0F) * 4
    elif etype == 0x86DD and len(data) >= 54 and data[20] == 6:
        tcp = 54
    else:
        return -1
    if len(data) < tcp + 4:
        return -1
    sport, dport = struct.unpack_from("!HH", data, tcp)
    return tcp if dport == server_port else tcp + 2 if sport == server_port else -1


def daemon_stopped(log_path: Path) -> str | None:
    """The message of the daemon's last "stopped: ..." line in its JSON log (None when there is none)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            msg = json.loads(line).get("msg", "")
        except ValueError:
            continue
        if isinstance(msg, str) and msg.startswith("stopped:"):
            return msg
    return None
