"""The key race live, in a network-namespace lab: real nginx, real CPython clients (TLS 1.2 and 1.3,
AES-GCM, ChaCha20-Poly1305, AES-CBC), ``tlsmirror run`` capturing the veth, and every key log line sent on
its own TLS connection to the key listener (as a load-balanced logging channel or a key relay delivers
them), a third of them 3 s late. Every API call comes out whole, the very first connection included.

Needs root, nginx and network namespaces; skips otherwise.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.lab import HOSTNAME, DaemonProc, Lab, _by, _scrape, _value, _wait_for, _why_skip
from tlsmirror.shell.keylistener.sender import client_context, group_sessions, send_session

pytestmark = pytest.mark.slow

CONNS = 60
REQUESTS = 10
LATE = 3.0
SUITES = [  # (maximum version, TLS 1.2 cipher)
    (ssl.TLSVersion.TLSv1_3, None),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-CHACHA20-POLY1305"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA256"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Any:
    why = _why_skip()
    if why:
        pytest.skip(why)
    pid = os.getpid()
    x = (pid + 101) % 250 + 2
    lab = Lab(ns=f"tmKR{pid}", host_if=f"tk{pid}h", ns_if=f"tk{pid}n", host_ip=f"198.18.{x}.1",
              ns_ip=f"198.18.{x}.2", dir=tmp_path_factory.mktemp("key-race-lab"))
    try:
        lab.up()
        lab.start_nginx()
        yield lab
    finally:
        lab.down()


class LineSender:
    """Each key log line on its own TLS connection to the listener; a third of them ``LATE`` s late."""

    def __init__(self, port: int, seed: int = 11) -> None:
        self.port = port
        self.ctx = client_context(insecure=True)
        self.rnd = random.Random(seed)
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(4)
        self.late: list[tuple[float, str]] = []
        self.sent = self.sent_late = 0

    def send(self, line: str) -> None:
        (session,) = group_sessions([line])
        send_session("127.0.0.1", self.port, session, self.ctx)
        with self.lock:
            self.sent += 1

    def offer(self, lines: list[str]) -> None:
        for line in lines:
            with self.lock:
                late = self.rnd.random() < 1 / 3
                if late:
                    self.late.append((time.monotonic() + LATE, line))
            if not late:
                self.pool.submit(self.send, line)

    def finish(self) -> None:
        for due, line in sorted(self.late):
            time.sleep(max(0.0, due - time.monotonic()))
            self.send(line)
            self.sent_late += 1
        self.pool.shutdown(wait=True)


def _connection(lab: Lab, n: int, keys: LineSender) -> list[tuple[str, int, bytes]]:
    top, cipher = SUITES[n % len(SUITES)]
    keylog = lab.dir / f"keys-{n}.log"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = top
    if cipher:
        ctx.set_ciphers(cipher)
    ctx.keylog_filename = str(keylog)
    conn = http.client.HTTPSConnection(lab.ns_ip, 443, context=ctx, timeout=10)
    conn.connect()
    keys.offer([line for line in keylog.read_text().splitlines() if line and not line.startswith("#")])
    got = []
    for i in range(REQUESTS):
        qid = f"{n}-{i}"
        conn.request("GET", f"/submit?qid={qid}", headers={"Host": HOSTNAME})
        r = conn.getresponse()
        got.append((qid, r.status, r.read()))
    conn.close()
    return got


def test_every_call_whatever_order_the_key_lines_come_in(lab: Lab) -> None:
    daemon = DaemonProc(lab)
    try:
        daemon.wait_ready(30)
        keys = LineSender(daemon.key_port)
        served: list[tuple[str, int, bytes]] = []
        served += _connection(lab, 0, keys)  # the first connection of the run, right after ready
        with ThreadPoolExecutor(6) as pool:
            for batch in pool.map(lambda n: _connection(lab, n, keys), range(1, CONNS)):
                served += batch
        keys.finish()
        assert len(served) == CONNS * REQUESTS and all(status == 201 for _, status, _ in served)
        assert keys.sent_late > 0 and keys.sent == sum(
            1 for n in range(CONNS) for line in (lab.dir / f"keys-{n}.log").read_text().splitlines()
            if line and not line.startswith("#"))
        port = daemon.metrics_port

        def accounted() -> bool:
            m = _scrape(port)
            return sum(_by(m, "tls_connections", "outcome").values()) >= CONNS and \
                _value(m, "exported") >= CONNS * REQUESTS

        _wait_for(accounted, 30, "every connection and call to be reported",
                  lambda: f"{_by(_scrape(port), 'tls_connections', 'outcome')}; {daemon.log()[-1500:]}")
        metrics = _scrape(port)
        rc, _ = daemon.stop()
    finally:
        daemon.kill()
    assert rc == 0
    records = [json.loads(line) for line in daemon.out.read_text().splitlines()]
    complete: dict[str, dict[str, Any]] = {}
    for rec in records:
        qid = dict((k, v) for k, v in rec["query"]).get("qid")
        body = rec["response"]["body"]
        if rec["flags"] == [] and rec["status"] == 201 and body and qid and f'"qid":"{qid}"' in body["text"]:
            complete[qid] = rec
    want = {qid for qid, _, _ in served}
    assert len(complete) == len(want) == CONNS * REQUESTS, sorted(want - set(complete))[:20]
    assert len(records) == CONNS * REQUESTS  # each once
    assert {k: v for k, v in _by(metrics, "tls_connections", "outcome").items() if v} == {"decrypted": CONNS}
    held = metrics.get("tlsmirror_tls_held_sessions_total", {})
    assert not any(v for k, v in held.items() if dict(k)["outcome"] != "unlocked"), held
    versions = {rec["tls"]["version"] for rec in complete.values()}
    assert versions == {"TLS1.2", "TLS1.3"}
