"""The key fabric live: two ``tlsmirror run -i`` sensors on the lab's veth (nginx in a network namespace),
each capturing half of the connections (a BPF filter on the client port's parity), the secrets sent to
sensor A's key listener only, as the iRule would. Every request is reported once, by the sensor that saw
its connection. Needs root, iproute2, nginx (with TLS), curl and redis-server; skips otherwise.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lab import ENV, HOSTNAME, Lab, _scrape, _value, _wait_for, _why_skip
from tests.support.redis import RedisServer

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _half(parity: int) -> str:
    """TCP segments of connections to port 443 whose client port has this parity (both directions)."""
    return (f"tcp and ((src port 443 and (tcp[2:2] & 1) = {parity}) or "
            f"(dst port 443 and (tcp[0:2] & 1) = {parity}))")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    why = _why_skip()
    if why:
        pytest.skip(why)
    pid = os.getpid()
    x = (pid + 97) % 250 + 2
    lab = Lab(ns=f"tmFab{pid}", host_if=f"tf{pid}h", ns_if=f"tf{pid}n", host_ip=f"198.19.{x}.1",
              ns_ip=f"198.19.{x}.2", dir=tmp_path_factory.mktemp("e2e-fabric"))
    try:
        lab.up()
        lab.start_nginx()
        yield lab
    finally:
        lab.down()


class LiveSensor:
    def __init__(self, lab: Lab, name: str, parity: int, url: str, keys: bool) -> None:
        self.out = lab.dir / f"calls-{name}.jsonl"
        self.mport = _free_port()
        self.kport = _free_port()
        self.log = lab.dir / f"sensor-{name}.log"
        cmd = [sys.executable, "-m", "tlsmirror", "run", "-i", lab.host_if, "--workers", "1", "-o", str(self.out),
               "--metrics-port", str(self.mport), "--bpf", _half(parity), "--log-level", "info",
               "--set", f"keys.fabric={url}", "--set", f"keys.fabric_id=live-{name}",
               "--set", "keys.fabric_timeout=2"]
        cmd += (["--key-port", str(self.kport), "--set", "keys.host=127.0.0.1",
                 "--set", f"keys.state_dir={lab.dir / 'state'}"] if keys else ["--no-keys"])
        self._err = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=self._err)

    def metric(self, name: str, **labels: str) -> float:
        return _value(_scrape(self.mport), name, **labels)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self.log.read_text()[-2000:])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/healthz", timeout=2) as r:
            return bool(json.loads(r.read())["ready"]) and self.metric("fabric_connected") == 1

    def stop(self) -> list[dict[str, object]]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(60) == 0, self.log.read_text()[-2000:]
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._err.close()
        return [json.loads(line) for line in self.out.read_text().splitlines()] if self.out.exists() else []


def _connect(lab: Lab, parity: int) -> socket.socket:
    """A TCP connection to nginx from a client port of this parity (Linux gives connect() even ports)."""
    import random

    for _ in range(200):
        port = random.randrange(20000, 30000) & ~1 | parity
        sock = socket.socket()
        try:
            sock.bind((lab.host_ip, port))
            sock.settimeout(10)
            sock.connect((lab.ns_ip, 443))
            return sock
        except OSError:
            sock.close()
    raise AssertionError("no free client port")


def _session(lab: Lab, keylog: Path, n: int, tag: str, parity: int) -> tuple[int, list[str]]:
    """One TLS connection with *n* keep-alive requests; its client port and request targets."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.keylog_filename = str(keylog)
    sock = _connect(lab, parity)
    port = sock.getsockname()[1]
    conn = http.client.HTTPSConnection(HOSTNAME, 443, context=ctx, timeout=10)
    conn.sock = ctx.wrap_socket(sock, server_hostname=HOSTNAME)
    targets = []
    for i in range(n):
        target = f"/hello.txt?qid={tag}-{i}"
        conn.request("GET", target, headers={"Host": HOSTNAME})
        r = conn.getresponse()
        assert r.status == 200 and r.read()
        targets.append(target)
    conn.close()
    return port, targets


def test_two_live_sensors_share_the_key_stream_of_one(lab: Lab, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    a = LiveSensor(lab, "a", 0, redis.url, keys=True)
    b = LiveSensor(lab, "b", 1, redis.url, keys=False)
    sensors = [a, b]
    try:
        _wait_for(lambda: a.ready() and b.ready(), 60, "both sensors ready on the fabric")
        expected: dict[int, list[str]] = {}
        keylog = tmp_path / "keys.log"
        for c in range(12):
            port, targets = _session(lab, keylog, 3, f"c{c}", c % 2)
            expected[port] = targets
        parities = {p & 1 for p in expected}
        lines = keylog.read_bytes()
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", a.kport)) as raw, \
                tls.wrap_socket(raw, server_hostname="sensor") as s:
            s.sendall(lines)  # every session's secrets to sensor A only
        n_a = sum(len(t) for p, t in expected.items() if p % 2 == 0)
        n_b = sum(len(t) for p, t in expected.items() if p % 2 == 1)
        _wait_for(lambda: a.metric("exported") == n_a and b.metric("exported") == n_b, 60,
                  f"{n_a} calls on A and {n_b} on B")
        assert b.metric("keys_received") == 0 and b.metric("fabric_secrets", direction="in") > 0
        time.sleep(0.5)
        out_a, out_b = a.stop(), b.stop()
    finally:
        for s in sensors:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
        redis.stop()
    got = [(r["client"]["port"], r["url"]) for r in out_a + out_b]  # type: ignore[index]
    assert len(got) == len(set(got)) == sum(len(t) for t in expected.values())
    for port, targets in expected.items():
        mine = out_a if port % 2 == 0 else out_b
        assert sorted(str(r["url"]).split("/", 3)[-1] for r in mine if r["client"]["port"] == port) == \
            sorted(t.lstrip("/") for t in targets)  # type: ignore[index]
    assert parities == {0, 1}
