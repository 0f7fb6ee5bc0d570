"""`tlsmirror decrypt`: a capture file in, one JSON line per TLS connection out."""

from __future__ import annotations

import gc
import hashlib
import os
import sys
from _json import encode_basestring_ascii  # json.encoder's C escaper, without importing the json package
from collections.abc import Callable, Sequence
from math import isfinite
from typing import IO, Any

from ...frames.addresses import endpoint
from ...pipeline import Engine, EngineConfig
from ...tls.events import OUTCOMES, HandshakeFacts, TlsGap, TlsHandshake, TlsOutcome, TlsPlaintext
from ..errors import InputError
from .facts import FactsWriter, load_facts_files
from .inputs import load_keylogs_for, load_rsa_files
from .loop import CaptureSink, EngineFeed, pump
from .pcapfile import CaptureReader


def _js(text: str | None) -> str:
    """A string or None as json.dumps writes it (ASCII, escaped)."""
    return "null" if text is None else encode_basestring_ascii(text)


def _jb(flag: bool) -> str:
    return "true" if flag else "false"


class _Conn:
    """One connection's plaintext so far: SHA-256 and size per direction (0 and 1 as separate fields:
    compiled, each is a native field, where a list or tuple item is a generic lookup per record)."""

    __slots__ = ("dump", "gaps", "sha0", "sha1", "size0", "size1", "update0", "update1")

    def __init__(self) -> None:
        self.sha0: Any = hashlib.sha256()
        self.sha1: Any = hashlib.sha256()
        # their bound update methods, made once: compiled, a call per record without a method lookup
        self.update0: Callable[[bytes], None] = self.sha0.update
        self.update1: Callable[[bytes], None] = self.sha1.update
        self.size0 = 0
        self.size1 = 0
        self.dump: list[IO[bytes] | None] = [None, None]
        self.gaps = 0


class DecryptRun(EngineFeed):
    """Drives an :class:`Engine` over capture files and writes the per-connection report."""

    def __init__(self, engine: Engine, out: IO[str], dump_dir: str | None = None) -> None:
        self.engine = engine
        self.out = out
        self.dump_dir = dump_dir
        self.conns: dict[int, _Conn] = {}
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.connections = 0
        self.warnings: list[str] = []  # non-fatal notes on the input (truncated file, bad secrets lines)
        self.facts_out: FactsWriter | None = None  # --facts-out: where the handshake facts seen go
        self.share: CaptureSink | None = None  # decrypt --workers: the sink that keeps this worker's flows
        # decrypt --workers: (start, connection id, order, offset, length) of each line written
        self.index: list[tuple[float, int, int, int, int]] | None = None
        self.pos = 0

    def run(self, path: str) -> None:
        """Decrypt one capture file (through the one capture loop, :func:`.loop.pump`)."""
        with CaptureReader(path) as reader:
            pump(reader, self if self.share is None else self.share, self.warnings.append)

    def handle(self, events: list[Any]) -> None:
        conns = self.conns
        for ev in events:
            if type(ev) is TlsPlaintext:  # each test narrows ev (a saved type(ev) would not)
                c = conns.get(ev.flow.id)
                if c is None:
                    c = conns[ev.flow.id] = _Conn()
                data = ev.data
                if ev.direction:
                    c.update1(data)
                    c.size1 += len(data)
                else:
                    c.update0(data)
                    c.size0 += len(data)
                if self.dump_dir is not None:
                    self._dump(c, ev)
            elif type(ev) is TlsOutcome:
                done = conns.pop(ev.flow.id, None)
                self._report(ev, done if done is not None else _Conn())
            elif type(ev) is TlsGap:
                c = conns.get(ev.flow.id)
                if c is None:
                    c = conns[ev.flow.id] = _Conn()
                c.gaps += 1
            elif type(ev) is TlsHandshake and ev.flow.id not in conns:
                conns[ev.flow.id] = _Conn()
            elif type(ev) is HandshakeFacts and self.facts_out is not None:
                self.facts_out.write(ev)

    def _dump(self, c: _Conn, ev: TlsPlaintext) -> None:
        f = c.dump[ev.direction]
        if f is None:
            assert self.dump_dir is not None
            name = f"conn{ev.flow.id:06d}-{'c2s' if ev.direction == 0 else 's2c'}.bin"
            f = c.dump[ev.direction] = open(os.path.join(self.dump_dir, name), "wb")  # noqa: SIM115
        f.write(ev.data)

    def _report(self, ev: TlsOutcome, c: _Conn) -> None:
        flow = ev.flow
        cd = ev.client_dir
        for f in c.dump:
            if f is not None:
                f.close()
        self.connections += 1
        self.outcomes[ev.outcome] = self.outcomes.get(ev.outcome, 0) + 1
        start = round(flow.ts_first, 6)
        end = round(ev.ts, 6)
        client = endpoint(flow.addr[cd], flow.port[cd])
        server = endpoint(flow.addr[cd ^ 1], flow.port[cd ^ 1])
        if isfinite(start) and isfinite(end):
            # the line json.dumps of the record would write (tests hold them equal), built in one
            # expression: compiled, str() of an int and the join are native, where an f-string's pieces
            # are a str.format call each
            line = "".join([
                '{"id": ', str(flow.id), ', "client": ', _js(client), ', "server": ', _js(server),
                ', "start": ', repr(start), ', "end": ', repr(end), ', "sni": ', _js(ev.sni),
                ', "alpn": ', _js(ev.alpn), ', "version": ', _js(ev.version), ', "suite": ', _js(ev.suite),
                ', "resumed": ', _jb(ev.resumed), ', "outcome": ', _js(ev.outcome),
                ', "reason": ', _js(ev.reason), ', "picked_up": ', _jb(ev.picked_up),
                ', "late_key": ', _jb(ev.late_key), ', "records_decrypted": ', str(ev.records_decrypted),
                ', "records_failed": ', str(ev.records_failed), ', "c2s_bytes": ', str(c.size0),
                ', "c2s_sha256": "', c.sha0.hexdigest(), '", "s2c_bytes": ', str(c.size1),
                ', "s2c_sha256": "', c.sha1.hexdigest(), '"}\n'])
        else:  # a timestamp json writes as Infinity or NaN: leave it to json
            rec = {
                "id": flow.id, "client": client, "server": server, "start": start, "end": end,
                "sni": ev.sni, "alpn": ev.alpn, "version": ev.version, "suite": ev.suite,
                "resumed": ev.resumed, "outcome": ev.outcome, "reason": ev.reason,
                "picked_up": ev.picked_up, "late_key": ev.late_key,
                "records_decrypted": ev.records_decrypted, "records_failed": ev.records_failed,
                "c2s_bytes": c.size0, "c2s_sha256": c.sha0.hexdigest(),
                "s2c_bytes": c.size1, "s2c_sha256": c.sha1.hexdigest(),
            }
            import json

            line = json.dumps(rec) + "\n"
        # ASCII (json escapes the rest): one character, one byte
        self.out.write(line)
        if self.index is not None:
            self.index.append((flow.ts_first, flow.id, len(self.index), self.pos, len(line)))
            self.pos += len(line)

    def summary(self) -> str:
        parts = [f"{n} {name}" for name, n in self.outcomes.items() if n]
        return f"{self.connections} TLS connections: " + (", ".join(parts) if parts else "none")


GC_YOUNG = 50_000  # allocations between collections of the youngest generation during a run (default 700)


def decrypt_main(capture: str, keylogs: list[str], rsa_keys: list[str], ports: list[int],
                 output: str, dump_dir: str | None, rsa_password: bytes | None = None, *, workers: int = 0,
                 append: bool = False, facts_files: Sequence[str] = (), facts_out: str | None = None) -> int:
    """``tlsmirror decrypt``. ``workers`` >= 1: that many processes share the flows (:mod:`.workers`);
    lines are then sorted by connection start, the same for any N.

    During the run what start-up built (modules, classes, tables) is frozen out of the collector's scans
    and the youngest generation is collected less often: a run's events and records are freed by reference
    counting, so frequent scans find next to nothing. Both are undone on return."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, threshold[1], threshold[2])
    try:
        return _decrypt(capture, keylogs, rsa_keys, ports, output, dump_dir, rsa_password, workers, append,
                        facts_files, facts_out)
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _decrypt(capture: str, keylogs: list[str], rsa_keys: list[str], ports: list[int], output: str,
             dump_dir: str | None, rsa_password: bytes | None, workers: int, append: bool,
             facts_files: Sequence[str], facts_out: str | None) -> int:
    warn = sys.stderr
    CaptureReader(capture).close()  # a missing or foreign capture file: say so before anything else
    if workers and facts_out is not None:
        raise InputError("--facts-out is written by one process: leave out --workers")
    secrets = load_keylogs_for(keylogs, [capture], lambda w: print(w, file=warn))
    facts = load_facts_files(facts_files or (), lambda w: print(w, file=warn))
    keys = load_rsa_files(rsa_keys, rsa_password)
    if dump_dir is not None:
        try:
            os.makedirs(dump_dir, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{dump_dir}: cannot create dump directory: {exc.strerror or exc}") from None

    def make_engine() -> Engine:
        engine = Engine(EngineConfig(ports=ports or None), rsa_keys=keys)
        engine.add_secrets(secrets, 0.0)
        engine.add_facts(facts)
        return engine

    if workers:
        return _decrypt_shared(capture, workers, make_engine, output, dump_dir, append)
    writer = FactsWriter(facts_out) if facts_out is not None else None
    try:
        if output == "-":
            run = DecryptRun(make_engine(), sys.stdout, dump_dir)
            run.facts_out = writer
            run.run(capture)
            run.finish()
        else:
            try:
                fh = open(output, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise InputError(f"{output}: cannot write output: {exc.strerror or exc}") from None
            with fh:
                run = DecryptRun(make_engine(), fh, dump_dir)
                run.facts_out = writer
                run.run(capture)
                run.finish()
    finally:
        if writer is not None:
            writer.close()
    for w in run.warnings:
        print(w, file=warn)
    print(run.summary(), file=warn)
    return 0


def _decrypt_shared(capture: str, workers: int, make_engine: Callable[[], Engine], output: str,
                    dump_dir: str | None, append: bool) -> int:
    """``decrypt --workers N``: each worker writes its connections' lines to a part file (and its own
    ``--dump-dir`` files); this process merges the parts by connection start."""
    from .share import FlowShare
    from .workers import check_workers, close_output, merge_parts, open_output, part_dir, remove_parts, run_workers

    check_workers(workers)
    warn = sys.stderr
    out, close = open_output(output, append)
    tmp = part_dir(output)

    def job(k: int) -> dict[str, Any]:
        path = os.path.join(tmp, f"part{k}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w", encoding="ascii") as fh:
            run = DecryptRun(make_engine(), fh, dump_dir)
            run.index = []
            share = run.share = FlowShare(run, k, workers)
            run.run(capture)
            share.finish()
        return {"part": path, "index": run.index, "outcomes": run.outcomes, "connections": run.connections,
                "warnings": run.warnings}

    try:
        results = run_workers(workers, job)
        try:
            merge_parts([(r["part"], r["index"]) for r in results], out)
        except BrokenPipeError:
            raise  # stdout piped into a reader that stopped: the command line ends quietly
        except OSError as exc:
            raise InputError(f"{output}: cannot write output: {exc.strerror or exc}") from None
    finally:
        close_output(out, close)
        remove_parts(tmp)
    total = DecryptRun(make_engine(), sys.stdout)
    for r in results:
        total.connections += r["connections"]
        for name, n in r["outcomes"].items():
            total.outcomes[name] = total.outcomes.get(name, 0) + n
    for w in results[0]["warnings"]:  # every worker read the whole file: one speaks for all
        print(w, file=warn)
    print(total.summary(), file=warn)
    return 0
