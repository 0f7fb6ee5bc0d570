"""The key fabric live: two ``tlsmirror run -i`` sensors on the lab's veth (nginx in a network namespace),
each capturing half of the connections (a BPF filter on the client port's parity), the secrets sent to
sensor A's key listener only, as the iRule would. Every request is reported once, by the sensor that saw
its connection. Needs root, iproute2, nginx (with TLS), curl and redis-server; skips otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lab import Lab, _wait_for
from tests.support.livesensor import LiveSensor, lab_fixture, tls_client
from tests.support.redis import RedisServer

pytestmark = pytest.mark.slow


def _half(parity: int) -> str:
    """TCP segments of connections to port 443 whose client port has this parity (both directions)."""
    return (f"tcp and ((src port 443 and (tcp[2:2] & 1) = {parity}) or "
            f"(dst port 443 and (tcp[0:2] & 1) = {parity}))")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_fixture(tmp_path_factory, "Fb", 97)


def _session(lab: Lab, keylog: Path, n: int, tag: str, parity: int) -> tuple[int, list[str]]:
    """One TLS connection with *n* keep-alive requests; its client port and request targets."""
    conn, port = tls_client(lab, keylog, parity=parity)
    targets = []
    for i in range(n):
        target = f"/hello.txt?qid={tag}-{i}"
        conn.request("GET", target)
        r = conn.getresponse()
        assert r.status == 200 and r.read()
        targets.append(target)
    conn.close()
    return port, targets


def test_two_live_sensors_share_the_key_stream_of_one(lab: Lab, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    a = LiveSensor(lab, "a", redis.url, keys=True, bpf=_half(0))
    b = LiveSensor(lab, "b", redis.url, keys=False, bpf=_half(1))
    sensors = [a, b]
    try:
        _wait_for(lambda: a.ready() and b.ready(), 60, "both sensors ready on the fabric")
        expected: dict[int, list[str]] = {}
        keylog = tmp_path / "keys.log"
        for c in range(12):
            port, targets = _session(lab, keylog, 3, f"c{c}", c % 2)
            expected[port] = targets
        parities = {p & 1 for p in expected}
        a.send_keys(keylog.read_bytes())  # every session's secrets to sensor A only
        n_a = sum(len(t) for p, t in expected.items() if p % 2 == 0)
        n_b = sum(len(t) for p, t in expected.items() if p % 2 == 1)
        _wait_for(lambda: a.metric("exported") == n_a and b.metric("exported") == n_b, 60,
                  f"{n_a} calls on A and {n_b} on B")
        assert b.metric("keys_received") == 0 and b.metric("fabric_secrets", direction="in") > 0
        time.sleep(0.5)
        out_a, out_b = a.stop(), b.stop()
    finally:
        for s in sensors:
            s.kill()
        redis.stop()
    got = [(r["client"]["port"], r["url"]) for r in out_a + out_b]  # type: ignore[index]
    assert len(got) == len(set(got)) == sum(len(t) for t in expected.values())
    for port, targets in expected.items():
        mine = out_a if port % 2 == 0 else out_b
        assert sorted(str(r["url"]).split("/", 3)[-1] for r in mine if r["client"]["port"] == port) == \
            sorted(t.lstrip("/") for t in targets)  # type: ignore[index]
    assert parities == {0, 1}
