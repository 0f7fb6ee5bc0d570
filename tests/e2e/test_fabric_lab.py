"""Issue 14's active-active acceptance test, live: two ``tlsmirror run -i`` sensors on the lab's veth (nginx in
a network namespace), each capturing half of the connections (a BPF filter on the client port's parity), the
key fabric on. 60 keep-alive connections (TLS 1.3, TLS 1.2 AES-GCM, TLS 1.2 AES-CBC) of 10 requests each, a
few at a time; every key log line sent to the key listener of one of the two sensors at random (a TLS 1.3
session's lines split between them), some as soon as the handshake is done, before the connection's
requests, the others ("late") after the connection ended. The 600 calls are all reported, none twice, each
by the sensor that saw its packets. Needs root, iproute2, nginx (with TLS), curl and redis-server; skips
otherwise. The random choices come from a seed printed by the test (``TLSMIRROR_FABRIC_SEED`` sets it).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lab import LATE_DELAY, TAG, Lab, _scrape, _wait_for
from tests.support.livesensor import LiveSensor, lab_fixture, tls_client
from tests.support.redis import RedisServer

pytestmark = pytest.mark.slow

CONNECTIONS = 60
REQUESTS = 10  # per connection, keep-alive
THREADS = 4  # connections running at once
LATE_SHARE = 0.5  # of the key lines, sent LATE_DELAY seconds after their connection ended
KINDS = (("1.3", None), ("1.2", "ECDHE-RSA-AES128-GCM-SHA256"), ("1.2", "ECDHE-RSA-AES128-SHA256"))


def _half(parity: int) -> str:
    """TCP segments of connections to port 443 whose client port has this parity (both directions)."""
    return (f"tcp and ((src port 443 and (tcp[2:2] & 1) = {parity}) or "
            f"(dst port 443 and (tcp[0:2] & 1) = {parity}))")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_fixture(tmp_path_factory, "Fb", 97)


def _held(s: LiveSensor, outcome: str) -> float:
    """TLS connections of sensor *s* that held records for their secrets, by how the wait ended."""
    series = _scrape(s.mport).get("tlsmirror_tls_held_sessions_total", {})
    return sum(v for k, v in series.items() if dict(k).get("outcome") == outcome)


class _Keys:
    """Key log lines to the two sensors' key listeners: each line to one at random, now or late."""

    def __init__(self, sensors: dict[str, LiveSensor], seed: int) -> None:
        self.sensors = sensors
        self.seed = seed
        self.lock = threading.Lock()
        self.late: list[tuple[float, str, bytes]] = []  # (due, sensor, line)
        self.sent = {name: 0 for name in sensors}
        self.sent_late = 0
        self.labels: set[str] = set()
        self.spread = 0  # sessions whose lines went to both sensors

    def split(self, c: int, keylog: Path) -> dict[tuple[str, bool], list[bytes]]:
        """Connection *c*'s key lines by (sensor, late), from its own seeded choices."""
        rng = random.Random(f"{self.seed}-{c}")
        out: dict[tuple[str, bool], list[bytes]] = {}
        for line in keylog.read_bytes().splitlines(keepends=True):
            if line.strip() and not line.startswith(b"#"):
                out.setdefault((rng.choice(sorted(self.sensors)), rng.random() < LATE_SHARE), []).append(line)
        with self.lock:
            self.spread += len({name for name, _late in out}) > 1
        return out

    def now(self, name: str, lines: list[bytes]) -> None:
        self.sensors[name].send_keys(b"".join(lines))
        with self.lock:
            self.sent[name] += len(lines)
            self.labels.update(line.split(b" ", 1)[0].decode() for line in lines)

    def later(self, name: str, lines: list[bytes]) -> None:
        due = time.monotonic() + LATE_DELAY
        with self.lock:
            self.late.extend((due, name, line) for line in lines)

    def send_due(self, until_empty: bool) -> None:
        """The late lines that are due, a batch per sensor; with *until_empty*, all of them as they fall due."""
        while True:
            now = time.monotonic()
            with self.lock:
                due = [x for x in self.late if x[0] <= now]
                self.late = [x for x in self.late if x[0] > now]
                left = len(self.late)
            for name in self.sensors:
                lines = [line for _due, n, line in due if n == name]
                if lines:
                    self.now(name, lines)
                    with self.lock:
                        self.sent_late += len(lines)
            if not until_empty or not left:
                return
            time.sleep(0.1)


def _connection(lab: Lab, keys: _Keys, tmp: Path, c: int) -> tuple[int, list[str]]:
    """Connection *c*: TLS handshake, its early key lines, its requests, close, its late key lines later.
    Its client port and request targets."""
    version, cipher = KINDS[c % len(KINDS)]
    keylog = tmp / f"keys-{c}.log"
    conn, port = tls_client(lab, keylog, version=version, cipher=cipher, parity=c % 2)
    conn.connect = lambda: None  # type: ignore[method-assign]  # never a new connection
    split = keys.split(c, keylog)
    for (name, late), lines in split.items():
        if not late:
            keys.now(name, lines)
    targets = []
    try:
        for i in range(REQUESTS):
            target = f"/hello.txt?qid={TAG}-c{c}-{i}"
            conn.request("GET", target)
            r = conn.getresponse()
            assert r.status == 200 and r.read(), (c, target, r.status)
            targets.append(target)
    finally:
        conn.close()
    for (name, late), lines in split.items():
        if late:
            keys.later(name, lines)
    return port, targets


def test_two_active_sensors_each_report_their_half_once_with_key_lines_spread_over_both(
        lab: Lab, tmp_path: Path) -> None:
    seed = int(os.environ.get("TLSMIRROR_FABRIC_SEED") or random.randrange(1 << 32))
    print(f"key line split seed: {seed} (TLSMIRROR_FABRIC_SEED={seed} repeats it)")
    redis = RedisServer(tmp_path / "redis").start()
    a = LiveSensor(lab, "a", redis.url, keys=True, bpf=_half(0))
    b = LiveSensor(lab, "b", redis.url, keys=True, bpf=_half(1))
    sensors = [a, b]
    expected: dict[int, tuple[int, list[str]]] = {}  # connection -> client port, targets
    errors: list[BaseException] = []
    try:
        _wait_for(lambda: a.ready() and b.ready(), 60, "both sensors ready on the fabric")
        p_ready = time.process_time()
        keys = _Keys({"a": a, "b": b}, seed)
        cpu0 = {"a": a.cpu_seconds(), "b": b.cpu_seconds()}
        todo = list(range(CONNECTIONS))
        lock = threading.Lock()

        def client() -> None:
            try:
                while True:
                    with lock:
                        if not todo or errors:
                            return
                        c = todo.pop(0)
                    expected[c] = _connection(lab, keys, tmp_path, c)
                    keys.send_due(until_empty=False)
            except BaseException as exc:  # reported by the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=client) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, (seed, errors[0])
        p_traffic = time.process_time()
        keys.send_due(until_empty=True)
        n_a = sum(len(t) for p, t in expected.values() if p % 2 == 0)
        n_b = sum(len(t) for p, t in expected.values() if p % 2 == 1)
        _wait_for(lambda: a.metric("exported") >= n_a and b.metric("exported") >= n_b, 120,
                  f"{n_a} calls on A and {n_b} on B (seed {seed})",
                  lambda: f"(exported A {a.metric('exported')}, B {b.metric('exported')})")
        assert a.metric("keys_received") == keys.sent["a"] and b.metric("keys_received") == keys.sent["b"]
        assert a.metric("fabric_secrets", direction="in") > 0 and b.metric("fabric_secrets", direction="in") > 0
        unlocked = sum(_held(s, "unlocked") for s in sensors)  # records held for their lines, early or late
        assert unlocked > 0 and sum(_held(s, "expired") + _held(s, "evicted") for s in sensors) == 0
        time.sleep(0.5)
        cpu = {"a": a.cpu_seconds() - cpu0["a"], "b": b.cpu_seconds() - cpu0["b"]}
        out_a, out_b = a.stop(), b.stop()
    finally:
        for s in sensors:
            s.kill()
        redis.stop()
    print(f"key lines: {keys.sent} ({keys.sent_late} late; {keys.spread} sessions' lines on both sensors; "
          f"{unlocked:.0f} connections held records until their lines came), labels {sorted(keys.labels)}; "
          f"CPU time (not wall clock) for the traffic: "
          f"sensor A {cpu['a']:.2f} s, sensor B {cpu['b']:.2f} s, the clients {p_traffic - p_ready:.2f} s")
    assert len(expected) == CONNECTIONS and {p % 2 for p, _t in expected.values()} == {0, 1}
    assert 0 < keys.sent_late < sum(keys.sent.values()) and keys.spread > 0
    assert {"CLIENT_RANDOM", "CLIENT_TRAFFIC_SECRET_0", "SERVER_HANDSHAKE_TRAFFIC_SECRET"} <= keys.labels
    got = [(r["client"]["port"], r["target"]) for r in out_a + out_b]  # type: ignore[index]
    assert len(got) == len(set(got)) == CONNECTIONS * REQUESTS, seed  # all 600, none twice
    for c, (port, targets) in expected.items():
        mine, other = (out_a, out_b) if port % 2 == 0 else (out_b, out_a)
        assert sorted(str(r["target"]) for r in mine if r["client"]["port"] == port) == sorted(targets), (seed, c)  # type: ignore[index]
        assert not any(r["client"]["port"] == port for r in other), (seed, c)  # type: ignore[index]
    versions = {str(r["tls"]["version"]) + "/" + str(r["tls"]["suite"]) for r in out_a + out_b}  # type: ignore[index]
    assert len(versions) == len(KINDS), versions
