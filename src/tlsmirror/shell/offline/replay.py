"""`tlsmirror replay`: capture files in, one record per API call out (JSON lines, HAR, OTLP)."""

from __future__ import annotations

import gc
import json
import os
import re
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import IO, Any

from ...calls import ApiCall, HttpIssue
from ...pipeline import Engine, EngineConfig
from ...tls.events import OUTCOMES, HandshakeFacts, TlsOutcome
from ..errors import InputError
from ..export import Exporter
from .facts import FactsWriter, load_facts_files
from .inputs import load_keylogs_for, load_rsa_files
from .loop import CaptureSink, EngineFeed, pump
from .pcapfile import CaptureReader

PROGRESS_MIN_BYTES = 32 << 20  # show a progress bar for files at least this large
_PROGRESS_EVERY = 2048  # frames between progress checks
_IDS = re.compile(r"\b[0-9a-f]{8,}(?:\.\.\.)?")
_RANDOM = re.compile(r"\bfor client random [0-9a-f]{8,}(?:\.\.\.)?")
_BYTES = re.compile(r"\b(\d+) bytes\b")
_N = "\x00"  # where a group's byte count goes
REASONS_SHOWN = 8
EXPORT_LOSSES = ("failed", "partial_rejected", "dropped")  # counted by an exporter: records lost for good


def reason_group(reason: str) -> tuple[str, int]:
    """The summary's group of a reason: without the connection's client random (or any other id: they
    only make equal reasons look different, cut short they make different ones look alike) and byte
    count, which the group adds up; and that byte count."""
    text = _IDS.sub("…", _RANDOM.sub("for its client random", reason))
    total = 0
    m = _BYTES.search(text)
    if m is not None:
        total = int(m.group(1))
        text = text[:m.start()] + _N + " bytes" + text[m.end():]
    return text, total


def _reason_lines(prefix: str, groups: Counter[str], sizes: Counter[str]) -> list[str]:
    lines = []
    for text, n in groups.most_common(REASONS_SHOWN):
        shown = text
        if _N in text:
            shown = text.replace(_N + " bytes", f"{sizes[text]} bytes" + (" (in all)" if n > 1 else ""), 1)
        lines.append(f"  {prefix}{n}x {shown}")
    if len(groups) > REASONS_SHOWN:
        rest = sorted(groups.items(), key=lambda kv: -kv[1])[REASONS_SHOWN:]
        lines.append(f"  {prefix}... and {len(rest)} other reasons "
                     f"({_plural(sum(n for _t, n in rest), 'connection')})")
    return lines

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
        self.share: CaptureSink | None = None  # replay --workers: the sink that keeps this worker's flows
        self.exporter_views: list[tuple[str, dict[str, int], str | None]] | None = None  # merged workers
        self.outcomes: Counter[str] = Counter()
        self.reasons: dict[str, Counter[str]] = {}
        self.reason_bytes: dict[str, Counter[str]] = {}
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
                sink = self if self.share is None else self.share
                stats = pump(reader, sink, (lambda w: print(w, file=warn)) if warn is not None else _ignore,
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
                    text, size = reason_group(ev.reason)
                    self.reasons.setdefault(ev.outcome, Counter())[text] += 1
                    if size:
                        self.reason_bytes.setdefault(ev.outcome, Counter())[text] += size
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
                self.problems[_IDS.sub("…", _RANDOM.sub("for its client random", reason))] += 1

    def counts(self) -> dict[str, Any]:
        """What :meth:`summary` reports, as plain values (a worker's, for :meth:`add_counts`)."""
        return {"outcomes": self.outcomes, "reasons": self.reasons, "reason_bytes": self.reason_bytes,
                "versions": self.versions, "flags": self.flags, "problems": self.problems,
                "cleartext_conns": self.cleartext_conns, "tls_http_conns": self.tls_http_conns,
                "not_http": self.not_http, "calls": self.calls, "files": self.files, "frames": self.frames,
                "embedded_secrets": self.embedded_secrets}

    def add_counts(self, c: dict[str, Any], *, whole_file: bool = True) -> None:
        """Add another run's :meth:`counts` (a worker of ``replay --workers``). ``whole_file``: that run read
        the files, frames and secrets counted here (only one worker's are taken: each reads them all)."""
        self.outcomes.update(c["outcomes"])
        for outcome, groups in c["reasons"].items():
            self.reasons.setdefault(outcome, Counter()).update(groups)
        for outcome, sizes in c["reason_bytes"].items():
            self.reason_bytes.setdefault(outcome, Counter()).update(sizes)
        self.versions.update(c["versions"])
        self.flags.update(c["flags"])
        self.problems.update(c["problems"])
        self.cleartext_conns.update(c["cleartext_conns"])
        self.tls_http_conns.update(c["tls_http_conns"])
        self.not_http += c["not_http"]
        self.calls += c["calls"]
        if whole_file:
            self.files += c["files"]
            self.frames += c["frames"]
            self.embedded_secrets += c["embedded_secrets"]

    def views(self) -> list[tuple[str, dict[str, int], str | None]]:
        """(name, counters, last error) of each exporter, the file output first."""
        if self.exporter_views is not None:
            return self.exporter_views
        return [(type(e).__name__, e.stats, getattr(e, "last_error", None)) for e in self.exporters]

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
            lines += _reason_lines(f"{outcome}: ", reasons, self.reason_bytes.get(outcome, Counter()))
        by_version = ", ".join(f"{n} HTTP/{v}" for v, n in sorted(self.versions.items()))
        line = f"{_plural(self.calls, 'exchange')}" + (f" ({by_version})" if by_version else "")
        noted = [f"{self.flags[f]} {word}" for f, word in _FLAG_WORDS.items() if self.flags.get(f)]
        if noted:
            line += "; " + ", ".join(noted)
        lines.append(line)
        if self.problems:
            total = sum(self.problems.values())
            lines.append(f"{_plural(total, 'HTTP problem')} (parsing of that connection stopped):")
            lines += _reason_lines("", self.problems, Counter())
        views = self.views()
        for name, stats, _err in views[1:]:  # the file output is the summary above; others say how they did
            counts = ", ".join(f"{k} {stats[k]}" for k in ("exported", "failed", "partial_rejected",
                                                           "retries", "dropped") if stats.get(k))
            lines.append(f"{name}: {counts or 'nothing exported'}")
        for name, stats, err in views[:1]:
            dropped = stats.get("dropped", 0)
            if dropped:
                lines.append(f"{name}: {dropped} records not written" + (f" ({err})" if err else ""))
        return "\n".join(lines)

    def lost(self) -> bool:
        """Whether some record was lost for good: not written to the file, or rejected by a collector."""
        return any(stats.get(k, 0) for _name, stats, _err in self.views() for k in EXPORT_LOSSES)


def _ignore(_note: str) -> None:
    pass


def make_exporter(output: str, fmt: str, body_mode: str = "auto", append: bool = False,
                  websocket_records: str = "session") -> Exporter:
    """The file output of a run: ``output`` overwritten, unless ``append`` (JSON lines only)."""
    _check_append(fmt, append)
    if fmt == "har":
        from ..export.har import HarExporter

        return HarExporter(output)
    if fmt == "jsonl":
        from ..export.jsonl import JsonlExporter

        if not append and output != "-" and os.path.isfile(output):
            try:
                os.truncate(output, 0)  # -o overwrites, for every command and format
            except OSError as exc:
                raise InputError(f"{output}: cannot write output: {exc.strerror or exc}") from None
        return JsonlExporter(output, body_mode=body_mode, websocket_records=websocket_records)
    raise InputError(f"unknown output format {fmt!r} (jsonl or har)")


def _check_append(fmt: str, append: bool) -> None:
    if append and fmt == "har":
        raise InputError("--append: a HAR file is one JSON document and cannot be appended to; "
                         "use --format jsonl or another output file")


def _render(fmt: str, body_mode: str, websocket_records: str = "session") -> Callable[[ApiCall], bytes]:
    """One record as the bytes a part file of ``replay --workers`` holds (what the exporter would write)."""
    if fmt == "har":
        from ..export.har import har_entry

        return lambda call: json.dumps(har_entry(call), ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass")
    from ...record import call_to_json_line, call_to_json_lines

    if websocket_records == "message":  # a session's lines stay together, at the session's place
        return lambda call: b"".join(call_to_json_lines(call, body_mode=body_mode, per_message=True))
    return lambda call: call_to_json_line(call, body_mode=body_mode)


def _flush_all(exporters: Sequence[Exporter], flush_timeout: float) -> list[Exporter]:
    """Flush and close every exporter within ``flush_timeout`` in all; the ones with records left."""
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
    return leftovers


def _leftover_line(name: str, stats: dict[str, int], flush_timeout: float) -> str:
    pending = {k: v for k, v in stats.items() if k in ("queue_depth", "spool_bytes") and v}
    detail = ", ".join(f"{k} {v}" for k, v in pending.items()) or "some records undelivered"
    return f"{name}: flush timed out after {flush_timeout:g}s; left: {detail}"


GC_YOUNG = 50_000  # allocations between collections of the youngest generation during a run (default 700)


def replay_main(captures: Sequence[str], keylogs: Sequence[str], rsa_keys: Sequence[str],
                ports: Sequence[int], output: str = "-", fmt: str = "jsonl", body_limit: int = 128 * 1024,
                rsa_password: bytes | None = None, extra_exporters: Sequence[Exporter] = (),
                flush_timeout: float = 60.0, body_mode: str = "auto", *, workers: int = 0,
                append: bool = False, make_extra: Callable[[], Sequence[Exporter]] | None = None,
                facts_files: Sequence[str] = (), facts_out: str | None = None,
                websocket_records: str = "session") -> int:
    """The whole offline pipeline over ``captures`` (in order, one engine). Returns the exit code.

    ``workers`` >= 1: that many processes, each with its share of the flows (:mod:`.workers`); the
    records are then sorted by request start. ``make_extra`` makes the exporters beside the file output
    (OTLP), in the process that uses them; ``extra_exporters`` are ready-made ones (one process only).
    ``facts_files``: handshake facts of other sensors (mid-stream pickup); ``facts_out``: where the facts
    this run sees are written (one process only). ``websocket_records``: ``session`` (one record per
    WebSocket session) or ``message`` (and one per message), JSON lines only. Exit 1 when a record was
    lost for good: not written, rejected by the collector, or left unsent."""
    warn = sys.stderr
    for path in captures:
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such capture file" if not os.path.exists(path)
                             else f"{path}: not a regular file")
    _check_append(fmt, append)
    if websocket_records not in ("session", "message"):
        raise InputError(f"--websocket-records {websocket_records!r}: session or message")
    if workers and facts_out is not None:
        raise InputError("--facts-out is written by one process: leave out --workers")
    secrets = load_keylogs_for(keylogs, captures, lambda w: print(w, file=warn))
    facts = load_facts_files(facts_files, lambda w: print(w, file=warn))
    keys = load_rsa_files(rsa_keys, rsa_password)

    def make_engine() -> Engine:
        engine = Engine(EngineConfig(ports=ports or None, http=True, body_limit=body_limit), rsa_keys=keys)
        engine.add_secrets(secrets, 0.0)
        engine.add_facts(facts)
        return engine

    progress = warn if warn.isatty() else None
    if workers:
        return _replay_shared(captures, workers, make_engine, output, fmt, body_mode, append, make_extra,
                              flush_timeout, progress, websocket_records)
    exporters: list[Exporter] = [make_exporter(output, fmt, body_mode, append, websocket_records)]
    exporters += extra_exporters
    if make_extra is not None:
        exporters += make_extra()
    run = ReplayRun(make_engine(), exporters, progress=progress, warn=warn)
    if facts_out is not None:
        run.facts_out = FactsWriter(facts_out)
    # as decrypt_main: start-up's objects frozen out of the collector's scans, the youngest generation
    # collected less often (events and records are freed by reference counting); undone on return
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, threshold[1], threshold[2])
    try:
        for i, path in enumerate(captures, 1):
            run.run(path, i, len(captures))
        run.finish()
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
        leftovers = _flush_all(exporters, flush_timeout)
        if run.facts_out is not None:
            run.facts_out.close()
    print(run.summary(), file=warn)
    for exporter in leftovers:
        print(_leftover_line(type(exporter).__name__, exporter.stats, flush_timeout), file=warn)
    return 1 if leftovers or run.lost() else 0


def _replay_shared(captures: Sequence[str], workers: int, make_engine: Callable[[], Engine], output: str,
                   fmt: str, body_mode: str, append: bool,
                   make_extra: Callable[[], Sequence[Exporter]] | None, flush_timeout: float,
                   progress: IO[str] | None, websocket_records: str = "session") -> int:
    """``replay --workers N``: N processes read the captures, each keeps its share of the flows and
    writes its records to a part file (and its own OTLP exporter: each span leaves from the one process
    whose flow it is, exactly once, with that exporter's retries); this one merges the parts."""
    from .share import FlowShare
    from .workers import (
        PartWriter,
        check_workers,
        close_output,
        merge_parts,
        open_output,
        part_dir,
        remove_parts,
        run_workers,
    )

    check_workers(workers)
    warn = sys.stderr
    render = _render(fmt, body_mode, websocket_records)
    out, close = open_output(output, append)  # before any work: an output that cannot be written fails now
    tmp = part_dir(output)

    def job(k: int) -> dict[str, Any]:
        part = PartWriter(os.path.join(tmp, f"part{k}"), render)
        exporters: list[Exporter] = [part]
        if make_extra is not None:
            exporters += make_extra()
        run = ReplayRun(make_engine(), exporters, progress=progress if k == 0 else None,
                        warn=warn if k == 0 else None)  # each worker reads everything: one speaks for all
        share = run.share = FlowShare(run, k, workers)
        try:
            for i, path in enumerate(captures, 1):
                run.run(path, i, len(captures))
            share.finish()
        finally:
            leftovers = _flush_all(exporters, flush_timeout)
        return {"counts": run.counts(), "index": part.index, "part": os.path.join(tmp, f"part{k}"),
                "views": [(type(e).__name__, dict(e.stats), getattr(e, "last_error", None))
                          for e in exporters],
                "leftovers": [exporters.index(e) for e in leftovers]}

    # the summary's engine, built before the workers start: its HTTP stage is imported once, here, and
    # the workers have it from the fork
    total = ReplayRun(make_engine(), [])
    try:
        results = run_workers(workers, job)
        name = "HarExporter" if fmt == "har" else "JsonlExporter"
        try:
            if fmt == "har":
                from ... import __version__
                from ..export.har import _HEAD, _TAIL

                written = merge_parts([(r["part"], r["index"]) for r in results], out,
                                      head=(_HEAD % json.dumps(__version__)).encode(), first=b"\n",
                                      sep=b",\n", tail=_TAIL.encode())
            else:
                written = merge_parts([(r["part"], r["index"]) for r in results], out)
        except BrokenPipeError:
            raise  # stdout piped into a reader that stopped: the command line ends quietly
        except OSError as exc:
            raise InputError(f"{output}: cannot write output: {exc.strerror or exc}") from None
    finally:
        close_output(out, close)
        remove_parts(tmp)
    views: list[tuple[str, dict[str, int], str | None]] = []
    leftover: dict[int, dict[str, int]] = {}
    for k, r in enumerate(results):
        total.add_counts(r["counts"], whole_file=k == 0)
        for j, (vname, stats, err) in enumerate(r["views"]):
            if j == len(views):
                views.append((name if j == 0 else vname, {}, err))
            merged = views[j][1]
            for key, v in stats.items():
                merged[key] = merged.get(key, 0) + v
            if err and not views[j][2]:
                views[j] = (views[j][0], merged, err)
        for j in r["leftovers"]:
            leftover.setdefault(j, {})
    views[0][1]["exported"] = written
    total.exporter_views = views
    print(total.summary(), file=warn)
    for j in sorted(leftover):
        print(_leftover_line(views[j][0], views[j][1], flush_timeout), file=warn)
    return 1 if leftover or total.lost() else 0
