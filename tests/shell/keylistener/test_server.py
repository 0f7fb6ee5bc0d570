"""The key listener driven by real clients: Python ssl sockets, `openssl s_client`, raw TCP.

The listener runs in its own event loop thread (``Listener``); clients are ordinary blocking sockets,
so every test talks to it exactly as a load balancer would. Only 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.keylistener import (
    HOST,
    client_ctx,
    cr,
    line,
    listening,
    make_ca,
    make_client_cert,
    parsed,
    secret_hex,
    send_plain,
    send_tls,
)
from tests.support.tlspair import run_session
from tlsmirror.keys.events import Secret
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.shell.errors import InputError
from tlsmirror.shell.keylistener.server import (
    CERT_FILE,
    KEY_FILE,
    NOT_TLS_ANSWER,
    KeyServer,
    KeyServerConfig,
    RateLimitedLog,
    certificate_fingerprint,
)


def test_one_line_per_connection_tls(tmp_path: Path) -> None:
    lines = [line(i) for i in range(20)]
    with listening(tmp_path) as lst:
        ctx = client_ctx(tmp_path)
        for text in lines:
            send_tls(lst.port, ctx, (text + "\n").encode())
        got = lst.wait_secrets(20)
        st = lst.stats()
    assert sorted(got, key=lambda s: s.ident) == sorted(parsed(lines), key=lambda s: s.ident)
    assert st["connections"] == 20 and st["lines"] == 20 and st["secrets"] == 20
    assert st["malformed"] == st["tls_failed"] == st["probes"] == 0


def test_many_lines_per_connection_lf_crlf_split_reads(tmp_path: Path) -> None:
    lines = [line(i) for i in range(60)]
    data = b"".join((t + ("\r\n" if i % 2 else "\n")).encode() for i, t in enumerate(lines))
    with listening(tmp_path) as lst:
        send_tls(lst.port, client_ctx(tmp_path), data, chunks=37)  # chunks cut lines in the middle
        got = lst.wait_secrets(60)
        st = lst.stats()
    assert got == parsed(lines)  # exactly, in order
    assert st["connections"] == 1 and st["malformed"] == 0
    assert len(lst.batches) < 60  # lines arriving in one read are delivered together


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_real_session_keys_tls12_and_tls13(tmp_path: Path, version: ssl.TLSVersion) -> None:
    """The key log lines of real OpenSSL sessions; TLS 1.3 sends its four traffic secrets (and more)."""
    name = "1.3" if version is ssl.TLSVersion.TLSv1_3 else "1.2"
    keylog_lines: list[str] = []
    for _ in range(3):
        transcript, _session = run_session(tls_version=name, tmpdir=tmp_path)
        keylog_lines.extend(x for x in transcript.keylog.splitlines() if x.strip())
    with listening(tmp_path, client_ca=None) as lst:
        ctx = client_ctx(tmp_path, version=version)
        by_session: dict[str, list[str]] = {}
        for text in keylog_lines:
            by_session.setdefault(text.split()[1], []).append(text)
        for group in by_session.values():
            send_tls(lst.port, ctx, "".join(t + "\n" for t in group).encode())
        want = parsed(keylog_lines)
        got = lst.wait_secrets(len(want))
    assert sorted(got, key=lambda s: (s.ident, s.label)) == sorted(want, key=lambda s: (s.ident, s.label))
    if name == "1.3":
        labels = {s.label for s in got}
        assert {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= labels


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client(tmp_path: Path, flag: str) -> None:
    cr_hex = cr(7).hex()
    lines = [f"CLIENT_HANDSHAKE_TRAFFIC_SECRET {cr_hex} {secret_hex(1, 32)}",
             f"SERVER_HANDSHAKE_TRAFFIC_SECRET {cr_hex} {secret_hex(2, 32)}",
             f"CLIENT_TRAFFIC_SECRET_0 {cr_hex} {secret_hex(3, 32)}",
             f"SERVER_TRAFFIC_SECRET_0 {cr_hex} {secret_hex(4, 32)}"]
    with listening(tmp_path) as lst:
        proc = subprocess.run(
            ["openssl", "s_client", "-connect", f"{HOST}:{lst.port}", flag, "-CAfile",
             str(tmp_path / "state" / CERT_FILE), "-verify_return_error", "-verify_ip", HOST],
            input="".join(t + "\n" for t in lines).encode(), capture_output=True, timeout=20)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-500:]
        got = lst.wait_secrets(4)
    assert got == parsed(lines)


# -- client certificates -----------------------------------------------------------------------------


def test_mtls_accepted_and_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "sender-ca")
    other = make_ca(tmp_path, "other-ca")
    good = make_client_cert(tmp_path, ca, "bigip")
    bad = make_client_cert(tmp_path, other, "intruder")
    with listening(tmp_path, client_ca=str(tmp_path / "sender-ca.pem")) as lst:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            send_tls(lst.port, client_ctx(tmp_path, *good, version=version), (line(1) + "\n").encode())
        lst.wait_secrets(2)
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            for cert in (None, bad):
                ctx = client_ctx(tmp_path, *(cert or (None, None)), version=version)
                with contextlib.suppress(OSError):  # TLS 1.2 fails in the handshake, 1.3 after it
                    send_tls(lst.port, ctx, (line(2) + "\n").encode())
        lst.wait(lambda: lst.stats()["refused_client_cert"] == 4)
        time.sleep(0.1)
        st = lst.stats()
        got = lst.secrets
    assert [s.ident for s in got] == [cr(1), cr(1)]
    assert st["secrets"] == 2 and st["refused_client_cert"] == 4


# -- robustness ---------------------------------------------------------------------------------------


def test_tcp_health_probes_are_not_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tlsmirror.keys")
    with listening(tmp_path) as lst:
        for _ in range(5):
            socket.create_connection((HOST, lst.port), timeout=5).close()  # the F5 `tcp` monitor
        # an RST instead of a FIN
        s = socket.create_connection((HOST, lst.port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        lst.wait(lambda: lst.stats()["probes"] == 6)
        send_tls(lst.port, client_ctx(tmp_path), (line(3) + "\n").encode())
        lst.wait_secrets(1)
        st = lst.stats()
    assert st["tls_failed"] == 0 and st["malformed"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_plain_listener_probes_and_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tlsmirror.keys")
    lines = [line(i) for i in range(5)]
    with listening(tmp_path, tls=False) as lst:
        socket.create_connection((HOST, lst.port), timeout=5).close()
        send_plain(lst.port, "\n".join(lines).encode())  # the last line has no newline
        got = lst.wait_secrets(5)
        # a TLS client on the plain listener: refused at its first byte
        with pytest.raises(OSError):
            send_tls(lst.port, client_ctx(tmp_path) if (tmp_path / "state" / CERT_FILE).exists()
                     else ssl._create_unverified_context(), b"x\n")
        lst.wait(lambda: lst.stats()["not_tls"] == 1)
        st = lst.stats()
    assert got == parsed(lines)
    assert st["probes"] == 1
    assert any("PLAIN TCP" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_plain_sender_on_tls_listener_gets_told(tmp_path: Path) -> None:
    with listening(tmp_path) as lst, socket.create_connection((HOST, lst.port), timeout=5) as s:
        s.sendall((line(1) + "\n").encode())
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(200)
        assert answer == NOT_TLS_ANSWER
        lst.wait(lambda: lst.stats()["not_tls"] == 1)
        assert lst.secrets == []


def test_oversize_and_malformed_lines_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tlsmirror.keys")
    short_secret = secret_hex(9, 47)  # one byte short: malformed, and it must not be logged
    data = b"".join([
        (line(1) + "\n").encode(),
        b"A" * 5000 + b"\n",  # oversize, complete in one read
        f"CLIENT_RANDOM {cr(2).hex()} {short_secret}\n".encode(),
        b"CLIENT_RANDOM zz zz\r\n",
        b"\xff\xfe binary \x00 junk\n",
        b"# a comment\n\n",
        (line(3) + "\n").encode(),
    ])
    with listening(tmp_path, max_line=4096) as lst:
        send_tls(lst.port, client_ctx(tmp_path), data, chunks=3)
        # an oversize line arriving in many reads, then a good line on the same connection
        with socket.create_connection((HOST, lst.port), timeout=5) as raw, \
                client_ctx(tmp_path).wrap_socket(raw, server_hostname=HOST) as tls:
            for _ in range(10):
                tls.sendall(b"B" * 1000)
            tls.sendall(b"\n" + (line(4) + "\n").encode())
            lst.wait_secrets(3)
        got = lst.wait_secrets(3)
        st = lst.stats()
    assert [s.ident for s in got] == [cr(1), cr(3), cr(4)]
    assert st["oversize"] == 2
    assert st["malformed"] == 5  # 2 oversize + short secret + bad hex + not ASCII
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    assert short_secret not in log_text and short_secret[:24] not in log_text
    assert secret_hex(1) not in log_text and secret_hex(1)[:16] not in log_text
    assert cr(1)[:4].hex() in log_text  # the debug line names the client random prefix only
    assert cr(1).hex() not in log_text


def test_flood_of_idle_connections_and_slowloris(tmp_path: Path) -> None:
    """200 idle connections and a slow sender, with room for 50: a good sender still gets through,
    and the idle ones are closed after the idle timeout."""
    with listening(tmp_path, max_connections=50, idle_timeout=1.5) as lst:
        idle = [socket.create_connection((HOST, lst.port), timeout=5) for _ in range(200)]
        slow = socket.create_connection((HOST, lst.port), timeout=5)
        slow_ctx = client_ctx(tmp_path, version=ssl.TLSVersion.TLSv1_2)
        slow_tls = slow_ctx.wrap_socket(slow, server_hostname=HOST)
        try:
            lst.wait(lambda: lst.stats()["connections"] >= 201)
            assert lst.stats()["active"] == 50  # full: every new sender evicts an idle connection
            for i in range(10):
                send_tls(lst.port, client_ctx(tmp_path), (line(i) + "\n").encode())
                with contextlib.suppress(OSError):
                    slow_tls.sendall(b"C")  # never finishes its line
            got = lst.wait_secrets(10)
            assert sorted(s.ident for s in got) == sorted(cr(i) for i in range(10))
            lst.wait(lambda: lst.stats()["active"] == 0, timeout=5)
            st = lst.stats()
            assert st["evicted"] >= 150
            assert st["idle_timeouts"] >= 1
            slow_tls.settimeout(2)
            with pytest.raises(OSError):  # the slow sender was cut off (line unfinished too long)
                for _ in range(20):
                    slow_tls.sendall(b"C")
                    time.sleep(0.05)
        finally:
            for s in idle:
                s.close()
            slow_tls.close()


def test_on_secrets_failure_is_counted(tmp_path: Path) -> None:
    calls: list[int] = []

    def broken(batch: list[Secret]) -> None:
        calls.append(len(batch))
        raise RuntimeError("consumer down")

    with listening(tmp_path, on_secrets=broken) as lst:
        send_tls(lst.port, client_ctx(tmp_path), (line(1) + "\n").encode())
        send_tls(lst.port, client_ctx(tmp_path), (line(2) + "\n").encode())
        lst.wait(lambda: lst.stats()["callback_errors"] == 2)
    assert calls == [1, 1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(max_size=300), max_size=6))
def test_fuzz_plain_garbage_never_stops_good_lines(tmp_path: Path, chunks: list[bytes]) -> None:
    with listening(tmp_path, tls=False, max_line=256) as lst:
        with socket.create_connection((HOST, lst.port), timeout=5) as s, contextlib.suppress(OSError):
            for c in chunks:
                s.sendall(c)
        send_plain(lst.port, (line(5) + "\n").encode())
        lst.wait(lambda: any(x.ident == cr(5) for x in lst.secrets))
        st = lst.stats()
    assert st["connections"] == 2 and st["active"] == 0


# -- network allow list -------------------------------------------------------------------------------


def test_allow_list(tmp_path: Path) -> None:
    with listening(tmp_path, allow=["10.0.0.0/8", "192.168.1.0/24"]) as lst:
        with pytest.raises(OSError):
            send_tls(lst.port, client_ctx(tmp_path), (line(1) + "\n").encode())
        lst.wait(lambda: lst.stats()["refused_network"] == 1)
        assert lst.secrets == [] and lst.stats()["probes"] == 0
    with listening(tmp_path, allow=["127.0.0.0/8"]) as lst:
        send_tls(lst.port, client_ctx(tmp_path), (line(1) + "\n").encode())
        lst.wait_secrets(1)
    with pytest.raises(InputError):
        KeyServer(KeyServerConfig(allow=["not-a-network"]), lambda b: None)


# -- certificates and files ---------------------------------------------------------------------------


def test_self_signed_certificate_mode_and_reuse(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with listening(tmp_path) as lst:
        send_tls(lst.port, client_ctx(tmp_path), (line(1) + "\n").encode())
        lst.wait_secrets(1)
    cert, key = state / CERT_FILE, state / KEY_FILE
    assert stat.S_IMODE(cert.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    first = (cert.read_bytes(), key.read_bytes())
    fp = certificate_fingerprint(str(cert))
    with listening(tmp_path) as lst:  # restart: same files, and the old trust still works
        send_tls(lst.port, client_ctx(tmp_path), (line(2) + "\n").encode())
        lst.wait_secrets(1)
    assert (cert.read_bytes(), key.read_bytes()) == first
    assert certificate_fingerprint(str(cert)) == fp and len(fp) == 95
    assert sorted(p.name for p in state.iterdir()) == sorted([CERT_FILE, KEY_FILE])


def test_reload_certificates(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "server-ca")
    c1, k1 = make_client_cert(tmp_path, ca, "one")  # a plain leaf works as a server certificate too
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(c1, cert)
    shutil.copy(k1, key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(tmp_path / "server-ca.pem"))

    def peer_cn(port: int) -> str:
        with socket.create_connection((HOST, port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            peer = tls.getpeercert()
            tls.sendall((line(1) + "\n").encode())
        return str(dict(x[0] for x in peer["subject"])["commonName"])

    with listening(tmp_path, cert=str(cert), key=str(key)) as lst:
        assert peer_cn(lst.port) == "one"
        c2, k2 = make_client_cert(tmp_path, ca, "two")
        shutil.copy(c2, cert)
        shutil.copy(k2, key)
        lst.call(lst.server.reload_certificates)
        assert peer_cn(lst.port) == "two"
        key.write_text("garbage")
        with pytest.raises(InputError):
            lst.call(lst.server.reload_certificates)
        assert peer_cn(lst.port) == "two"  # the old certificate stays


def test_keylog_out_contents_mode_and_reopen(tmp_path: Path) -> None:
    out = tmp_path / "out.keylog"
    lines = [line(i) for i in range(4)]
    with listening(tmp_path, keylog_out=str(out)) as lst:
        send_tls(lst.port, client_ctx(tmp_path),
                 ("\r\n".join(lines[:2]) + "\r\nbogus line\n# comment\n").encode())
        lst.wait_secrets(2)
        assert out.read_text() == "".join(t + "\n" for t in lines[:2])
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        rotated = tmp_path / "out.keylog.1"
        out.rename(rotated)
        lst.call(lst.server.reopen)
        send_tls(lst.port, client_ctx(tmp_path), ("\n".join(lines[2:]) + "\n").encode())
        lst.wait_secrets(4)
    assert rotated.read_text() == "".join(t + "\n" for t in lines[:2])
    assert out.read_text() == "".join(t + "\n" for t in lines[2:])
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    secrets, problems = parse_keylog(rotated.read_bytes() + out.read_bytes())
    assert secrets == parsed(lines) and not problems


def test_bad_settings_are_input_errors(tmp_path: Path) -> None:
    async def start(cfg: KeyServerConfig) -> None:
        server = KeyServer(cfg, lambda b: None)
        try:
            await server.start()
        finally:
            await server.stop()

    with pytest.raises(InputError, match="certificate"):
        asyncio.run(start(KeyServerConfig(host=HOST, port=0, cert=str(tmp_path / "missing.pem"),
                                          key=str(tmp_path / "missing.key"))))
    with pytest.raises(InputError, match="both"):
        asyncio.run(start(KeyServerConfig(host=HOST, port=0, cert=str(tmp_path / "x.pem"))))
    with listening(tmp_path) as lst, pytest.raises(InputError, match="cannot listen"):
        asyncio.run(start(KeyServerConfig(host=HOST, port=lst.port, state_dir=str(tmp_path / "state"))))


def test_rate_limited_log() -> None:
    now = [0.0]
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("tlsmirror.keys.test_rate")
    logger.propagate = False
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    rlog = RateLimitedLog(logger, 3, clock=lambda: now[0])
    for i in range(10):
        rlog(logging.WARNING, "malformed", "bad line %d", i)
        rlog(logging.WARNING, "other", "other %d", i)
    assert records == ["bad line 0", "other 0", "bad line 1", "other 1", "bad line 2", "other 2"]
    now[0] = 61.0
    rlog(logging.WARNING, "malformed", "bad line %d", 99)
    assert records[-2:] == ["7 more 'malformed' messages suppressed", "bad line 99"]


def test_secret_repr_and_state_dir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert KeyServerConfig().state_dir == os.path.join(str(tmp_path), "tlsmirror")
    s = parsed([line(1)])[0]
    assert secret_hex(1)[:8] not in repr(s)
