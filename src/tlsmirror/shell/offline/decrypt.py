"""`tlsmirror decrypt`: a capture file in, one JSON line per TLS connection out."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from ...frames.addresses import endpoint
from ...pipeline import Engine, EngineConfig
from ...tls.events import OUTCOMES, HandshakeFacts, TlsGap, TlsHandshake, TlsOutcome, TlsPlaintext
from ..errors import InputError
from .facts import FactsWriter, load_facts_files
from .inputs import load_keylog_files, load_rsa_files
from .loop import EngineFeed, pump
from .pcapfile import CaptureReader


@dataclass(slots=True)
class _Conn:
    sha: tuple[Any, Any] = field(default_factory=lambda: (hashlib.sha256(), hashlib.sha256()))
    size: list[int] = field(default_factory=lambda: [0, 0])
    dump: list[IO[bytes] | None] = field(default_factory=lambda: [None, None])
    gaps: int = 0


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

    def run(self, path: str) -> None:
        """Decrypt one capture file (through the one capture loop, :func:`.loop.pump`)."""
        with CaptureReader(path) as reader:
            pump(reader, self, self.warnings.append)

    def handle(self, events: list[Any]) -> None:
        conns = self.conns
        for ev in events:
            if type(ev) is TlsPlaintext:  # each test narrows ev (a saved type(ev) would not)
                c = conns.get(ev.flow.id)
                if c is None:
                    c = conns[ev.flow.id] = _Conn()
                c.sha[ev.direction].update(ev.data)
                c.size[ev.direction] += len(ev.data)
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
        rec = {
            "id": flow.id,
            "client": endpoint(flow.addr[cd], flow.port[cd]),
            "server": endpoint(flow.addr[cd ^ 1], flow.port[cd ^ 1]),
            "start": round(flow.ts_first, 6),
            "end": round(ev.ts, 6),
            "sni": ev.sni,
            "alpn": ev.alpn,
            "version": ev.version,
            "suite": ev.suite,
            "resumed": ev.resumed,
            "outcome": ev.outcome,
            "reason": ev.reason,
            "picked_up": ev.picked_up,
            "late_key": ev.late_key,
            "records_decrypted": ev.records_decrypted,
            "records_failed": ev.records_failed,
            "c2s_bytes": c.size[0],
            "c2s_sha256": c.sha[0].hexdigest(),
            "s2c_bytes": c.size[1],
            "s2c_sha256": c.sha[1].hexdigest(),
        }
        self.out.write(json.dumps(rec) + "\n")

    def summary(self) -> str:
        parts = [f"{n} {name}" for name, n in self.outcomes.items() if n]
        return f"{self.connections} TLS connections: " + (", ".join(parts) if parts else "none")


def decrypt_main(capture: str, keylogs: list[str], rsa_keys: list[str], ports: list[int],
                 output: str, dump_dir: str | None, rsa_password: bytes | None = None,
                 facts_files: list[str] | None = None, facts_out: str | None = None) -> int:
    warn = sys.stderr
    CaptureReader(capture).close()  # a missing or foreign capture file: say so before anything else
    secrets = load_keylog_files(keylogs, lambda w: print(w, file=warn))
    facts = load_facts_files(facts_files or (), lambda w: print(w, file=warn))
    keys = load_rsa_files(rsa_keys, rsa_password)
    if dump_dir is not None:
        try:
            os.makedirs(dump_dir, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{dump_dir}: cannot create dump directory: {exc.strerror or exc}") from None
    engine = Engine(EngineConfig(ports=ports or None), rsa_keys=keys)
    engine.add_secrets(secrets, 0.0)
    engine.add_facts(facts)
    writer = FactsWriter(facts_out) if facts_out is not None else None
    try:
        if output == "-":
            run = DecryptRun(engine, sys.stdout, dump_dir)
            run.facts_out = writer
            run.run(capture)
            run.finish()
        else:
            try:
                fh = open(output, "w", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise InputError(f"{output}: cannot write output: {exc.strerror or exc}") from None
            with fh:
                run = DecryptRun(engine, fh, dump_dir)
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
