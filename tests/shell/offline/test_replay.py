"""`tlsmirror replay`: the CLI over real TLS sessions (OpenSSL via tlspair) in synthetic captures,
JSON lines and HAR output, rotation and reopen, streaming, the summary, and errors."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.pcapwriter import conversation_pcap, write_capture
from tests.support.tlspair import run_session
from tlsmirror.calls import ApiCall, Connection
from tlsmirror.http.events import Body, Exchange
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.shell.commands import main
from tlsmirror.shell.export.har import HarExporter, har_entry
from tlsmirror.shell.export.jsonl import JsonlExporter
from tlsmirror.shell.offline import replay as replay_mod
from tlsmirror.shell.offline.replay import ReplayRun

REQS = [b"GET /v1/items?limit=2&tag=a&tag=b HTTP/1.1\r\nHost: api.example.test\r\nX-Req: 1\r\n\r\n",
        b"POST /v1/items HTTP/1.1\r\nHost: api.example.test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 9\r\n\r\n{\"n\": 42}"]
RESPS = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"items\": [1]}",
         b"HTTP/1.1 201 Created\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"4\r\n\x89PNG\r\n3\r\n\x00\x01\x02\r\n0\r\n\r\n"]
CLEAR = [(0, b"GET /plain HTTP/1.1\r\nHost: intranet\r\n\r\n"),
         (1, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")]


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("replay")
    t12, _ = run_session(tls_version="1.2", requests=REQS, responses=RESPS, tmpdir=tmp, alpn=["http/1.1"])
    t13, _ = run_session(tls_version="1.3", requests=REQS[:1], responses=RESPS[:1], tmpdir=tmp,
                         sni="second.example.test")
    keylog = tmp / "t12.keylog"
    keylog.write_text(t12.keylog)
    # capture 1: the TLS 1.2 session (keys from --keylog) and a cleartext HTTP conversation
    segs1 = conversation_pcap(t12.flights, client=("10.0.0.1", 40001), ts=1000.0)
    one = write_capture(tmp / "one.pcap", segs1)
    clear = write_capture(tmp / "clear.pcap", conversation_pcap(CLEAR, client=("10.0.0.9", 40009),
                                                                server=("10.0.0.2", 80), ts=1001.0))
    # capture 2: the TLS 1.3 session with its secrets embedded (pcapng DSB), gzip-compressed
    two = write_capture(tmp / "two.pcapng.gz", conversation_pcap(t13.flights, client=("10.0.0.1", 40002),
                                                                 ts=1002.0, keylog=t13.keylog), gzip=True)
    return {"tmp": tmp, "keylog": str(keylog), "one": one, "two": two, "clear": clear}


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_jsonl_over_several_captures(captures: dict[str, Any], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    code = main(["replay", captures["one"], captures["clear"], captures["two"],
                 "--keylog", captures["keylog"], "-o", str(out)])
    assert code == 0
    recs = _lines(out)
    assert [(r["method"], r["target"], r["status"]) for r in recs] == [
        ("GET", "/v1/items?limit=2&tag=a&tag=b", 200), ("POST", "/v1/items", 201), ("GET", "/plain", 404),
        ("GET", "/v1/items?limit=2&tag=a&tag=b", 200)]
    get, post, plain, get13 = recs
    assert get["query"] == [["limit", "2"], ["tag", "a"], ["tag", "b"]] and get["path"] == "/v1/items"
    assert get["tls"]["version"] == "TLS1.2" and get["tls"]["alpn"] == "http/1.1"
    assert get["tls"]["sni"] == "api.example.test" and get["scheme"] == "https"
    assert get["client"] == {"ip": "10.0.0.1", "port": 40001} and get["server"]["port"] == 443
    assert ["X-Req", "1"] in get["request"]["headers"]
    assert get["response"]["body"]["text"] == '{"items": [1]}'
    assert post["request"]["body"]["text"] == '{"n": 42}'
    assert post["response"]["body"]["encoding"] == "base64" and post["response"]["body"]["size"] == 7
    assert ["Transfer-Encoding", "chunked"] in post["response"]["headers"]
    assert plain["tls"] is None and plain["scheme"] == "http" and plain["url"] == "http://intranet/plain"
    assert get13["tls"]["version"] == "TLS1.3" and get13["tls"]["sni"] == "second.example.test"
    assert get13["connection_id"] != get["connection_id"]
    assert get["request_start_ts"] >= 1000.0 and get["request_start"].startswith("1970-01-01T00:16:")
    err = capsys.readouterr().err
    assert "2 TLS connections (2 decrypted), 1 cleartext HTTP connection" in err
    assert "4 exchanges (4 HTTP/1.1)" in err


def test_har_output_is_valid(captures: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out.har"
    assert main(["replay", captures["one"], "--keylog", captures["keylog"], "-o", str(out), "--format",
                 "har"]) == 0
    doc = json.loads(out.read_text())
    log = doc["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] == "tlsmirror"
    assert isinstance(log["creator"]["version"], str)
    assert len(log["entries"]) == 2
    for e in log["entries"]:
        assert set(e) >= {"startedDateTime", "time", "request", "response", "cache", "timings",
                          "serverIPAddress", "connection"}
        req, resp = e["request"], e["response"]
        assert set(req) >= {"method", "url", "httpVersion", "cookies", "headers", "queryString",
                            "headersSize", "bodySize"}
        assert set(resp) >= {"status", "statusText", "httpVersion", "cookies", "headers", "content",
                             "redirectURL", "headersSize", "bodySize"}
        assert set(resp["content"]) >= {"size", "mimeType"}
        assert e["startedDateTime"].endswith("Z") and e["time"] >= 0
        assert all(e["timings"][k] >= 0 for k in ("send", "wait", "receive"))
        assert req["httpVersion"] == "HTTP/1.1" and e["serverIPAddress"] == "10.0.0.2"
        assert all(set(h) == {"name", "value"} for h in req["headers"] + resp["headers"])
    get, post = log["entries"]
    assert get["request"]["url"] == "https://api.example.test/v1/items?limit=2&tag=a&tag=b"
    assert get["request"]["queryString"] == [{"name": "limit", "value": "2"}, {"name": "tag", "value": "a"},
                                             {"name": "tag", "value": "b"}]
    assert get["response"]["content"]["text"] == '{"items": [1]}' and get["response"]["bodySize"] == 14
    assert post["request"]["postData"] == {"mimeType": "application/json", "params": [], "text": '{"n": 42}'}
    assert post["response"]["statusText"] == "Created"
    assert post["response"]["content"]["encoding"] == "base64"
    assert post["response"]["content"]["mimeType"] == "image/png"


def _call(i: int, body: bytes = b"x" * 200) -> ApiCall:
    ex = Exchange("1.1", "GET", None, "h", f"/r/{i}?a=1", 200, "OK", (("Host", "h"),),
                  (("Content-Type", "text/plain"), ("Set-Cookie", "s=1; Path=/; HttpOnly")), (), (), None,
                  Body(body, len(body), len(body), False), 10.0 + i, 10.0 + i, 10.5 + i, 10.75 + i, None,
                  frozenset())
    return ApiCall(Connection(i, "10.0.0.1", 1000 + i, "10.0.0.2", 443, True, "TLS1.3", "X", None, None), ex)


def test_jsonl_rotation_and_backups(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    exp = JsonlExporter(str(path), max_bytes=2000, backups=2)
    for i in range(30):
        exp.export(_call(i))
    exp.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["calls.jsonl", "calls.jsonl.1", "calls.jsonl.2"]
    seen = []
    for name in ("calls.jsonl.2", "calls.jsonl.1", "calls.jsonl"):
        p = tmp_path / name
        assert 0 < p.stat().st_size <= 2000
        seen += [r["connection_id"] for r in _lines(p)]
    assert seen == list(range(30 - len(seen), 30))  # oldest deleted, order kept
    assert exp.stats["rotations"] > 2 and exp.stats["exported"] == 30 and exp.stats["errors"] == 0


def test_jsonl_rotation_without_backups(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    exp = JsonlExporter(str(path), max_bytes=1000, backups=0)
    for i in range(10):
        exp.export(_call(i))
    exp.close()
    assert [p.name for p in tmp_path.iterdir()] == ["c.jsonl"]
    assert _lines(path)[-1]["connection_id"] == 9


def test_jsonl_reopen_after_external_rotation(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    exp = JsonlExporter(str(path))
    exp.export(_call(1))
    os.rename(path, tmp_path / "c.jsonl.old")
    exp.export(_call(2))  # still goes to the renamed file
    exp.reopen()
    exp.export(_call(3))
    exp.close()
    assert [r["connection_id"] for r in _lines(tmp_path / "c.jsonl.old")] == [1, 2]
    assert [r["connection_id"] for r in _lines(path)] == [3]
    exp.export(_call(4))  # after close: counted, not written
    assert exp.stats["dropped"] == 1


def test_har_reopen_finishes_one_document_and_starts_another(tmp_path: Path) -> None:
    path = tmp_path / "c.har"
    exp = HarExporter(str(path))
    exp.export(_call(1))
    exp.reopen()  # not moved: nothing happens
    os.rename(path, tmp_path / "old.har")
    exp.reopen()
    exp.export(_call(2))
    exp.export(_call(3))
    exp.close()
    old = json.loads((tmp_path / "old.har").read_text())["log"]["entries"]
    new = json.loads(path.read_text())["log"]["entries"]
    assert [e["connection"] for e in old] == ["1"] and [e["connection"] for e in new] == ["2", "3"]
    entry = har_entry(_call(5))
    assert entry["response"]["cookies"] == [{"name": "s", "value": "1", "path": "/", "httpOnly": True}]


def test_exporters_stream_instead_of_holding_everything(tmp_path: Path) -> None:
    for exp, path in ((JsonlExporter(str(tmp_path / "a.jsonl")), tmp_path / "a.jsonl"),
                      (HarExporter(str(tmp_path / "a.har")), tmp_path / "a.har")):
        for i in range(100):
            exp.export(_call(i, b"y" * 1000))
        before_close = path.stat().st_size
        assert before_close > 50_000  # written as they came, not at close()
        exp.close()
        assert path.stat().st_size >= before_close


class _Recorder:
    """An exporter that notes how far the engine had read when each call arrived."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.frames_at: list[int] = []
        self.stats: dict[str, int] = {}

    def export(self, call: ApiCall) -> None:
        self.frames_at.append(self.engine.stats["frames"])

    def flush(self, timeout: float = 0.0) -> bool:
        return True

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_replay_run_hands_calls_over_as_they_complete(captures: dict[str, Any]) -> None:
    engine = Engine(EngineConfig(http=True))
    from tlsmirror.shell.offline.inputs import load_keylog_files

    engine.add_secrets(load_keylog_files([captures["keylog"]], lambda _note: None), 0.0)
    rec = _Recorder(engine)
    run = ReplayRun(engine, [rec])
    run.run(captures["one"])
    total = engine.stats["frames"]
    run.finish()
    assert len(rec.frames_at) == 2 and rec.frames_at[0] < total  # before the end of the file
    assert "2 exchanges (2 HTTP/1.1)" in run.summary()


def test_progress_bar(captures: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_mod, "PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(replay_mod, "_PROGRESS_EVERY", 1)
    bar = io.StringIO()
    run = ReplayRun(Engine(EngineConfig(http=True)), [], progress=bar)
    run.run(captures["one"])
    out = bar.getvalue()
    assert "one.pcap [" in out and "%" in out and out.endswith("\r\x1b[K")


def test_summary_reports_what_could_not_be_decrypted(captures: dict[str, Any], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", captures["one"], "-o", str(tmp_path / "x.jsonl")]) == 0  # no keys
    err = capsys.readouterr().err
    assert "1 TLS connection (1 no_key)" in err
    assert "no_key: 1x no secret for its client random" in err
    assert "0 exchanges" in err


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/cap.pcap"], "no such capture file"),
    (["{tmp}"], "not a regular file"),
    (["{notcap}"], "not a pcap or pcapng file"),
    (["{one}", "--keylog", "/nonexistent/keys"], "cannot read key log"),
    (["{one}", "-o", "/nonexistent/dir/out.jsonl"], "cannot write output"),
    (["{one}", "--format", "har", "-o", "/nonexistent/dir/out.har"], "cannot write output"),
])
def test_errors_are_one_line(captures: dict[str, Any], capsys: pytest.CaptureFixture[str], args: list[str],
                             message: str) -> None:
    notcap = captures["tmp"] / "notcap.pcap"
    notcap.write_bytes(b"hello, this is not a capture file")
    argv = [a.format(tmp=captures["tmp"], notcap=notcap, one=captures["one"]) for a in args]
    assert main(["replay", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tlsmirror: error: ") and message in err and "\n" not in err


def test_bad_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["replay"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["replay", "x.pcap", "--body-limit", "lots"])
    assert e.value.code == 2
    capsys.readouterr()


def test_body_limit_and_body_modes(captures: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    assert main(["replay", captures["one"], "--keylog", captures["keylog"], "-o", str(out),
                 "--body-limit", "5", "--bodies", "none"]) == 0
    get = _lines(out)[0]
    body = get["response"]["body"]
    assert body["captured"] == 5 and body["truncated"] and body["size"] == 14 and "text" not in body
    assert "body_truncated" in get["flags"]


# ---------------------------------------------------------------- http stage fixes the corpus found

def _feed_split(chunks: list[tuple[int, bytes]], split: int) -> list[Any]:
    from tlsmirror.http.connection import HttpConnection

    c = HttpConnection()
    out: list[Any] = []
    for d, data in chunks:
        out += c.feed(d, data[:split], 1.0)
        out += c.feed(d, data[split:], 1.5)
    return out + c.close(2.0)


@pytest.mark.parametrize("split", range(0, 60, 3))
def test_bare_lf_message_heads(split: int) -> None:
    """LF-only line ends (e.g. scapy's test server, ``GET ... HTTP/1.0\\r\\n\\n``), fed in two pieces."""
    from tlsmirror.http.events import HttpProblem

    out = _feed_split([(0, b"GET /pki/srv_key.pem HTTP/1.0\r\n\n"),
                       (1, b"HTTP/1.0 200 ok\nContent-type: text/plain\nX-A: b\n\nbody until close")], split)
    assert not [e for e in out if isinstance(e, HttpProblem)]
    (ex,) = out
    assert (ex.method, ex.path, ex.status, ex.reason) == ("GET", "/pki/srv_key.pem", 200, "ok")
    assert ex.response_headers == (("Content-type", "text/plain"), ("X-A", "b"))
    assert ex.response_body is not None and ex.response_body.data == b"body until close"
    out = _feed_split([(0, b"GET /a HTTP/1.1\nHost: h\n\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"),
                       (1, b"HTTP/1.1 204 No Content\n\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")],
                      split)
    assert [(e.path, e.status) for e in out] == [("/a", 204), ("/b", 200)]


def test_other_protocols_inside_tls_are_not_http_problems() -> None:
    from tlsmirror.http.connection import HttpConnection
    from tlsmirror.http.events import HttpProblem

    c = HttpConnection()
    (p,) = c.feed(1, b"* OK [CAPABILITY IMAP4rev1] ready\r\n", 1.0) + c.feed(0, b"a1 LOGIN x y\r\n", 1.1)
    assert p.reason.startswith("not HTTP: ")
    c = HttpConnection()
    out = c.feed(0, b"GET / HTTP/1.1\r\n\r\nBAD STUFF\r\n\r\n", 1.0)
    problems = [e for e in out if isinstance(e, HttpProblem)]
    assert len(problems) == 1 and problems[0].reason.startswith("client: llhttp")
