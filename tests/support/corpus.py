"""Runs tlsmirror over ../shared/corpus and compares with the tshark oracle (streams.json)."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.paths import CORPUS
from tlsmirror.pipeline import Engine
from tlsmirror.shell.offline.decrypt import DecryptRun
from tlsmirror.shell.offline.inputs import load_keylog_files, load_rsa_files


def corpus_present() -> bool:
    return (CORPUS / "cases.json").is_file()


def tcp_cases() -> list[dict[str, object]]:
    cases = json.loads((CORPUS / "cases.json").read_text())
    return [c for c in cases if c["scope"] != "udp"]


@dataclass
class CaseResult:
    capture: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    connections: list[dict[str, object]] = field(default_factory=list)


def run_case(case: dict[str, object]) -> list[dict[str, object]]:
    keylogs = [str(CORPUS / str(case["key"]))] if case["keytype"] in ("keylog", "keylog-derived",
                                                                        "keylog+rsa") else []
    rsa = []
    if case["keytype"] == "rsa":
        rsa = [str(CORPUS / str(case["key"]))]
    elif case["keytype"] == "keylog+rsa":
        rsa = [str(CORPUS / str(case["key2"]))]
    engine = Engine(rsa_keys=load_rsa_files(rsa))
    engine.add_secrets(load_keylog_files(keylogs, lambda _note: None), 0.0)
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as dump:
        run = DecryptRun(engine, out, dump)
        run.run(str(CORPUS / str(case["capture"])))
        run.finish()
        conns = sorted((json.loads(line) for line in out.getvalue().splitlines()), key=lambda c: int(c["id"]))
        for c in conns:
            for d in ("c2s", "s2c"):
                f = Path(dump) / f"conn{c['id']:06d}-{d}.bin"
                c[d + "_data"] = f.read_bytes() if f.exists() else b""
    return conns


def _same_or_oracle_short(got: tuple[object, ...], want: tuple[object, ...],
                          data: tuple[bytes, bytes]) -> bool:
    """Equal, or the oracle stopped early (tshark gave up) and our stream starts with exactly its bytes."""
    if got == want:
        return True
    for i in (0, 1):
        n, sha = int(str(want[2 * i])), want[2 * i + 1]
        if got[2 * i] == n and got[2 * i + 1] == sha:
            continue
        if int(str(got[2 * i])) > n and hashlib.sha256(data[i][:n]).hexdigest() == sha:
            continue
        return False
    return True


def check_case(case: dict[str, object], oracle: dict[str, list[dict[str, object]]]) -> CaseResult:
    capture = str(case["capture"])
    conns = run_case(case)
    res = CaseResult(capture, True, connections=conns)
    by_endpoint: dict[str, list[dict[str, object]]] = {}
    for c in conns:
        by_endpoint.setdefault(str(c["client"]), []).append(c)
        by_endpoint.setdefault(str(c["server"]), []).append(c)
    for s in oracle.get(capture, []):
        node0 = str(s["node0"])
        if node0 == ":0":
            continue  # tshark saw no TLS payload it could attribute: nothing to compare
        cands = by_endpoint.get(node0, [])
        want = (s["node0_bytes"], s["node0_sha256"], s["node1_bytes"], s["node1_sha256"])
        found = False
        for c in cands:
            if c["client"] == node0:
                got = (c["c2s_bytes"], c["c2s_sha256"], c["s2c_bytes"], c["s2c_sha256"])
                data = (c["c2s_data"], c["s2c_data"])
            else:
                got = (c["s2c_bytes"], c["s2c_sha256"], c["c2s_bytes"], c["c2s_sha256"])
                data = (c["s2c_data"], c["c2s_data"])
            if _same_or_oracle_short(got, want, data):  # type: ignore[arg-type]
                if got != want:
                    res.notes.append(f"stream {s['stream']}: oracle stopped early, our stream extends it")
                found = True
                cands.remove(c)
                break
        if not found:
            res.ok = False
            detail = "; ".join(f"{c['outcome']} {c['suite']} c2s={c['c2s_bytes']} s2c={c['s2c_bytes']} "
                               f"{c['reason']}" for c in cands) or "no connection from that endpoint"
            res.problems.append(f"stream {s['stream']} {node0} want {s['node0_bytes']}/{s['node1_bytes']}: "
                                f"{detail}")
    return res


def main() -> None:
    oracle = json.loads((CORPUS / "oracle" / "streams.json").read_text())
    bad = 0
    cases = tcp_cases()
    for case in cases:
        try:
            r = check_case(case, oracle)
        except Exception as exc:  # report and go on: this is a survey tool
            print(f"CRASH {case['capture']}: {type(exc).__name__}: {exc}")
            bad += 1
            continue
        if not r.ok:
            bad += 1
            print(f"FAIL {r.capture}")
            for p in r.problems[:4]:
                print("    ", p)
    print(f"{len(cases) - bad}/{len(cases)} captures match the oracle")


if __name__ == "__main__":
    main()
