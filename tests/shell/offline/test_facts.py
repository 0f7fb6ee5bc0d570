"""`--facts-out` and `--facts` of `tlsmirror replay` and `decrypt`: a run that saw the handshakes writes their
facts; a run over a capture that starts after them decrypts the same connections from mid-stream."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.pcapwriter import conversation_pcap, write_capture
from tests.support.tlspair import run_session
from tlsmirror.shell.commands import main
from tlsmirror.shell.offline.facts import facts_from_dict, facts_to_dict, load_facts_files
from tlsmirror.tls.events import HandshakeFacts

REQS = [b"GET /v1/items/%d HTTP/1.1\r\nHost: api.example.test\r\n\r\n" % i for i in range(3)]
RESPS = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"] * 3
HANDSHAKE_FLIGHTS = 4


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("facts")
    t12, _ = run_session(tls_version="1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256", requests=REQS, responses=RESPS,
                         tmpdir=tmp, alpn=["http/1.1"])
    cbc, _ = run_session(tls_version="1.2", cipher="ECDHE-RSA-AES256-SHA", requests=REQS, responses=RESPS,
                         tmpdir=tmp, alpn=["http/1.1"])
    keylog = tmp / "keys.log"
    keylog.write_text(t12.keylog + cbc.keylog)
    full = conversation_pcap(t12.flights, client=("10.0.0.1", 40001), ts=1000.0)
    full_cbc = conversation_pcap(cbc.flights, client=("10.0.0.1", 40002), ts=1000.5)
    # the whole connections, one capture each; then what a sensor started late saw of them
    whole = [write_capture(tmp / "whole.pcap", full), write_capture(tmp / "whole-cbc.pcap", full_cbc)]
    late = conversation_pcap(t12.flights[HANDSHAKE_FLIGHTS + 2:], client=("10.0.0.1", 40001), ts=1001.0,
                             handshake=False)
    return {"tmp": tmp, "keylog": str(keylog), "whole": whole, "late": write_capture(tmp / "late.pcap", late),
            "secrets": [line.split()[2] for line in (t12.keylog + cbc.keylog).splitlines() if line.strip()]}


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_facts_out_then_facts_picks_the_connection_up(captures: dict[str, Any], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    facts = tmp_path / "facts.jsonl"
    facts.write_text("left over from before\n")
    os.chmod(facts, 0o644)
    code = main(["replay", *captures["whole"], "--keylog", captures["keylog"], "-o", str(tmp_path / "a.jsonl"),
                 "--facts-out", str(facts)])
    assert code == 0
    assert stat.S_IMODE(os.stat(facts).st_mode) == 0o600
    rows = _lines(facts)
    assert [(r["client"]["port"], r["version"], r["suite"]) for r in rows] == [
        (40001, "TLS1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
        (40002, "TLS1.2", "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA")]
    assert rows[1]["encrypt_then_mac"] is True and rows[0]["alpn"] == "http/1.1"
    text = facts.read_text().lower()
    assert not any(s.lower() in text for s in captures["secrets"])  # facts, no secret
    capsys.readouterr()

    # without the facts: nothing; with them: the calls after the cut, flagged
    out = tmp_path / "b.jsonl"
    assert main(["replay", captures["late"], "--keylog", captures["keylog"], "-o", str(out)]) == 0
    assert _lines(out) == []
    assert main(["replay", captures["late"], "--keylog", captures["keylog"], "-o", str(out),
                 "--facts", str(facts)]) == 0
    recs = _lines(out)
    assert [(r["target"], r["status"], r["flags"]) for r in recs] == [
        ("/v1/items/1", 200, ["picked_up"]), ("/v1/items/2", 200, ["picked_up"])]
    assert recs[0]["tls"]["version"] == "TLS1.2" and recs[0]["tls"]["alpn"] == "http/1.1"
    err = capsys.readouterr().err
    assert "1 picked up mid-stream" in err

    dec = tmp_path / "d.jsonl"
    assert main(["decrypt", captures["late"], "--keylog", captures["keylog"], "-o", str(dec),
                 "--facts", str(facts)]) == 0
    (rec,) = _lines(dec)
    assert (rec["outcome"], rec["picked_up"]) == ("decrypted", True)


def test_bad_facts_lines_are_reported_and_skipped(captures: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    good = HandshakeFacts(bytes([10, 0, 0, 1]), 40001, bytes([10, 0, 0, 2]), 443, b"\x01" * 32, b"\x02" * 32,
                          0x0303, 0xC02F, True, False, "h2", 5.0)
    path = tmp_path / "f.jsonl"
    bad_random = dict(facts_to_dict(good), client_random="zz" + "aa" * 31)
    path.write_text("\n".join([json.dumps(facts_to_dict(good)), "{not json", json.dumps({"client": 1}),
                               json.dumps(dict(facts_to_dict(good), suite="TLS_NOPE")), json.dumps(bad_random),
                               ""]) + "\n")
    warnings: list[str] = []
    got = load_facts_files([str(path)], warnings.append)
    assert got == [good]
    assert [w.split(": skipped handshake facts line: ")[0] for w in warnings] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert "zz" not in " ".join(warnings)
    assert facts_from_dict(json.loads(json.dumps(facts_to_dict(good)))) == good

    code = main(["replay", captures["late"], "--keylog", captures["keylog"], "-o", str(tmp_path / "o.jsonl"),
                 "--facts", str(tmp_path / "missing.jsonl")])
    assert code == 1
    assert "cannot read handshake facts" in capsys.readouterr().err


def test_ipv6_facts_round_trip() -> None:
    f = HandshakeFacts(bytes(15) + b"\x01", 50000, bytes(15) + b"\x02", 8443, b"\x03" * 32, b"\x04" * 32,
                       0x0304, 0x1301, False, False, None, 0.0)
    row = facts_to_dict(f)
    assert row["client"] == {"ip": "::1", "port": 50000} and row["version"] == "TLS1.3"
    assert facts_from_dict(row) == f


def test_the_server_name_round_trips_and_facts_without_it_still_load() -> None:
    f = HandshakeFacts(bytes([10, 0, 0, 1]), 40001, bytes([10, 0, 0, 2]), 443, b"\x01" * 32, b"\x02" * 32,
                       0x0303, 0xC02F, True, False, "h2", 5.0, "api.example.test")
    row = facts_to_dict(f)
    assert row["sni"] == "api.example.test"
    assert facts_from_dict(json.loads(json.dumps(row))) == f
    old = {k: v for k, v in row.items() if k != "sni"}  # written by an earlier version
    assert facts_from_dict(old).sni is None
    assert facts_from_dict(dict(old, sni=None)).sni is None
    with pytest.raises(ValueError, match="sni is not a string"):
        facts_from_dict(dict(row, sni=7))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner,
                                                                                 max_size=6), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(obj=_JSON, over=st.dictionaries(st.sampled_from(["client", "server", "client_random", "server_random",
                                                          "version", "suite", "alpn", "ts", "sni",
                                                          "extended_master_secret"]), _JSON, max_size=4))
def test_any_json_is_facts_or_a_value_error(obj: Any, over: dict[str, Any]) -> None:
    good = facts_to_dict(HandshakeFacts(bytes([10, 0, 0, 1]), 1, bytes([10, 0, 0, 2]), 2, b"\x01" * 32, b"\x02" * 32,
                                        0x0303, 0xC02F, False, False, None, 1.0))
    for candidate in (obj, dict(good, **over)):
        try:
            f = facts_from_dict(candidate)
        except ValueError:
            continue
        assert isinstance(f, HandshakeFacts) and len(f.client_random) == 32


def test_bad_lines_of_any_kind_never_fail_the_load(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"[" * 100000 + b"\n\xff\xfe\n" + b'{"ts": 1e400}\n' + b"1" * 5000 + b"\n")
    warnings: list[str] = []
    assert load_facts_files([str(path)], warnings.append) == []
    assert len(warnings) == 4
