"""Resumption across sensors (docs/fabric.md, "Resumption"): a standby that sees an abbreviated TLS 1.2
handshake resuming a session made while the other sensor was active decrypts it with what the fabric
carries: the sender's ``RSA Session-ID:`` line of the session (session id -> master secret, an
``RSA_SESSION`` entry), published by sensor A and loaded by sensor B before its start returns.

Real TLS (OpenSSL through Python's ssl, resumption by session id: the server issues no tickets), a real
redis-server.
"""

from __future__ import annotations

from pathlib import Path

from tests.core.tls.test_session import _no_ticket_dir
from tests.shell.fabric.test_client import Sink, _wait
from tests.support.redis import RedisServer
from tests.support.tlspair import run_session
from tests.support.tlsruns import REQUESTS, RESPONSES, Run, assert_decrypted, segments
from tlsmirror.keys.events import RSA_SESSION
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.shell.fabric.client import Fabric
from tlsmirror.shell.fabric.connect import FabricSettings
from tlsmirror.shell.fabric.entries import secret_key


def test_an_abbreviated_handshake_on_the_standby_is_decrypted_with_the_session_line_from_the_fabric(
        tmp_path: Path) -> None:
    cipher = "ECDHE-RSA-AES128-GCM-SHA256"
    d = _no_ticket_dir(tmp_path, cipher)
    t1, sess = run_session(tls_version="1.2", cipher=cipher, tmpdir=d)
    assert sess is not None and not sess.has_ticket
    t2, _ = run_session(tls_version="1.2", cipher=cipher, session=sess, requests=REQUESTS, responses=RESPONSES,
                        tmpdir=d)
    assert t2.session_reused
    master = next(line.split()[2] for line in t1.keylog.splitlines() if line.startswith("CLIENT_RANDOM"))
    line = f"RSA Session-ID:{sess.id.hex()} Master-Key:{master}\n"  # what a classic F5 iRule logs
    secrets, problems = parse_keylog(line)
    assert not problems and secrets[0].label == RSA_SESSION
    redis = RedisServer(tmp_path / "redis").start()
    a = b = None
    try:
        a = Fabric(FabricSettings(url=redis.url, sensor_id="sensor-a", timeout=2.0), Sink())
        assert a.start(10)
        a.publish(secrets)
        r = redis.client()
        _wait(lambda: bool(r.exists(secret_key(secrets[0]))), 10, "the session's entry in Redis")
        a.stop()
        got = Sink()
        b = Fabric(FabricSettings(url=redis.url, sensor_id="sensor-b", timeout=2.0), got)
        assert b.start(10) and got.got == secrets  # loaded before start returned
    finally:
        for f in (a, b):
            if f is not None:
                f.stop()
        redis.stop()
    run = Run.new()
    run.events += run.engine.add_secrets(got.got, 0.0)
    run.segments(segments(t2)).finish()  # B sees only the resumed connection
    assert_decrypted(run, t2, resumed=True)
