"""Issue 14's failover acceptance test, live: sensor A (``tlsmirror run -i`` on the lab's veth, the key fabric
on) sees 12 keep-alive connections open to nginx (4 TLS 1.3, 4 TLS 1.2 AES-GCM, 4 TLS 1.2 AES-CBC), their
secrets sent to its key listener, and their first requests. A is killed with SIGKILL (its workers too, as a
host that fails). B, on the same fabric, starts and never sees a handshake; the requests sent on the same
connections once B is ready are reported by B (at least 95%: the test asks for all), with their path and
status, flagged ``picked_up``. Needs root, iproute2, nginx (with TLS), curl and redis-server; skips otherwise.
"""

from __future__ import annotations

import http.client
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.lab import CIPHERS, HOSTNAME, TAG, Lab, _wait_for
from tests.support.livesensor import LiveSensor, lab_fixture, tls_client
from tests.support.redis import RedisServer
from tlsmirror.shell.fabric.entries import FACTS_PREFIX, FLOW_PREFIX

pytestmark = pytest.mark.slow

GCM = "ECDHE-RSA-AES128-GCM-SHA256"
CBC = "ECDHE-RSA-AES128-SHA256"  # the lab's nginx offers this CBC suite for TLS 1.2 (lab.CIPHERS)
KINDS = (("1.3", None), ("1.2", GCM), ("1.2", CBC))
PER_KIND = 4
BEFORE = 3  # requests per connection while A runs
AFTER = 3  # requests per connection once B is ready


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_fixture(tmp_path_factory, "Fo", 131)


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of the process group *pgid* that are not zombies."""
    alive = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(pid))
    return alive


def _get(conn: http.client.HTTPSConnection, target: str, status: int) -> None:
    conn.request("GET", target)
    r = conn.getresponse()
    r.read()
    assert r.status == status, (target, r.status)


def test_a_standby_takes_over_the_open_connections_of_a_killed_sensor(lab: Lab, tmp_path: Path) -> None:
    assert CBC in CIPHERS and GCM in CIPHERS
    redis = RedisServer(tmp_path / "redis").start()
    keylog = tmp_path / "keys.log"
    a = LiveSensor(lab, "a", redis.url, keys=True)
    sensors = [a]
    conns: list[tuple[str, http.client.HTTPSConnection, int]] = []
    try:
        _wait_for(a.ready, 60, "sensor A ready on the fabric")
        for version, cipher in KINDS:
            for _ in range(PER_KIND):
                conn, port = tls_client(lab, keylog, version=version, cipher=cipher)
                conn.connect = lambda: None  # type: ignore[method-assign]  # never a new connection
                conns.append((f"TLS{version}/{cipher or 'default'}", conn, port))
        a.send_keys(keylog.read_bytes())  # every session's secrets, as the iRule sends them
        for _kind, conn, port in conns:
            for i in range(BEFORE):
                _get(conn, f"/hello.txt?qid={TAG}-a-{port}-{i}", 200)
        n_before = len(conns) * BEFORE
        r = redis.client()
        _wait_for(lambda: a.metric("exported") == n_before and len(r.keys(FACTS_PREFIX + "*")) == len(conns), 60,
                  f"A's {n_before} calls and the facts of its {len(conns)} connections in Redis",
                  lambda: f"(exported {a.metric('exported')}, facts {len(r.keys(FACTS_PREFIX + '*'))})")
        assert len(r.keys(FLOW_PREFIX + "*")) == len(conns)
        a.kill()  # SIGKILL, workers included: nothing is drained, nothing withdrawn
        assert a.proc.returncode == -signal.SIGKILL
        _wait_for(lambda: not _alive_in_group(a.proc.pid), 10, "A's workers to be gone")
        out_a = a.records()  # what A wrote before it was killed: the calls of the handshakes it saw

        b = LiveSensor(lab, "b", redis.url, keys=False)
        sensors.append(b)
        _wait_for(b.ready, 60, "sensor B ready on the fabric")
        assert b.metric("fabric_facts", direction="in") >= len(conns)
        expected: dict[tuple[int, str], str] = {}
        for kind, conn, port in conns:
            for i in range(AFTER):
                missing = i == AFTER - 1  # one 404 per connection: the status is B's, not a constant
                target = f"/{'nope' if missing else 'hello'}.txt?qid={TAG}-b-{port}-{i}"
                _get(conn, target, 404 if missing else 200)
                expected[(port, target)] = kind
        n_after = len(expected)
        _wait_for(lambda: b.metric("exported") >= n_after, 60, f"B's {n_after} calls",
                  lambda: f"(exported {b.metric('exported')})")
        assert b.metric("keys_received") == 0 and b.metric("fabric_secrets", direction="in") > 0
        time.sleep(0.5)
        out_b = b.stop()
    finally:
        for _kind, conn, _port in conns:
            conn.close()
        for s in sensors:
            s.kill()
        redis.stop()
    got: dict[tuple[object, object], dict[str, Any]] = {}
    for rec in out_b:
        client = rec["client"]
        assert isinstance(client, dict)
        got[(client["port"], rec["target"])] = rec
    found = 0
    missed: list[str] = []
    for (port, target), kind in expected.items():
        call = got.get((port, target))
        want_status = 404 if target.startswith("/nope") else 200
        if call is not None and call["status"] == want_status and "picked_up" in call["flags"] \
                and call["path"] == target.split("?")[0]:
            found += 1
        else:
            missed.append(f"{kind} {port} {target}: {call and (call['status'], call['flags'])}")
    assert found >= 0.95 * len(expected), missed
    assert found == len(expected), missed  # in this lab, all of them
    assert not any("-a-" in str(rec["target"]) for rec in out_b)  # B never saw A's requests
    versions = {str(rec["tls"]["version"]) + "/" + str(rec["tls"]["suite"]) for rec in out_b}  # type: ignore[index]
    assert len(versions) == 3, versions
    # the server name (and ALPN, if any) came with the facts: B reports them as A did from the ClientHello
    tls_a = {r["client"]["port"]: r["tls"] for r in out_a}  # type: ignore[index]
    assert len(tls_a) == len(conns) and {t["sni"] for t in tls_a.values()} == {HOSTNAME}  # type: ignore[index]
    assert all(r["tls"] == tls_a[r["client"]["port"]] for r in out_b)  # type: ignore[index]


def _worker_pids(parent: int) -> list[int]:
    """The sensor's worker processes (spawned children; not multiprocessing's resource tracker)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z" and b"spawn_main" in cmdline:
            out.append(int(pid))
    return out


def test_a_restarted_worker_picks_the_open_connections_up_again_from_the_facts(lab: Lab, tmp_path: Path) -> None:
    """One sensor: its worker is killed while connections are open; the new worker never saw their
    handshakes and decrypts their next requests from the facts the parent kept (and its secrets)."""
    redis = RedisServer(tmp_path / "redis").start()
    keylog = tmp_path / "keys.log"
    s = LiveSensor(lab, "r", redis.url, keys=True)
    conns: list[tuple[http.client.HTTPSConnection, int]] = []
    try:
        _wait_for(s.ready, 60, "the sensor ready on the fabric")
        for version, cipher in KINDS:
            conn, port = tls_client(lab, keylog, version=version, cipher=cipher)
            conn.connect = lambda: None  # type: ignore[method-assign]
            conns.append((conn, port))
        s.send_keys(keylog.read_bytes())
        for conn, port in conns:
            _get(conn, f"/hello.txt?qid={TAG}-r-{port}-0", 200)
        _wait_for(lambda: s.metric("exported") == len(conns) and s.metric("fabric_facts", direction="out")
                  == len(conns), 60, "the first calls and the facts published")
        (worker,) = _worker_pids(s.proc.pid)
        os.kill(worker, signal.SIGKILL)
        _wait_for(lambda: s.metric("worker_restarts") == 1 and len(_worker_pids(s.proc.pid)) == 1
                  and s.ready(), 60, "the worker restarted")
        _wait_for(lambda: s.metric("memory_rss_bytes", process="worker0") > 0, 30, "the new worker's stats")
        for conn, port in conns:
            _get(conn, f"/hello.txt?qid={TAG}-r-{port}-1", 200)
        _wait_for(lambda: s.metric("exported") >= 2 * len(conns), 60, "the calls after the restart",
                  lambda: f"(exported {s.metric('exported')})")
        time.sleep(0.5)
        out = s.stop()
    finally:
        for conn, _port in conns:
            conn.close()
        s.kill()
        redis.stop()
    after = [r for r in out if str(r["target"]).endswith("-1")]
    assert sorted(r["client"]["port"] for r in after) == sorted(p for _c, p in conns)  # type: ignore[index]
    assert all(r["status"] == 200 and "picked_up" in r["flags"] for r in after)  # type: ignore[operator]
    # the server name from the facts the parent kept: the TLS object as before the restart
    before = {r["client"]["port"]: r["tls"] for r in out if str(r["target"]).endswith("-0")}  # type: ignore[index]
    assert {r["tls"]["sni"] for r in after} == {HOSTNAME}  # type: ignore[index]
    assert all(r["tls"] == before[r["client"]["port"]] for r in after)  # type: ignore[index]
