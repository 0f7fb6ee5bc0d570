"""Issue 14's acceptance test for the key fabric: two sensors (``tlsmirror run --pcap``), each on one half of
the bundled sample (its connections split by client port), one Redis (a real redis-server), and the
secrets given to one sensor only (its --keylog). Both decrypt their calls: 60 calls across the two
outputs, none twice. Then Redis is stopped for a while in the middle: neither sensor stops, the errors
are counted, and the secrets cross once Redis is back.
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.daemon import ENV, KEYLOG, SAMPLE, expected_requests, free_port, scrape, value, wait_for
from tests.support.pcapwriter import pcap_bytes
from tests.support.redis import RedisServer
from tlsmirror.shell.offline.pcapfile import CapturedFrame, read_capture

pytestmark = pytest.mark.slow


def _client_port(data: bytes) -> int:
    ihl = (data[14] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", data, 14 + ihl)
    return sport if dport == 443 else dport


def split_sample(tmp: Path) -> tuple[str, str, set[int], set[int]]:
    """The sample's connections in two capture files, alternately by client port."""
    frames = [(item.ts, item.data) for item in read_capture(SAMPLE) if type(item) is CapturedFrame]
    ports = sorted({_client_port(d) for _, d in frames})
    half = (set(ports[0::2]), set(ports[1::2]))
    paths = []
    for name, keep in zip(("a", "b"), half, strict=True):
        p = tmp / f"half-{name}.pcap"
        p.write_bytes(pcap_bytes([(ts, d) for ts, d in frames if _client_port(d) in keep]))
        paths.append(str(p))
    return paths[0], paths[1], half[0], half[1]


class Sensor:
    """``tlsmirror run --pcap HALF`` with the fabric; its metrics port, its output."""

    def __init__(self, tmp: Path, name: str, pcap: str, url: str, *extra: str) -> None:
        self.name = name
        self.out = tmp / f"calls-{name}.jsonl"
        self.mport = free_port()
        cmd = [sys.executable, "-m", "tlsmirror", "run", "--pcap", pcap, "--workers", "1", "-o", str(self.out),
               "--no-keys", "--metrics-port", str(self.mport), "--set", f"keys.fabric={url}",
               "--set", f"keys.fabric_id=sensor-{name}", "--set", "keys.fabric_timeout=1", *extra]
        if "--key-port" in extra:  # this one runs its key listener
            cmd.remove("--no-keys")
        self.proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
        self.err = ""

    def metric(self, name: str, **labels: str) -> float:
        return value(scrape(self.mport), name, **labels)

    def health(self) -> dict[str, object]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/healthz", timeout=5) as r:
            return dict(json.loads(r.read()))

    def finish(self, timeout: float = 60, term: bool = False) -> list[dict[str, object]]:
        if term:
            self.proc.send_signal(signal.SIGTERM)
        _, self.err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, self.err
        assert "Traceback" not in self.err
        return [json.loads(line) for line in self.out.read_text().splitlines()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _check_outputs(a: list[dict[str, object]], b: list[dict[str, object]], ports_a: set[int],
                   ports_b: set[int]) -> None:
    def key(r: dict[str, object]) -> tuple[int, float]:
        return (r["client"]["port"], round(r["request_start_ts"], 6))  # type: ignore[index]

    got = [key(r) for r in a] + [key(r) for r in b]
    assert len(got) == 60 and set(got) == expected_requests()  # every call, none twice
    assert {p for p, _ in map(key, a)} == ports_a and {p for p, _ in map(key, b)} == ports_b


@pytest.mark.parametrize("order", ["peer_first", "keys_first"])
def test_two_sensors_share_the_secrets_one_was_given(tmp_path: Path, redis_server: RedisServer,
                                                      order: str) -> None:
    """peer_first: B is up and subscribed when A publishes (the channel); keys_first: A has run and gone
    when B starts (the entries, loaded before B reports ready)."""
    half_a, half_b, ports_a, ports_b = split_sample(tmp_path)
    sensors: list[Sensor] = []
    try:
        if order == "peer_first":
            b = Sensor(tmp_path, "b", half_b, redis_server.url, "--pcap-linger", "60")
            sensors.append(b)
            wait_for(lambda: b.metric("fabric_connected") == 1, 60, "sensor b on the fabric")
            assert b.metric("exported") == 0  # no secrets: its half is held
            a = Sensor(tmp_path, "a", half_a, redis_server.url, "--keylog", KEYLOG, "--pcap-linger", "1")
            sensors.append(a)
        else:
            a = Sensor(tmp_path, "a", half_a, redis_server.url, "--keylog", KEYLOG, "--pcap-linger", "1")
            sensors.append(a)
            calls_a = a.finish()
            assert len(redis_server.client().keys("tlsmirror:secret:*")) == 20
            b = Sensor(tmp_path, "b", half_b, redis_server.url, "--pcap-linger", "60")
            sensors.append(b)
        wait_for(lambda: b.metric("exported") == 30, 60, "sensor b's 30 calls")
        assert b.metric("fabric_secrets", direction="in") == 20 and b.metric("fabric_errors") == 0
        assert b.metric("keys_preloaded") == 0 and b.metric("tls_connections", outcome="no_key") == 0
        if order == "keys_first":  # the snapshot came before the file was read: no record waited for a key
            m = scrape(b.mport)
            held = m.get("tlsmirror_tls_held_sessions_total") or m.get("tlsmirror_tls_held_sessions") or {}
            assert sum(held.values()) == 0, held
        if order == "peer_first":
            calls_a = a.finish()
        calls_b = b.finish(term=True)
    finally:
        for s in sensors:
            s.kill()
    _check_outputs(calls_a, calls_b, ports_a, ports_b)
    assert "fabric: connected to" in b.err and "20 to publish" in a.err


def test_secrets_from_the_key_listener_are_shared(tmp_path: Path, redis_server: RedisServer) -> None:
    import socket
    import ssl

    half_a, half_b, ports_a, ports_b = split_sample(tmp_path)
    kport = free_port()
    sensors: list[Sensor] = []
    try:
        a = Sensor(tmp_path, "a", half_a, redis_server.url, "--pcap-linger", "60", "--key-port", str(kport),
                   "--set", "keys.host=127.0.0.1",
                   "--set", f"keys.state_dir={tmp_path / 'state'}")
        b = Sensor(tmp_path, "b", half_b, redis_server.url, "--pcap-linger", "60")
        sensors += [a, b]
        wait_for(lambda: a.health()["ready"] is True and b.metric("fabric_connected") == 1, 60, "both ready")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", kport)) as raw, \
                ctx.wrap_socket(raw, server_hostname="sensor") as s:
            s.sendall(Path(KEYLOG).read_bytes())
        wait_for(lambda: a.metric("exported") == 30 and b.metric("exported") == 30, 60, "30 calls on each")
        assert a.metric("keys_received") == 20 and a.metric("fabric_secrets", direction="out") == 20
        assert b.metric("fabric_secrets", direction="in") == 20 and b.metric("keys_received") == 0
        assert a.metric("fabric_secrets", direction="in") == 0  # its own came back on the channel: ignored
        calls_a = a.finish(term=True)
        calls_b = b.finish(term=True)
    finally:
        for s in sensors:
            s.kill()
    _check_outputs(calls_a, calls_b, ports_a, ports_b)


def test_redis_stopped_for_a_while_in_the_middle(tmp_path: Path, redis_server: RedisServer) -> None:
    half_a, half_b, ports_a, ports_b = split_sample(tmp_path)
    sensors: list[Sensor] = []
    try:
        b = Sensor(tmp_path, "b", half_b, redis_server.url, "--pcap-linger", "90")
        sensors.append(b)
        # with a capture file the fabric comes first, before the workers: ready follows
        wait_for(lambda: b.metric("fabric_connected") == 1 and b.health()["ready"], 60, "sensor b ready on the fabric")
        redis_server.stop()
        wait_for(lambda: b.metric("fabric_errors") >= 1 and b.metric("fabric_connected") == 0, 30,
                 "sensor b to count the fabric's failure")
        health = b.health()
        assert health["status"] == "degraded" and "key fabric unreachable" in " ".join(health["reasons"])
        # A comes up while Redis is down: it decrypts its own half and keeps its secrets to publish
        a = Sensor(tmp_path, "a", half_a, redis_server.url, "--keylog", KEYLOG, "--pcap-linger", "60")
        sensors.append(a)
        wait_for(lambda: a.metric("exported") == 30, 60, "sensor a's own 30 calls")
        # queued: its 20 secrets, the handshake facts of its 6 connections and the resumption states of the
        # 4 TLS 1.2 sessions whose servers gave a session id or ticket
        assert a.metric("fabric_connected") == 0 and a.metric("fabric_pending") == 30
        assert a.metric("fabric_errors") >= 1
        time.sleep(2.0)
        assert b.metric("exported") == 0 and b.proc.poll() is None and a.proc.poll() is None
        redis_server.start()  # back, empty
        wait_for(lambda: b.metric("exported") == 30, 90, "sensor b's 30 calls once Redis is back")
        assert a.metric("fabric_secrets", direction="out") == 20 and a.metric("fabric_connected") == 1
        assert a.metric("fabric_facts", direction="out") == 6
        assert a.metric("fabric_resumption", direction="out") == 4
        assert b.metric("fabric_secrets", direction="in") == 20 and b.metric("fabric_reconnects") >= 1
        assert b.health()["status"] == "ok"
        calls_a = a.finish(term=True)
        calls_b = b.finish(term=True)
    finally:
        for s in sensors:
            s.kill()
    _check_outputs(calls_a, calls_b, ports_a, ports_b)
    assert "reconnecting" in b.err and "connected again" in b.err
    secret_hex = {line.split()[-1] for line in Path(KEYLOG).read_text().splitlines() if line.strip()}
    assert not any(h in a.err or h in b.err for h in secret_hex)
