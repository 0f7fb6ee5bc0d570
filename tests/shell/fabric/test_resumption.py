"""Resumption across sensors (docs/fabric.md, "Resumption"): a standby that sees an abbreviated TLS 1.2
handshake resuming a session made while the other sensor was active decrypts it with what the fabric
carries: the sender's ``RSA Session-ID:`` line of the session (session id -> master secret, an
``RSA_SESSION`` entry), published by sensor A and loaded by sensor B before its start returns; or, with no
such line at all, the resumption state sensor A's engine learnt from the full handshake
(``tlsmirror:resume:<kind>:<digest>``, by session id and by ticket).

Real TLS (OpenSSL through Python's ssl, resumption by session id: the server issues no tickets), a real
redis-server.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from tests.core.tls.test_session import _no_ticket_dir
from tests.shell.fabric.test_client import Sink, _wait
from tests.support.daemon import ListExporter, Running, config
from tests.support.pcapwriter import ethernet, ipv4, pcap_bytes, segment_frames, udp
from tests.support.redis import RedisServer
from tests.support.tlspair import TlsTranscript, run_session
from tests.support.tlsruns import REQUESTS, RESPONSES, Run, assert_decrypted, segments
from tlsmirror.keys.events import RSA_SESSION
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.pipeline import EngineConfig
from tlsmirror.shell.daemon.supervisor import Daemon
from tlsmirror.shell.fabric.client import Fabric
from tlsmirror.shell.fabric.connect import FabricSettings
from tlsmirror.shell.fabric.entries import (
    CHANNEL,
    RESUME,
    RESUME_PREFIX,
    encode_message,
    resumption_key,
    resumption_line,
    secret_key,
)
from tlsmirror.tls.events import ResumptionState


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


# ---------------------------------------------------------------------- resumption states (issue 14)
def _resumed_pairs(tmp: Path) -> dict[str, tuple[TlsTranscript, TlsTranscript]]:
    """By session id (a server without tickets) and by ticket (OpenSSL's default): a full handshake and the
    abbreviated one resuming it."""
    cipher = "ECDHE-RSA-AES128-GCM-SHA256"
    out = {}
    for by, d in (("id", _no_ticket_dir(tmp, cipher)), ("ticket", tmp / "tickets")):
        d.mkdir(exist_ok=True)
        t1, sess = run_session(tls_version="1.2", cipher=cipher, tmpdir=d)
        assert sess is not None and sess.has_ticket == (by == "ticket")
        t2, _ = run_session(tls_version="1.2", cipher=cipher, session=sess, requests=REQUESTS,
                            responses=RESPONSES, tmpdir=d)
        assert t2.session_reused
        out[by] = (t1, t2)
    return out


def _client_random_lines(t: TlsTranscript) -> str:
    return "".join(line + "\n" for line in t.keylog.splitlines() if line.startswith("CLIENT_RANDOM"))


def _states(t1: TlsTranscript) -> list[ResumptionState]:
    run = Run.new(EngineConfig(share_resumption=True)).keys(_client_random_lines(t1))
    run.segments(segments(t1)).finish()
    return run.of(ResumptionState)


class StateSink:
    def __init__(self) -> None:
        self.states: list[ResumptionState] = []
        self.lock = threading.Lock()

    def __call__(self, states: list[ResumptionState]) -> None:
        with self.lock:
            self.states.extend(states)


def test_resumption_states_cross_with_their_ttl_and_bad_entries_are_counted(
        tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pairs = _resumed_pairs(tmp_path)
    states = [s for t1, _ in pairs.values() for s in _states(t1)]
    assert sorted(s.kind for s in states) == ["id", "ticket"]
    r = redis_server.client()
    r.set(RESUME_PREFIX + "id:" + "00" * 32, resumption_line(states[0]))  # key and value disagree
    r.set(RESUME_PREFIX + "ticket:zz", "{}")
    settings = {"url": redis_server.url, "timeout": 2.0, "key_ttl": 120.0}
    a = Fabric(FabricSettings(**settings, sensor_id="sensor-a"), Sink(), deliver_resumption=StateSink(),
               log_every=0)
    got_b = StateSink()
    b = Fabric(FabricSettings(**settings, sensor_id="sensor-b"), Sink(), deliver_resumption=got_b, log_every=0)
    c = None
    try:
        assert a.start(10) and b.start(10)
        assert b.snapshot()["bad_entries"] == 2 and not got_b.states
        a.publish_resumption(states)
        _wait(lambda: len(got_b.states) == 2, 10, "sensor b to receive the states")
        assert got_b.states == states
        for s in states:
            assert r.get(resumption_key(s)) == resumption_line(s).encode()
            assert 110 <= r.ttl(resumption_key(s)) <= 120
        _wait(lambda: a.snapshot()["resume_out"] == 2, 10, "sensor a to count its states out")
        assert b.snapshot()["resume_in"] == 2
        r.publish(CHANNEL, encode_message(RESUME, "sensor-x", ["{\"kind\": \"psk\"}", resumption_line(states[0])]))
        _wait(lambda: b.snapshot()["bad_entries"] == 3, 10, "the bad line counted")
        assert len(got_b.states) == 2  # the good line was known already
        got_c = StateSink()
        c = Fabric(FabricSettings(**settings, sensor_id="sensor-c"), Sink(), deliver_resumption=got_c)
        assert c.start(10) and sorted(got_c.states, key=lambda s: s.kind) == sorted(states, key=lambda s: s.kind)
        assert c.snapshot()["snapshot_resume"] == 2  # loaded before start returned
    finally:
        for f in (a, b, c):
            if f is not None:
                f.stop()
    for s in states:  # master secrets never in the logs
        assert s.master.hex() not in caplog.text


def test_a_standby_daemon_decrypts_resumed_sessions_whose_full_handshakes_the_other_one_saw(
        tmp_path: Path) -> None:
    pairs = _resumed_pairs(tmp_path)
    full, resumed, keylog = [], [], ""
    for i, (t1, t2) in enumerate(pairs.values()):
        full += segment_frames(segments(t1, client=("10.0.0.1", 40001 + i), ts=1.0 + i))
        # B's capture: only the resumed connections, 3 s in (a first unrelated frame at 0)
        resumed += segment_frames(segments(t2, client=("10.0.0.1", 41001 + i), ts=3.0 + i * 0.1))
        keylog += _client_random_lines(t1)  # sensor A's keys: the full handshakes' only
    first = (0.0, ethernet(ipv4(udp(b"\x00" * 12), src="10.0.0.9", dst="10.0.0.10", proto=17)))
    a_pcap, b_pcap = tmp_path / "full.pcap", tmp_path / "resumed.pcap"
    a_pcap.write_bytes(pcap_bytes(sorted(full)))
    b_pcap.write_bytes(pcap_bytes([first, *sorted(resumed)]))
    secrets, problems = parse_keylog(keylog)
    assert not problems and len(secrets) == 2
    redis = RedisServer(tmp_path / "redis").start()
    try:
        common = {"keys.fabric": redis.url, "keys.fabric_timeout": 5.0, "capture.workers": 1,
                  "capture.pcap_linger": 0.5}
        out_a = ListExporter()
        a = Running(Daemon(config(**common, **{"capture.pcap": str(a_pcap), "keys.fabric_id": "sensor-a"}),
                           exporters=[out_a], preload=secrets))
        a.join(90)
        assert len(out_a.calls) == 2  # one request on each full handshake
        r = redis.client()
        assert sorted(k.split(b":")[2] for k in r.keys(RESUME_PREFIX + "*")) == [b"id", b"ticket"]
        out_b = ListExporter()
        b_daemon = Daemon(config(**common, **{"capture.pcap": str(b_pcap), "capture.pcap_speed": 1.0,
                                              "keys.fabric_id": "sensor-b"}), exporters=[out_b])
        b = Running(b_daemon)
        b.join(90)
        fabric = b_daemon.fabric.snapshot()
        assert (fabric["resume_in"], fabric["secrets_in"], fabric["bad_entries"]) == (2, 2, 0)
        got = sorted((c.connection.client_port, c.exchange.method, c.exchange.path, c.exchange.status)
                     for c in out_b.calls)
        assert got == sorted([(port, "POST", "/v1/orders", 201) for port in (41001, 41002)]
                             + [(port, "GET", "/v1/orders/42", 200) for port in (41001, 41002)])
    finally:
        redis.stop()
