"""`replay --workers N` and `decrypt --workers N`: the same records, byte for byte, for any N (bundled
sample, corpus captures with HTTP/2), HAR too; flows really shared out; part files private and removed;
OTLP spans exported exactly once."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.support.otlp_receiver import HttpReceiver
from tests.support.paths import CORPUS, SAMPLES
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.shell.commands import main
from tlsmirror.shell.offline.inputs import load_keylogs_for
from tlsmirror.shell.offline.replay import ReplayRun, _render
from tlsmirror.shell.offline.share import FlowShare
from tlsmirror.shell.offline.workers import PartWriter

PCAP = str(SAMPLES / "api-mixed.pcap")
KEYLOG = str(SAMPLES / "api-mixed.keylog")
H2 = ["hotplace/tls_http_http2.pcapng", "hotplace/tls_http_http2_trial.pcapng",
      "ssldump/tls1.3_curl_google.pcap", "tls-decryption/tls3.cryptohack.org.pcapng"]
H2_KEYS = ["hotplace/tls_http_sslkeylog", "hotplace/tls_http_sslkeylog", "ssldump/log.txt",
           "tls-decryption/tls3.keylogfile.txt"]


def _replay(tmp: Path, name: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[bytes, str]:
    out = tmp / name
    assert main(["replay", *args, "-o", str(out)]) == 0
    return out.read_bytes(), capsys.readouterr().err


def _without_ids(data: bytes) -> list[str]:
    recs = [json.loads(x) for x in data.splitlines()]
    for r in recs:
        r.pop("connection_id")
        r.pop("route")  # each worker templates its own flows' paths (docs/exchange-schema.md)
    return sorted(json.dumps(r, sort_keys=True) for r in recs)


def _without_routes(data: bytes) -> bytes:
    recs = [json.loads(x) for x in data.splitlines()]
    for r in recs:
        r.pop("route")
    return b"".join(json.dumps(r).encode() + b"\n" for r in recs)


def test_jsonl_identical_for_any_n(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["replay", PCAP, "--keylog", KEYLOG]
    one, err_one = _replay(tmp_path, "plain.jsonl", base[1:], capsys)
    outs = {n: _replay(tmp_path, f"w{n}.jsonl", [*base[1:], "--workers", str(n)], capsys) for n in (1, 2, 3)}
    assert _without_routes(outs[1][0]) == _without_routes(outs[2][0]) == _without_routes(outs[3][0])
    assert len(outs[1][0].splitlines()) == 60
    assert _without_ids(outs[2][0]) == _without_ids(one)  # the same records as one process
    recs = [json.loads(x) for x in outs[2][0].splitlines()]
    starts = [r["request_start_ts"] for r in recs]
    assert starts == sorted(starts)
    assert outs[1][1] == outs[2][1] == outs[3][1] == err_one  # the summary adds up the workers'
    assert "60 exchanges" in err_one
    assert sorted(os.listdir(tmp_path)) == ["plain.jsonl", "w1.jsonl", "w2.jsonl", "w3.jsonl"]  # parts gone


def test_har_identical_for_any_n(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [PCAP, "--keylog", KEYLOG, "--format", "har"]
    plain, _ = _replay(tmp_path, "plain.har", args, capsys)
    outs = [_replay(tmp_path, f"w{n}.har", [*args, "--workers", str(n)], capsys)[0] for n in (1, 2, 3)]
    assert outs[0] == outs[1] == outs[2]
    doc, ref = json.loads(outs[1]), json.loads(plain)
    assert doc["log"]["creator"] == ref["log"]["creator"] and len(doc["log"]["entries"]) == 60

    def norm(entries: list[dict[str, object]]) -> list[str]:
        return sorted(json.dumps({k: v for k, v in e.items() if k != "connection"}, sort_keys=True)
                      for e in entries)

    assert norm(doc["log"]["entries"]) == norm(ref["log"]["entries"])


@pytest.mark.skipif(not (CORPUS / "cases.json").is_file(), reason="shared corpus not present")
def test_corpus_http2_captures_identical_for_any_n(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(CORPUS / c) for c in H2]
    for k in dict.fromkeys(H2_KEYS):
        args += ["--keylog", str(CORPUS / k)]
    outs = [_replay(tmp_path, f"w{n}.jsonl", [*args, "--workers", str(n)], capsys)[0] for n in (1, 2, 3)]
    assert outs[0] == outs[1] == outs[2]
    recs = [json.loads(x) for x in outs[0].splitlines()]
    assert sum(r["http_version"] == "2" for r in recs) >= 11
    plain, _ = _replay(tmp_path, "plain.jsonl", args, capsys)
    assert _without_ids(outs[1]) == _without_ids(plain)


def test_decrypt_identical_for_any_n(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outs = []
    for n in (1, 2, 3):
        out = tmp_path / f"d{n}.jsonl"
        assert main(["decrypt", PCAP, "--keylog", KEYLOG, "-o", str(out), "--workers", str(n)]) == 0
        outs.append(out.read_bytes())
        assert "12 TLS connections: 12 decrypted" in capsys.readouterr().err
    assert outs[0] == outs[1] == outs[2]
    conns = [json.loads(x) for x in outs[0].splitlines()]
    assert [c["start"] for c in conns] == sorted(c["start"] for c in conns)
    assert all(c["outcome"] == "decrypted" for c in conns)


def test_flows_are_shared_out_and_parts_are_private(tmp_path: Path) -> None:
    secrets = load_keylogs_for([KEYLOG], [PCAP], lambda _note: None)
    conns: list[set[int]] = []
    for k in range(2):
        engine = Engine(EngineConfig(http=True))
        engine.add_secrets(secrets, 0.0)
        part = PartWriter(str(tmp_path / f"part{k}"), _render("jsonl", "auto"))
        run = ReplayRun(engine, [part])
        share = run.share = FlowShare(run, k, 2)
        run.run(PCAP)
        share.finish()
        part.close()
        assert stat.S_IMODE(os.stat(tmp_path / f"part{k}").st_mode) == 0o600
        assert share.own_frames < share.frame_no
        conns.append(run.tls_http_conns)
    assert conns[0] and conns[1] and not conns[0] & conns[1]
    assert len(conns[0] | conns[1]) == 12


def test_otlp_spans_exactly_once_with_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with HttpReceiver() as rx:
        code = main(["replay", PCAP, "--keylog", KEYLOG, "-o", str(tmp_path / "o.jsonl"), "--workers", "2",
                     "--otlp-endpoint", rx.endpoint, "--otlp-protocol", "http", "--flush-timeout", "20"])
        assert code == 0
        assert rx.wait_spans(60, timeout=20)
        spans = rx.spans()
    assert len(spans) == 60 and len({s.span_id for s in spans}) == 60
    assert "OtlpExporter: exported 60" in capsys.readouterr().err


def test_bad_worker_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["replay", PCAP, "--workers", "0"])
    assert exc.value.code == 2
    assert "1 to 64" in capsys.readouterr().err


def _idle_capture(tmp: Path) -> str:
    """Connection A idles 400 s between two exchanges; connection B, in the other worker's share,
    talks meanwhile: in one process B's packets expire A (idle_timeout 300 s), so A's second exchange is
    a new connection. The workers must see the same (their clock runs on every segment of the file)."""
    from tests.support.pcapwriter import pcap_bytes, segment_frames, tcp_conversation, write_capture
    from tlsmirror.frames.events import TcpSegment
    from tlsmirror.frames.flowhash import FlowHasher

    def req(p: str) -> bytes:
        return f"GET /{p} HTTP/1.1\r\nHost: idle.test\r\n\r\n".encode()

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    a = tcp_conversation([(0, req("a1")), (1, ok), (0, req("a2")), (1, ok)], client=("10.0.0.1", 40000),
                         server=("10.0.0.2", 80), ts=1000.0, close=False)
    a = [s if i < 5 else TcpSegment(s.ts + 400.0, s.src, s.dst, s.sport, s.dport, s.seq, s.ack, s.flags,
                                    s.payload) for i, s in enumerate(a)]
    hasher = FlowHasher()
    share_a = hasher(1, segment_frames(a[:1])[0][1]) % 2
    for port in range(41000, 41100):
        b = tcp_conversation([(0, req("b")), (1, ok)], client=("10.0.0.3", port), server=("10.0.0.2", 80),
                             ts=1350.0)
        if hasher(1, segment_frames(b[:1])[0][1]) % 2 != share_a:
            break
    frames = sorted(segment_frames(a) + segment_frames(b), key=lambda f: f[0])
    return write_capture(tmp / "idle.pcap", pcap_bytes(frames))


def test_expiry_follows_every_segment_of_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cap = _idle_capture(tmp_path)
    outs = [_replay(tmp_path, f"w{n}.jsonl", [cap, "--workers", str(n)], capsys)[0] for n in (1, 2, 3)]
    assert outs[0] == outs[1] == outs[2]
    recs = {r["path"]: r for r in (json.loads(x) for x in outs[0].splitlines())}
    assert set(recs) == {"/a1", "/a2", "/b"}
    assert recs["/a1"]["connection_id"] != recs["/a2"]["connection_id"]  # A expired while idle
