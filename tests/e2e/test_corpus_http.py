"""Acceptance: the HTTP exchanges of the external corpus match tshark's HTTP messages.

For every corpus case with scope ``http``, ``tlsmirror replay``'s engine (HTTP on) runs over the capture
and, per TLS TCP stream (identified by its first sender's address, ``oracle/streams.json``), the
requests (method, target; h2: method, authority, path) and the response status codes must be the
oracle's (``oracle/*.http1.tsv`` / ``*.http2.tsv``). Responses come from ``*.nobodyreasm.tsv`` where
present: tshark's default settings drop HTTP/1.0 responses without Content-Length (read until
close), which we must report. Cleartext HTTP is left out: the oracle only lists HTTP inside TLS.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.corpus import CORPUS, corpus_present
from tlsmirror.calls import ApiCall
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.record import call_to_dict
from tlsmirror.shell.offline.inputs import load_keylog_files, load_rsa_files
from tlsmirror.shell.offline.pcapfile import CapturedFrame, CaptureReader
from tlsmirror.tls.events import TlsPlaintext

pytestmark = pytest.mark.corpus


class _Collect:
    def __init__(self) -> None:
        self.calls: list[ApiCall] = []
        self.stats: dict[str, int] = {}

    def export(self, call: ApiCall) -> None:
        self.calls.append(call)

    def flush(self, timeout: float = 0.0) -> bool:
        return True

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def _http_cases() -> list[dict[str, Any]]:
    if not corpus_present():
        return []
    cases = json.loads((CORPUS / "cases.json").read_text())
    return [c for c in cases if c["scope"] == "http"]


def _tsv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    return list(csv.DictReader(io.StringIO(path.read_text()), delimiter="\t"))


def _oracle(capture: str) -> dict[str, Any]:
    """Per tcp.stream: h1 requests [(method, uri)], h1 statuses, h2 request and status counters."""
    base = CORPUS / "oracle" / capture.replace("/", "__")
    h1 = _tsv(Path(f"{base}.http1.tsv"))
    h1_nb = Path(f"{base}.http1.nobodyreasm.tsv")
    h1_resp = _tsv(h1_nb) if h1_nb.is_file() else h1
    h2 = _tsv(Path(f"{base}.http2.tsv"))
    streams: dict[str, dict[str, Any]] = {}

    def s(n: str) -> dict[str, Any]:
        return streams.setdefault(n, {"h1_req": [], "h1_status": [], "h2_req": Counter(),
                                      "h2_status": Counter()})

    for row in h1:
        if row["http.request.method"]:
            s(row["tcp.stream"])["h1_req"].append((row["http.request.method"], row["http.request.uri"]))
    for row in h1_resp:
        if row["http.response.code"]:
            s(row["tcp.stream"])["h1_status"].append(int(row["http.response.code"]))
    for row in h2:
        # one row per packet; a packet may carry several HEADERS frames (comma-separated values)
        methods = [m for m in row["http2.headers.method"].split(",") if m]
        paths = [p for p in row["http2.headers.path"].split(",") if p]
        auths = [a for a in row["http2.headers.authority"].split(",") if a]
        for i, m in enumerate(methods):
            s(row["tcp.stream"])["h2_req"][(m, auths[i] if i < len(auths) else None, paths[i])] += 1
        for st in row["http2.headers.status"].split(","):
            if st:
                s(row["tcp.stream"])["h2_status"][int(st)] += 1
    return streams


def _drive(engine: Engine, capture: str, sink: _Collect, plain: dict[int, list[int]]) -> None:
    """What ``tlsmirror replay`` does with a capture (ReplayRun is compiled, so not subclassed here),
    also counting each TLS connection's plaintext bytes per direction (to find the oracle's stream)."""

    def handle(events: list[Any]) -> None:
        for ev in events:
            if type(ev) is TlsPlaintext:
                plain.setdefault(ev.flow.id, [0, 0])[ev.direction] += len(ev.data)
            elif type(ev) is ApiCall:
                sink.export(ev)

    with CaptureReader(capture) as reader:
        for item in reader:
            if type(item) is CapturedFrame:
                handle(engine.feed_frame(item.linktype, item.data, item.ts))
            else:
                handle(engine.add_secrets(parse_keylog(item.data)[0], item.ts))
    handle(engine.finish())


def _run(case: dict[str, Any], plain: dict[int, list[int]] | None = None) -> list[ApiCall]:
    keylog_types = ("keylog", "keylog-derived", "keylog+rsa")
    keylogs = [str(CORPUS / case["key"])] if case["keytype"] in keylog_types else []
    rsa = []
    if case["keytype"] == "rsa":
        rsa = [str(CORPUS / case["key"])]
    elif case["keytype"] == "keylog+rsa":
        rsa = [str(CORPUS / case["key2"])]
    engine = Engine(EngineConfig(http=True), rsa_keys=load_rsa_files(rsa))
    engine.add_secrets(load_keylog_files(keylogs, lambda _note: None), 0.0)
    sink = _Collect()
    counts: dict[int, list[int]] = {}
    _drive(engine, str(CORPUS / case["capture"]), sink, counts)
    if plain is not None:
        plain.update(counts)
    return sink.calls


def _compare(case: dict[str, Any], streams_oracle: list[dict[str, Any]]) -> list[str]:
    plain: dict[int, list[int]] = {}
    calls = [c for c in _run(case, plain) if c.connection.tls]
    by_conn: dict[int, list[ApiCall]] = {}
    for c in calls:
        by_conn.setdefault(c.connection.id, []).append(c)
    info = {s["stream"]: s for s in streams_oracle}
    problems = []
    oracle = _oracle(case["capture"])
    matched: set[int] = set()
    for stream, want in sorted(oracle.items(), key=lambda kv: int(kv[0])):
        s = info.get(stream, {})
        ep = s.get("node0")
        sizes = (s.get("node0_bytes"), s.get("node1_bytes"))
        cands = [cid for cid, cs in by_conn.items() if cid not in matched
                 and ep in (_ep(cs[0].connection.client_ip, cs[0].connection.client_port),
                            _ep(cs[0].connection.server_ip, cs[0].connection.server_port))]
        # several connections share the endpoint (node0 is the server): the decrypted sizes decide
        exact = [cid for cid in cands if tuple(plain.get(cid, ())) in (sizes, sizes[::-1])]
        cid = (exact or cands or [None])[0]
        conn_calls: list[ApiCall] = []
        if cid is not None:
            matched.add(cid)
            conn_calls = by_conn[cid]
        got_h1_req = [(c.exchange.method, c.exchange.path) for c in conn_calls
                      if c.exchange.http_version != "2" and c.exchange.method is not None]
        got_h1_status = [c.exchange.status for c in conn_calls
                         if c.exchange.http_version != "2" and c.exchange.status is not None]
        got_h2_req = Counter((c.exchange.method, c.exchange.authority, c.exchange.path) for c in conn_calls
                             if c.exchange.http_version == "2" and c.exchange.method is not None)
        got_h2_status = Counter(c.exchange.status for c in conn_calls
                                if c.exchange.http_version == "2" and c.exchange.status is not None)
        for what, got, exp in (("h1 requests", got_h1_req, want["h1_req"]),
                               ("h1 statuses", got_h1_status, want["h1_status"]),
                               ("h2 requests", got_h2_req, want["h2_req"]),
                               ("h2 statuses", got_h2_status, want["h2_status"])):
            if got != exp:
                problems.append(f"stream {stream} ({ep}) {what}: got {got!r}, oracle {exp!r}")
    for cid, cs in by_conn.items():
        if cid not in matched:
            client = _ep(cs[0].connection.client_ip, cs[0].connection.client_port)
            problems.append(f"connection {cid} ({client}): {len(cs)} exchanges the oracle has no HTTP for")
    return problems


def _ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


CASES = _http_cases()


@pytest.mark.skipif(not corpus_present(), reason=f"corpus not found at {CORPUS}")
@pytest.mark.parametrize("case", CASES, ids=[c["capture"] for c in CASES])
def test_http_matches_oracle(case: dict[str, Any]) -> None:
    oracle_streams = json.loads((CORPUS / "oracle" / "streams.json").read_text()).get(case["capture"], [])
    problems = _compare(case, oracle_streams)
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not corpus_present(), reason=f"corpus not found at {CORPUS}")
def test_records_of_corpus_are_json() -> None:
    """Every exchange of every HTTP case turns into a JSON-serialisable record (bodies and all)."""
    n = 0
    for case in CASES[:12]:
        for call in _run(case):
            json.dumps(call_to_dict(call))
            n += 1
    assert n > 0
