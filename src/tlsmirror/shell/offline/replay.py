"""`tlsmirror replay`: capture files in, one record per API call out (JSON lines, HAR, OTLP)."""

from __future__ import annotations

import os
import re
import struct
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any

from ...calls import ApiCall, HttpIssue
from ...pipeline import Engine, EngineConfig
from ...tls.events import OUTCOMES, HandshakeFacts, TlsOutcome
from ..errors import InputError
from ..export import Exporter
from .facts import FactsWriter, load_facts_files
from .inputs import load_keylog_files, load_rsa_files
from .loop import EngineFeed, pump
from .pcapfile import CaptureReader

PROGRESS_MIN_BYTES = 32 << 20  # show a progress bar for files at least this large
_PROGRESS_EVERY = 2048  # frames between progress checks
_IDS = re.compile(r"\b[0-9a-f]{8,}(?:\.\.\.)?")

_FLAG_WORDS = {
    "no_response": "without response",
    "response_without_request": "response without request",
    "truncated": "truncated",
    "gap": "with gaps",
    "decode_error": "with body decode errors",
    "body_truncated": "with bodies cut",
    "partial_headers": "with partial headers",
    "reset": "reset",
}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


class _Progress:
    """A one-line progress bar on a terminal, driven by the bytes of the capture read so far."""

    def __init__(self, out: IO[str], path: str, index: int, count: int) -> None:
        self.out = out
        self.label = os.path.basename(path) if count == 1 else f"[{index}/{count}] {os.path.basename(path)}"
        self.total = _estimate_size(path)
        self.done = 0
        self.last = 0.0
        self.shown = False

    def update(self, reader: CaptureReader, frames: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.25:
            return
        self.last = now
        done = reader.bytes_read
        if self.total:
            frac = min(done / self.total, 0.999)
            width = 30
            fill = int(frac * width)
            bar = "#" * fill + "-" * (width - fill)
            line = f"\r{self.label} [{bar}] {frac * 100:5.1f}% {frames} frames"
        else:
            line = f"\r{self.label} {done >> 20} MiB, {frames} frames"
        self.out.write(line)
        self.out.flush()
        self.shown = True

    def end(self) -> None:
        if self.shown:
            self.out.write("\r\x1b[K")
            self.out.flush()


def _estimate_size(path: str) -> int:
    """Bytes of capture data to read (after gzip decompression), or 0 when unknown."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
            if head[:2] == b"\x1f\x8b" and size >= 18:
                f.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", f.read(4))[0]  # uncompressed size mod 2**32
                size = isize if isize >= size else 0
    except OSError:
        return 0
    return size


class ReplayRun(EngineFeed):
    """Drives one :class:`Engine` (with HTTP) over capture files and hands every API call to the
    exporters; counts what happened for :meth:`summary`."""

    def __init__(self, engine: Engine, exporters: Sequence[Exporter], *, progress: IO[str] | None = None,
                 warn: IO[str] | None = None) -> None:
        self.engine = engine
        self.exporters = list(exporters)
        self.progress = progress  # a terminal to draw a progress bar on (large files only)
        self.warn = warn
        self.outcomes: Counter[str] = Counter()
        self.reasons: dict[str, Counter[str]] = {}
        self.versions: Counter[str] = Counter()
        self.flags: Counter[str] = Counter()
        self.problems: Counter[str] = Counter()
        self.cleartext_conns: set[int] = set()
        self.tls_http_conns: set[int] = set()
        self.not_http = 0
        self.calls = 0
        self.files = 0
        self.frames = 0
        self.embedded_secrets = 0
        self.facts_out: FactsWriter | None = None  # --facts-out: where the handshake facts seen go
        self.picked_up = 0  # TLS connections decrypted from mid-stream (handshake not seen)

    def run(self, path: str, index: int = 1, count: int = 1) -> None:
        """Replay one capture file (through the one capture loop, :func:`.loop.pump`), with a progress bar
        on a terminal for large files."""
        reader = CaptureReader(path)
        bar = None
        if self.progress is not None:
            size = _estimate_size(path)
            if size >= PROGRESS_MIN_BYTES or (size == 0 and os.path.getsize(path) >= PROGRESS_MIN_BYTES // 8):
                bar = _Progress(self.progress, path, index, count)

        def tick(frames: int) -> bool:
            if bar is not None:
                bar.update(reader, frames)
            return False

        warn = self.warn
        try:
            with reader:
                stats = pump(reader, self, (lambda w: print(w, file=warn)) if warn is not None else _ignore,
                             every=_PROGRESS_EVERY if bar is not None else 0, tick=tick)
        finally:
            if bar is not None:
                bar.end()
        self.files += 1
        self.frames += stats.frames
        self.embedded_secrets += stats.secrets

    def handle(self, events: list[Any]) -> None:
        for ev in events:
            if type(ev) is ApiCall:  # each test narrows ev (compiled: native attribute reads)
                self.calls += 1
                ex = ev.exchange
                self.versions[ex.http_version] += 1
                if ex.flags:
                    self.flags.update(ex.flags)
                conn = ev.connection
                (self.tls_http_conns if conn.tls else self.cleartext_conns).add(conn.id)
                for exporter in self.exporters:
                    exporter.export(ev)
            elif type(ev) is TlsOutcome:
                self.outcomes[ev.outcome] += 1
                if ev.picked_up:
                    self.picked_up += 1
                if ev.reason:
                    self.reasons.setdefault(ev.outcome, Counter())[_IDS.sub("…", ev.reason)] += 1
            elif type(ev) is HandshakeFacts:
                if self.facts_out is not None:
                    self.facts_out.write(ev)
            elif type(ev) is HttpIssue:
                reason = ev.problem.reason
                if reason.startswith("not HTTP"):
                    self.not_http += 1  # another protocol inside TLS (IMAP, SMTP, ...): not a problem
                    continue
                if not ev.connection.tls:
                    self.cleartext_conns.add(ev.connection.id)
                self.problems[_IDS.sub("…", reason)] += 1

    def summary(self) -> str:
        lines = []
        tls = sum(self.outcomes.values())
        parts = [f"{self.outcomes[o]} {o}" for o in OUTCOMES if self.outcomes.get(o)]
        parts += [f"{n} {o}" for o, n in self.outcomes.items() if o not in OUTCOMES]
        line = f"{_plural(tls, 'TLS connection')}" + (f" ({', '.join(parts)})" if parts else "")
        if self.cleartext_conns:
            line += f", {_plural(len(self.cleartext_conns), 'cleartext HTTP connection')}"
        if self.not_http:
            line += f"; {self.not_http} of them not HTTP"
        if self.picked_up:
            line += f"; {self.picked_up} picked up mid-stream (handshake not seen)"
        lines.append(line)
        for outcome in OUTCOMES:
            reasons = self.reasons.get(outcome)
            if outcome == "decrypted" or not reasons:
                continue
            for reason, n in reasons.most_common(5):
                lines.append(f"  {outcome}: {n}x {reason}")
            if len(reasons) > 5:
                lines.append(f"  {outcome}: ... and {len(reasons) - 5} other reasons")
        by_version = ", ".join(f"{n} HTTP/{v}" for v, n in sorted(self.versions.items()))
        line = f"{_plural(self.calls, 'exchange')}" + (f" ({by_version})" if by_version else "")
        noted = [f"{self.flags[f]} {word}" for f, word in _FLAG_WORDS.items() if self.flags.get(f)]
        if noted:
            line += "; " + ", ".join(noted)
        lines.append(line)
        if self.problems:
            total = sum(self.problems.values())
            lines.append(f"{_plural(total, 'HTTP problem')} (parsing of that connection stopped):")
            for reason, n in self.problems.most_common(5):
                lines.append(f"  {n}x {reason}")
            if len(self.problems) > 5:
                lines.append(f"  ... and {len(self.problems) - 5} other reasons")
        for exporter in self.exporters[1:]:  # the file output is the summary above; others say how they did
            counts = ", ".join(f"{k} {exporter.stats[k]}"
                               for k in ("exported", "failed", "retries", "dropped") if exporter.stats.get(k))
            lines.append(f"{type(exporter).__name__}: {counts or 'nothing exported'}")
        for exporter in self.exporters[:1]:
            dropped = exporter.stats.get("dropped", 0)
            if dropped:
                err = getattr(exporter, "last_error", None)
                lines.append(f"{type(exporter).__name__}: {dropped} records not written"
                             + (f" ({err})" if err else ""))
        return "\n".join(lines)


def _ignore(_note: str) -> None:
    pass


def make_exporter(output: str, fmt: str, body_mode: str = "auto") -> Exporter:
    if fmt == "har":
        from ..export.har import HarExporter

        return HarExporter(output)
    if fmt == "jsonl":
        from ..export.jsonl import JsonlExporter

        return JsonlExporter(output, body_mode=body_mode)
    raise InputError(f"unknown output format {fmt!r} (jsonl or har)")


def replay_main(captures: Sequence[str], keylogs: Sequence[str], rsa_keys: Sequence[str],
                ports: Sequence[int], output: str = "-", fmt: str = "jsonl", body_limit: int = 128 * 1024,
                rsa_password: bytes | None = None, extra_exporters: Sequence[Exporter] = (),
                flush_timeout: float = 60.0, body_mode: str = "auto", facts_files: Sequence[str] = (),
                facts_out: str | None = None) -> int:
    """The whole offline pipeline over ``captures`` (in order, one engine). Returns the exit code."""
    warn = sys.stderr
    for path in captures:
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such capture file" if not os.path.exists(path)
                             else f"{path}: not a regular file")
    secrets = load_keylog_files(keylogs, lambda w: print(w, file=warn))
    facts = load_facts_files(facts_files, lambda w: print(w, file=warn))
    keys = load_rsa_files(rsa_keys, rsa_password)
    engine = Engine(EngineConfig(ports=ports or None, http=True, body_limit=body_limit), rsa_keys=keys)
    engine.add_secrets(secrets, 0.0)
    engine.add_facts(facts)
    exporters: list[Exporter] = [make_exporter(output, fmt, body_mode)]
    exporters += extra_exporters
    progress = warn if warn.isatty() else None
    run = ReplayRun(engine, exporters, progress=progress, warn=warn)
    if facts_out is not None:
        run.facts_out = FactsWriter(facts_out)
    code = 0
    try:
        for i, path in enumerate(captures, 1):
            run.run(path, i, len(captures))
        run.finish()
    finally:
        leftovers = []
        deadline = time.monotonic() + flush_timeout
        for exporter in exporters:
            ok = exporter.flush(max(deadline - time.monotonic(), 0.0))
            if not ok:
                leftovers.append(exporter)
                cfg = getattr(exporter, "config", None)
                if cfg is not None and hasattr(cfg, "flush_timeout"):
                    cfg.flush_timeout = 0.0  # OtlpExporter.close() flushes again: we waited already
            exporter.close()
        if run.facts_out is not None:
            run.facts_out.close()
    print(run.summary(), file=warn)
    for exporter in leftovers:
        pending = {k: v for k, v in exporter.stats.items() if k in ("queue_depth", "spool_bytes") and v}
        detail = ", ".join(f"{k} {v}" for k, v in pending.items()) or "some records undelivered"
        print(f"{type(exporter).__name__}: flush timed out after {flush_timeout:g}s; left: {detail}",
              file=warn)
        code = 1
    if any(e.stats.get("dropped", 0) for e in exporters[:1]):
        code = 1
    return code
