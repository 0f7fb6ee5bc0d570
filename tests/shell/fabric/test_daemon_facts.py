"""Handshake facts through the daemon and the fabric: sensor A (a Daemon on a capture file with the whole
connections, keys from its key log) publishes the facts its worker saw; sensor B, whose capture starts after
the handshakes and which has no keys of its own, takes the secrets and the facts from the fabric before it
is ready and decrypts the connections from mid-stream, its calls flagged ``picked_up``.

Real TLS (OpenSSL through Python's ssl), real worker processes, a real redis-server.
"""

from __future__ import annotations

from pathlib import Path

from tests.core.tls.test_pickup import CASES, HANDSHAKE_FLIGHTS, REQUESTS, N, transcript
from tests.support.daemon import ListExporter, Running, config
from tests.support.pcapwriter import ethernet, ipv4, pcap_bytes, segment_frames, tcp_conversation, udp
from tests.support.redis import RedisServer
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.shell.daemon.supervisor import Daemon
from tlsmirror.shell.fabric.entries import FACTS_PREFIX, FLOW_PREFIX

NAMES = ("tls13", "tls12-gcm", "tls12-cbc")
SKIP = 2  # request/response pairs before B's capture starts


def _captures(tmp: Path) -> tuple[str, str, str, dict[int, str]]:
    """The whole connections (A's capture), the same after SKIP exchanges with no handshake (B's), the key log."""
    full, cut, keylog, ports = [], [], [], {}
    for i, name in enumerate(NAMES):
        t = transcript(name)
        port = 40001 + i
        ports[port] = name
        full += segment_frames(tcp_conversation(t.flights, client=("10.0.0.1", port), ts=1.0 + i))
        # B's capture starts 3 s in (a first unrelated frame at 0): the fabric has given it everything by then
        cut += segment_frames(tcp_conversation(t.flights[HANDSHAKE_FLIGHTS + 2 * SKIP:], handshake=False,
                                               client=("10.0.0.1", port), ts=3.0 + i * 0.1))
        keylog.append(t.keylog)
    first = (0.0, ethernet(ipv4(udp(b"\x00" * 12), src="10.0.0.9", dst="10.0.0.10", proto=17)))
    a, b = tmp / "full.pcap", tmp / "cut.pcap"
    a.write_bytes(pcap_bytes(sorted(full)))
    b.write_bytes(pcap_bytes([first, *sorted(cut)]))
    return str(a), str(b), "".join(keylog), ports


def test_a_standby_sensor_picks_up_the_connections_another_one_saw_from_the_fabric(tmp_path: Path) -> None:
    assert set(NAMES) <= set(CASES)
    redis = RedisServer(tmp_path / "redis").start()
    try:
        full, cut, keylog, ports = _captures(tmp_path)
        secrets, problems = parse_keylog(keylog)
        assert not problems
        common = {"keys.fabric": redis.url, "keys.fabric_timeout": 5.0, "capture.workers": 1,
                  "capture.pcap_linger": 0.5}
        out_a = ListExporter()
        a = Running(Daemon(config(**common, **{"capture.pcap": full, "keys.fabric_id": "sensor-a"}),
                           exporters=[out_a], preload=secrets))
        a.join(90)
        assert len(out_a.calls) == N * len(NAMES)
        assert not any("picked_up" in c.exchange.flags for c in out_a.calls)
        r = redis.client()
        assert len(r.keys(FACTS_PREFIX + "*")) == len(NAMES) and len(r.keys(FLOW_PREFIX + "*")) == len(NAMES)
        gcm = transcript("tls12-gcm").client_random.hex().encode()
        assert r.get(FLOW_PREFIX + "10.0.0.1:40002:10.0.0.2:443") == gcm

        out_b = ListExporter()
        b_daemon = Daemon(config(**common, **{"capture.pcap": cut, "capture.pcap_speed": 1.0,
                                              "keys.fabric_id": "sensor-b"}), exporters=[out_b])
        b = Running(b_daemon)
        b.join(90)
        fabric = b_daemon.fabric.snapshot()
        assert (fabric["facts_in"], fabric["secrets_in"], fabric["bad_entries"]) == (len(NAMES), len(secrets), 0)
        got: dict[str, list[tuple[str | None, str | None, int | None]]] = {}
        for c in out_b.calls:
            assert "picked_up" in c.exchange.flags
            assert c.connection.alpn == "http/1.1"  # TLS 1.3 too: its facts sent again once the ALPN came
            got.setdefault(ports[c.connection.client_port], []).append(
                (c.exchange.method, c.exchange.path, c.exchange.status))
        want = [(REQUESTS[i].split(b" ")[0].decode(), REQUESTS[i].split(b" ")[1].decode(), 201 if i == N - 1 else 200)
                for i in range(SKIP, N)]
        assert got == {name: want for name in NAMES}
    finally:
        redis.stop()
