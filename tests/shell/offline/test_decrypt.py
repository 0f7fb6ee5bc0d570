"""`tlsmirror decrypt` end to end: real OpenSSL sessions written to capture files, the CLI's output, files,
exit codes and error lines, and that no secret ever reaches stdout or stderr."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.paths import SRC
from tests.support.pcapwriter import pcap_bytes, segment_frames, tcp_conversation, write_capture
from tests.support.tlspair import TlsTranscript, run_session, server_rsa_key_pem
from tests.support.tlsruns import REQUESTS, RESPONSES, openssl_suite_name
from tlsmirror.shell.commands import main

FIELDS = ["id", "client", "server", "start", "end", "sni", "alpn", "version", "suite", "resumed", "outcome",
          "reason", "picked_up", "late_key", "records_decrypted", "records_failed", "c2s_bytes", "c2s_sha256",
          "s2c_bytes", "s2c_sha256"]
ERROR_LINE = re.compile(r"^tlsmirror: error: [^\n]+\n$")


class Setup:
    """Three connections in one pcap: TLS 1.2 on 443, TLS 1.3 (h2) on 8443, static RSA on 443."""

    def __init__(self, root: Path) -> None:
        self.root = root
        kw = {"requests": REQUESTS, "responses": RESPONSES, "tmpdir": root}
        self.t12, _ = run_session(tls_version="1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256", **kw)
        self.t13, _ = run_session(tls_version="1.3", alpn=["h2", "http/1.1"], **kw)
        self.rsa, _ = run_session(tls_version="1.2", cipher="AES256-SHA256", **kw)
        self.sessions: list[tuple[TlsTranscript, tuple[str, int], tuple[str, int]]] = [
            (self.t12, ("10.0.0.1", 40001), ("10.0.0.2", 443)),
            (self.t13, ("10.0.0.1", 40002), ("10.0.0.3", 8443)),
            (self.rsa, ("10.0.0.1", 40003), ("10.0.0.2", 443)),
        ]
        segs = []
        for i, (t, client, server) in enumerate(self.sessions):
            segs += tcp_conversation(t.flights, client=client, server=server, ts=1.0 + i)
        self.capture = write_capture(root / "three.pcap", pcap_bytes(segment_frames(segs)))
        # The key log knows the first two; the third needs the server's RSA key.
        self.keylog_text = self.t12.keylog + self.t13.keylog
        self.keylog = root / "keys.log"
        self.keylog.write_text(self.keylog_text)
        self.rsa_key = root / "server.pem"
        self.rsa_key.write_bytes(server_rsa_key_pem())

    def secrets_hex(self) -> list[str]:
        """Every secret of the key log, as hex."""
        return [line.split()[2].lower() for line in self.keylog_text.splitlines() if line.strip()]

    def by_client_port(self) -> dict[int, TlsTranscript]:
        return {client[1]: t for t, client, _ in self.sessions}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tmp_path_factory.mktemp("cli"))


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(["decrypt", *args])
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def records(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def assert_no_secrets(setup: Setup, *texts: str) -> None:
    for text in texts:
        low = text.lower()
        for secret in setup.secrets_hex():
            assert secret not in low
            assert secret[:32] not in low  # not even half of one


# ============================================================================ output


def test_output_fields_and_values(setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "dump"
    code, out, err = cli([setup.capture, "--keylog", str(setup.keylog), "--rsa-key", str(setup.rsa_key),
                          "--dump-dir", str(dump)], capsys)
    assert code == 0, err
    assert err == "3 TLS connections: 3 decrypted\n"
    recs = records(out)
    assert len(recs) == 3
    sessions = setup.by_client_port()
    for rec in recs:
        assert list(rec) == FIELDS
        port = int(str(rec["client"]).rsplit(":", 1)[1])
        t = sessions[port]
        assert rec["outcome"] == "decrypted" and rec["reason"] == "" and rec["late_key"] is False
        assert rec["sni"] == "api.example.test" and rec["resumed"] is False
        assert rec["version"] == {"TLSv1.2": "TLS1.2", "TLSv1.3": "TLS1.3"}[t.version]
        assert rec["suite"] == (t.cipher if t.version == "TLSv1.3" else openssl_suite_name(t.cipher))
        assert rec["alpn"] == t.alpn
        assert rec["c2s_bytes"] == len(t.app_c2s) and rec["s2c_bytes"] == len(t.app_s2c)
        assert rec["c2s_sha256"] == hashlib.sha256(t.app_c2s).hexdigest()
        assert rec["s2c_sha256"] == hashlib.sha256(t.app_s2c).hexdigest()
        assert (dump / f"conn{rec['id']:06d}-c2s.bin").read_bytes() == t.app_c2s
        assert (dump / f"conn{rec['id']:06d}-s2c.bin").read_bytes() == t.app_s2c
        assert isinstance(rec["records_decrypted"], int) and rec["records_decrypted"] > 4
        assert rec["records_failed"] == 0
        assert float(str(rec["start"])) < float(str(rec["end"]))
    by_port = {int(str(r["client"]).rsplit(":", 1)[1]): r for r in recs}
    assert by_port[40002]["server"] == "10.0.0.3:8443" and by_port[40002]["alpn"] == "h2"
    assert by_port[40001]["client"] == "10.0.0.1:40001"
    names = [f"conn{r['id']:06d}-{d}.bin" for r in recs for d in ("c2s", "s2c")]
    assert sorted(os.listdir(dump)) == sorted(names)
    assert_no_secrets(setup, out, err)


def test_without_rsa_key_the_static_rsa_connection_has_no_key(setup: Setup, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "out.jsonl"
    code, out, err = cli([setup.capture, "--keylog", str(setup.keylog), "-o", str(out_file)], capsys)
    assert code == 0 and out == ""
    assert err == "3 TLS connections: 2 decrypted, 1 no_key\n"
    recs = records(out_file.read_text())
    (bad,) = [r for r in recs if r["outcome"] != "decrypted"]
    assert bad["client"] == "10.0.0.1:40003" and bad["outcome"] == "no_key"
    assert bad["c2s_bytes"] == 0 and bad["suite"] == openssl_suite_name("AES256-SHA256")
    assert_no_secrets(setup, out_file.read_text(), err)


def test_port_narrowing(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli([setup.capture, "--keylog", str(setup.keylog), "--port", "8443"], capsys)
    assert code == 0
    (rec,) = records(out)
    assert rec["server"] == "10.0.0.3:8443" and rec["outcome"] == "decrypted"
    code, out, _ = cli([setup.capture, "--keylog", str(setup.keylog), "--port", "443", "--port", "8443"],
                       capsys)
    assert code == 0 and len(records(out)) == 3
    code, out, err = cli([setup.capture, "--keylog", str(setup.keylog), "--port", "25"], capsys)
    assert code == 0 and out == "" and err == "0 TLS connections: none\n"


def test_malformed_key_log_lines_are_reported_and_skipped(setup: Setup, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    lines = setup.keylog_text.splitlines()
    secret = lines[0].split()[2]
    bad = tmp_path / "bad.log"
    bad.write_text("\n".join([
        "# a comment",
        "CLIENT_RANDOM 00112233",  # too few fields
        *lines[:3],
        f"CLIENT_RANDOM {'ab' * 32} {secret[:-2]}",  # secret too short (and must not be echoed)
        f"NOT_A_LABEL {'cd' * 32} {secret}",
        f"{secret} {secret} {secret}",  # a label that is secret-looking hex
        "\x00\x01 binary junk",
        *lines[3:],
    ]) + "\n")
    code, out, err = cli([setup.capture, "--keylog", str(bad), "--rsa-key", str(setup.rsa_key)], capsys)
    assert code == 0
    assert [r["outcome"] for r in records(out)] == ["decrypted"] * 3
    warnings = err.splitlines()[:-1]
    assert [w.split(": skipped")[0] for w in warnings] == [f"{bad}:{n}" for n in (2, 6, 7, 8, 9)]
    assert all(": skipped key log line: " in w for w in warnings)
    assert err.splitlines()[-1] == "3 TLS connections: 3 decrypted"
    assert_no_secrets(setup, out, err)
    assert secret[:-2].lower() not in err.lower()


def test_a_file_that_is_no_key_log_is_named(setup: Setup, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.log"
    junk.write_bytes(b"".join(b"line %d of something else\n" % i for i in range(100)))
    code, out, err = cli([setup.capture, "--keylog", str(junk)], capsys)
    # a key log without one usable line cannot work (the capture holds no secrets): one line, exit 1
    assert code == 1 and out == ""
    assert err.splitlines() == [f"tlsmirror: error: {junk}: no usable key log line (100 lines skipped, "
                                "line 1: unknown label line); is this an NSS key log?"]


# ============================================================================ errors


@pytest.mark.parametrize("what", ["missing", "directory", "garbage", "empty"])
def test_bad_capture_exit_1(what: str, setup: Setup, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "capture.pcap"
    if what == "directory":
        path.mkdir()
    elif what == "garbage":
        path.write_bytes(os.urandom(64) + b"\xff")
    elif what == "empty":
        path.write_bytes(b"")
    code, out, err = cli([str(path), "--keylog", str(setup.keylog)], capsys)
    assert code == 1 and out == ""
    assert ERROR_LINE.match(err), err
    assert str(path) in err and "Traceback" not in err


def test_truncated_capture_decrypts_what_is_there(setup: Setup, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(setup.capture).read_bytes()
    cut = write_capture(tmp_path / "cut.pcap", data[:len(data) - 30])
    code, out, err = cli([cut, "--keylog", str(setup.keylog), "--rsa-key", str(setup.rsa_key)], capsys)
    assert code == 0
    assert len(records(out)) == 3
    assert "truncated" in err and err.splitlines()[-1].startswith("3 TLS connections: ")


def test_missing_key_log_exit_1(setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.log"
    code, out, err = cli([setup.capture, "--keylog", str(missing)], capsys)
    assert (code, out) == (1, "")
    assert err == f"tlsmirror: error: {missing}: cannot read key log: No such file or directory\n"


@pytest.mark.parametrize("what", ["missing", "garbage", "not-rsa", "encrypted-no-password",
                                  "wrong-password"])
def test_bad_rsa_key_exit_1(what: str, setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "key.pem"
    args = [setup.capture, "--rsa-key", str(path)]
    key = serialization.load_pem_private_key(server_rsa_key_pem(), None)
    if what == "garbage":
        path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    elif what == "not-rsa":
        path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    elif what in ("encrypted-no-password", "wrong-password"):
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"s3cret-pass")))
        if what == "wrong-password":
            monkeypatch.setenv("TLSMIRROR_TEST_PW", "other-pass")
            args += ["--rsa-password-env", "TLSMIRROR_TEST_PW"]
    code, out, err = cli(args, capsys)
    assert (code, out) == (1, ""), err
    assert ERROR_LINE.match(err), err
    assert str(path) in err
    assert "s3cret" not in err and "other-pass" not in err


def test_encrypted_rsa_key_with_password(setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    key = serialization.load_pem_private_key(server_rsa_key_pem(), None)
    path = tmp_path / "key.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"s3cret-pass")))
    monkeypatch.setenv("TLSMIRROR_TEST_PW", "s3cret-pass")
    code, out, err = cli([setup.capture, "--rsa-key", str(path), "--rsa-password-env", "TLSMIRROR_TEST_PW"],
                         capsys)
    assert code == 0 and err == "3 TLS connections: 1 decrypted, 2 no_key\n"
    (rec,) = [r for r in records(out) if r["outcome"] == "decrypted"]
    assert rec["client"] == "10.0.0.1:40003"
    monkeypatch.delenv("TLSMIRROR_TEST_PW")
    code, _, err = cli([setup.capture, "--rsa-key", str(path), "--rsa-password-env", "TLSMIRROR_TEST_PW"],
                       capsys)
    assert code == 1 and ERROR_LINE.match(err) and "TLSMIRROR_TEST_PW" in err


@pytest.mark.parametrize("args", [["--port", "0"], ["--port", "65536"], ["--port", "https"], [],
                                  ["--bogus"]])
def test_bad_command_line_exit_2(args: list[str], setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*args, setup.capture] if args else []
    code, out, err = cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: tlsmirror") and "Traceback" not in err
    assert re.match(r"tlsmirror( decrypt)?: error: ", err.splitlines()[-1])


def test_unwritable_output_exit_1(setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "no-such-dir" / "out.jsonl"
    code, out, err = cli([setup.capture, "-o", str(target)], capsys)
    assert (code, out) == (1, "") and ERROR_LINE.match(err) and str(target) in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli([setup.capture, "--dump-dir", str(blocker / "sub")], capsys)
    assert code == 1 and ERROR_LINE.match(err)


# ============================================================================ the real process


def test_python_dash_m_subprocess(setup: Setup, tmp_path: Path) -> None:
    src = str(SRC)
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "tlsmirror", "decrypt", setup.capture, "--keylog", str(setup.keylog),
         "--rsa-key", str(setup.rsa_key), "--dump-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "3 TLS connections: 3 decrypted\n"
    recs = records(proc.stdout)
    assert {r["outcome"] for r in recs} == {"decrypted"}
    assert_no_secrets(setup, proc.stdout, proc.stderr)
    bad = subprocess.run([sys.executable, "-m", "tlsmirror", "decrypt", str(tmp_path / "missing.pcap")],
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert bad.returncode == 1 and ERROR_LINE.match(bad.stderr) and bad.stdout == ""


# the HTTP stage, the inventory and the protocol readers: `decrypt` never parses HTTP (issue 13)
NOT_FOR_DECRYPT = ("tlsmirror.calls", "tlsmirror.http", "tlsmirror.inventory", "tlsmirror.record", "httptools",
                   "hpack", "hyperframe", "h2", "brotli", "zstandard")


def test_decrypt_never_imports_the_http_stage(setup: Setup, tmp_path: Path) -> None:
    src = str(SRC)
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import sys; from tlsmirror.shell.commands import main; "
            f"code = main(['decrypt', {setup.capture!r}, '--keylog', {str(setup.keylog)!r}, "
            f"'-o', {str(tmp_path / 'out.jsonl')!r}]); "
            "print(' '.join(sorted(sys.modules))); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = [m for m in proc.stdout.split() if any(m == n or m.startswith(n + ".") for n in NOT_FOR_DECRYPT)]
    assert loaded == []
    assert len(records((tmp_path / "out.jsonl").read_text())) == 3


@pytest.mark.parametrize("values", [
    {},
    {"sni": None, "alpn": None, "version": None, "suite": None, "reason": ""},
    {"sni": "b\u00fccher.example\u2028", "alpn": 'h"2\\', "resumed": True, "late_key": True, "picked_up": True},
    {"ts": 1.0e21, "first": 0.1 + 0.2},
    {"ts": float("inf")},
    {"ts": float("nan")},
])
def test_report_line_is_what_json_dumps_writes(values: dict[str, object]) -> None:
    """The per-connection line is built by hand: it must be json.dumps's line of the same record, byte for
    byte (escapes, floats, null/true/false, key order), and falls back to json for non-finite times."""
    import io

    from tlsmirror.pipeline import Engine
    from tlsmirror.shell.offline.decrypt import DecryptRun, _Conn
    from tlsmirror.tcp.events import Flow
    from tlsmirror.tls.events import TlsOutcome

    flow = Flow(7, (b"\x0a\x00\x00\x01", 40001), (b"\x20\x01" + bytes(13) + b"\x01", 443), 0.0, True)
    flow.ts_first = float(values.get("first", 1700000000.1234567))  # type: ignore[arg-type]
    ev = TlsOutcome(flow=flow, ts=float(values.get("ts", 1700000001.5)),  # type: ignore[arg-type]
                    client_dir=0, outcome="decrypted",
                    reason=str(values.get("reason", "why \x01 not")),
                    version=values.get("version", "TLS 1.2"), suite=values.get("suite", "TLS_X"),  # type: ignore[arg-type]
                    sni=values.get("sni", "api.example"), alpn=values.get("alpn", "http/1.1"),  # type: ignore[arg-type]
                    resumed=bool(values.get("resumed", False)), late_key=bool(values.get("late_key", False)),
                    records_decrypted=12, records_failed=1, held_dropped_bytes=0,
                    picked_up=bool(values.get("picked_up", False)))
    c = _Conn()
    c.sha0.update(b"abc")
    c.size0 = 3
    out = io.StringIO()
    DecryptRun(Engine(), out)._report(ev, c)
    line = out.getvalue()
    rec = {"id": 7, "client": "10.0.0.1:40001", "server": "[2001::1]:443", "start": round(flow.ts_first, 6),
           "end": round(ev.ts, 6), "sni": ev.sni, "alpn": ev.alpn, "version": ev.version, "suite": ev.suite,
           "resumed": ev.resumed, "outcome": ev.outcome, "reason": ev.reason, "picked_up": ev.picked_up,
           "late_key": ev.late_key, "records_decrypted": 12, "records_failed": 1, "c2s_bytes": 3,
           "c2s_sha256": hashlib.sha256(b"abc").hexdigest(), "s2c_bytes": 0,
           "s2c_sha256": hashlib.sha256().hexdigest()}
    assert list(rec) == FIELDS
    assert line == json.dumps(rec) + "\n"
