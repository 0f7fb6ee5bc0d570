"""`tlsmirror keys send` against the key listener: in process and as two real processes."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.keylistener import HOST, cr, line, listening, make_ca, make_client_cert, parsed, secret_hex
from tests.support.paths import SRC as SRC_DIR
from tests.support.tlspair import run_session
from tlsmirror.keys.events import Secret
from tlsmirror.shell.commands import main
from tlsmirror.shell.errors import InputError, SendError
from tlsmirror.shell.keylistener.certs import CERT_FILE
from tlsmirror.shell.keylistener.sender import client_context, group_sessions, parse_target, send_session

SRC = str(SRC_DIR)


def test_group_sessions_by_client_random() -> None:
    a, b = cr(1).hex(), cr(2).hex()
    lines = [
        f"CLIENT_HANDSHAKE_TRAFFIC_SECRET {a} {secret_hex(1, 32)}",
        "# comment",
        f"CLIENT_RANDOM {b} {secret_hex(2)}",
        "",
        f"SERVER_HANDSHAKE_TRAFFIC_SECRET {a} {secret_hex(3, 32)}",
        f"CLIENT_TRAFFIC_SECRET_0   {a}   {secret_hex(4, 32)}  ",
    ]
    sessions = group_sessions(lines)
    assert [s.ident for s in sessions] == [cr(1), cr(2)]
    assert sessions[0].labels == ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                                  "CLIENT_TRAFFIC_SECRET_0")
    assert sessions[0].lines[2] == f"CLIENT_TRAFFIC_SECRET_0 {a} {secret_hex(4, 32)}"
    assert secret_hex(1, 32) not in sessions[0].describe()


def test_group_sessions_rejects_bad_lines_without_secrets() -> None:
    bad = secret_hex(1, 47)
    with pytest.raises(InputError) as info:
        group_sessions([line(1), f"CLIENT_RANDOM {cr(2).hex()} {bad}"], "keys.log line")
    assert "keys.log line 2" in str(info.value)
    assert bad[:16] not in str(info.value)


def test_parse_target() -> None:
    assert parse_target("10.0.0.5:8001") == ("10.0.0.5", 8001)
    assert parse_target("[2001:db8::5]:8001") == ("2001:db8::5", 8001)
    assert parse_target("sensor.example:1") == ("sensor.example", 1)
    for bad in ("10.0.0.5", ":8001", "h:0", "h:x", "2001:db8::5:8001"):
        with pytest.raises(InputError):
            parse_target(bad)


def test_send_real_sessions_in_process(tmp_path: Path) -> None:
    lines: list[str] = []
    for version in ("1.2", "1.3", "1.3"):
        transcript, _ = run_session(tls_version=version, tmpdir=tmp_path)
        lines.extend(x for x in transcript.keylog.splitlines() if x.strip())
    sessions = group_sessions(lines)
    assert len(sessions) == 3
    with listening(tmp_path) as lst:
        ctx = client_context(ca=str(tmp_path / "state" / CERT_FILE))
        for s in sessions:
            send_session(HOST, lst.port, s, ctx)
        # send_session returns once the listener has read everything and closed: no waiting needed
        st = lst.stats()
        assert st["connections"] == 3 and st["tls_failed"] == 0
        got = lst.secrets
    def order(s: Secret) -> tuple[bytes, str]:
        return s.ident, s.label

    assert sorted(got, key=order) == sorted(parsed(lines), key=order)


def test_send_failures_have_one_line_reasons(tmp_path: Path) -> None:
    session = group_sessions([line(1)])[0]
    with socket.socket() as s:
        s.bind((HOST, 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(SendError, match="connection refused"):
        send_session(HOST, closed_port, session, client_context(insecure=True), timeout=2)
    with listening(tmp_path) as lst:
        with pytest.raises(SendError, match="not trusted"):
            send_session(HOST, lst.port, session, client_context(), timeout=2)
        with pytest.raises(SendError, match="TLS required"):
            send_session(HOST, lst.port, session, None, timeout=2)
    with listening(tmp_path, tls=False) as lst, pytest.raises(SendError, match="TLS"):
        send_session(HOST, lst.port, session, client_context(insecure=True), timeout=2)
    with listening(tmp_path, allow=["10.0.0.0/8"]) as lst, pytest.raises(SendError, match="allowed"):
        send_session(HOST, lst.port, session, client_context(insecure=True), timeout=2)


def test_send_mtls(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "bigip-ca")
    cert, key = make_client_cert(tmp_path, ca, "bigip")
    session = group_sessions([line(1)])[0]
    with listening(tmp_path, client_ca=str(tmp_path / "bigip-ca.pem")) as lst:
        server_ca = str(tmp_path / "state" / CERT_FILE)
        send_session(HOST, lst.port, session, client_context(ca=server_ca, cert=cert, key=key))
        assert [s.ident for s in lst.secrets] == [cr(1)]
        with pytest.raises(SendError, match="client certificate"):
            send_session(HOST, lst.port, session, client_context(ca=server_ca), timeout=3)
        assert lst.stats()["refused_client_cert"] == 1


def test_cli_send_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keylog = tmp_path / "keys.log"
    keylog.write_text("".join(line(i) + "\n" for i in range(3)))
    with listening(tmp_path) as lst:
        ca = str(tmp_path / "state" / CERT_FILE)
        assert main(["keys", "send", f"{HOST}:{lst.port}", "--keylog", str(keylog), "--ca", ca]) == 0
        out = capsys.readouterr().out
        assert out.splitlines() == [f"sent {cr(i)[:4].hex()}... CLIENT_RANDOM" for i in range(3)]
        assert main(["keys", "send", f"{HOST}:{lst.port}", "--insecure", line(7)]) == 0
        assert main(["keys", "send", f"{HOST}:{lst.port}", line(8)]) == 1  # not trusted
        err = capsys.readouterr().err
        assert [x for x in err.splitlines() if "error" in x] == [
            f"tlsmirror: error: {HOST}:{lst.port}: the listener's certificate is not trusted (self-signed "
            "certificate); use --ca FILE or --insecure (sent 0 of 1 sessions)"]
        assert sorted(s.ident for s in lst.secrets) == sorted([cr(0), cr(1), cr(2), cr(7)])
    assert main(["keys", "send", f"{HOST}:1", "--insecure", "CLIENT_RANDOM zz zz"]) == 1
    assert main(["keys", "send", f"{HOST}:1", "--plain", "--insecure", line(1)]) == 1


def test_keys_send_against_keys_serve_processes(tmp_path: Path) -> None:
    """Two real processes: `keys serve` (self-signed, keylog_out) and `keys send`, then SIGTERM."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    state, out = tmp_path / "state", tmp_path / "out.keylog"
    serve = subprocess.Popen(
        [sys.executable, "-m", "tlsmirror", "keys", "serve", "--host", HOST, "--port", "0", "--state-dir",
         str(state), "--keylog-out", str(out), "--allow", "127.0.0.0/8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert serve.stderr is not None
        port = 0
        deadline = time.monotonic() + 15
        while not port and time.monotonic() < deadline:
            text = serve.stderr.readline()
            if not text:
                break
            if text.startswith("listening on "):
                port = int(text.split()[2].rsplit(":", 1)[1])
        assert port, "keys serve did not start"
        cr13 = cr(42).hex()
        keylog = tmp_path / "keys.log"
        lines = [line(1), line(2),
                 f"CLIENT_HANDSHAKE_TRAFFIC_SECRET {cr13} {secret_hex(5, 48)}",
                 f"SERVER_HANDSHAKE_TRAFFIC_SECRET {cr13} {secret_hex(6, 48)}",
                 f"CLIENT_TRAFFIC_SECRET_0 {cr13} {secret_hex(7, 48)}",
                 f"SERVER_TRAFFIC_SECRET_0 {cr13} {secret_hex(8, 48)}"]
        keylog.write_text("\n".join(lines) + "\n")
        send = subprocess.run(
            [sys.executable, "-m", "tlsmirror", "keys", "send", f"{HOST}:{port}", "--keylog", str(keylog),
             "--ca", str(state / CERT_FILE)], capture_output=True, text=True, env=env, timeout=30)
        assert send.returncode == 0, send.stderr
        assert len(send.stdout.splitlines()) == 3  # three sessions, three connections
        serve.send_signal(signal.SIGTERM)
        stdout, stderr = serve.communicate(timeout=15)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(5)
    assert serve.returncode == 0
    printed = stdout.splitlines()
    assert printed == [f"{x.split()[0]} {x.split()[1][:8]}..." for x in lines]
    for x in lines:
        assert x.split()[2] not in stdout + stderr  # no secret printed or logged
    stats = [x for x in stderr.splitlines() if x.startswith("stopped:")]
    assert stats and "secrets=6" in stats[0] and "connections=3" in stats[0]
    assert out.read_text() == "".join(x + "\n" for x in lines)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
