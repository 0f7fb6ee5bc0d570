"""`tlsmirror run`: capture files through the daemon path, keys from the listener, signals, worker
restarts, and live capture on a veth pair in a network namespace."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import (
    ENV,
    KEYLOG,
    SAMPLE,
    ListExporter,
    Running,
    config,
    expected_requests,
    free_port,
    rewrite_sample,
    scrape,
    value,
    wait_for,
)
from tlsmirror.shell.daemon.supervisor import Daemon, load_preload


@pytest.fixture
def no_tlsmirror_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in [v for v in os.environ if v.startswith("TLSMIRROR_")]:
        monkeypatch.delenv(var)
    yield


# ---------------------------------------------------------------------------- capture files
def test_run_pcap_cli_exports_every_exchange_once_and_metrics_account(tmp_path: Path) -> None:
    out = tmp_path / "calls.jsonl"
    mport = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlsmirror", "run", "--pcap", SAMPLE, "--keylog", KEYLOG, "--workers", "2",
         "-o", str(out), "--no-keys", "--metrics-port", str(mport), "--pcap-linger", "3"],
        env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        def done() -> bool:
            m = scrape(mport)
            return value(m, "tls_connections", outcome="decrypted") == 12 and \
                value(m, "exchanges", http_version="1.1") + value(m, "exchanges", http_version="2") == 60
        wait_for(done, 30, "metrics to account for the capture")
        m = scrape(mport)
        outcomes = {dict(k)["outcome"]: v for k, v in m["tlsmirror_tls_connections_total"].items()}
        assert sum(outcomes.values()) == 12 == outcomes["decrypted"]
        assert value(m, "packets") == 333
        assert value(m, "workers_alive") == 2 and value(m, "worker_restarts") == 0
        assert value(m, "keys_preloaded") == 20
        assert value(m, "dropped", where="export_queue") == 0
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    got = [(r["client"]["port"], round(r["request_start_ts"], 6)) for r in records]
    assert len(got) == 60 and set(got) == expected_requests()
    assert len({r["connection_id"] for r in records}) == 12  # unique over the two workers
    assert "TLS connections: decrypted 12" in err


def test_keys_from_the_listener_unlock_held_records(tmp_path: Path) -> None:
    pytest.importorskip("tlsmirror.shell.keylistener.server")
    pcap = rewrite_sample(tmp_path / "open.pcap", stretch=10.0, drop_fin=True)  # 0.4 s, flows stay open
    cfg = config(**{"capture.pcap": pcap, "capture.pcap_speed": 1, "capture.pcap_linger": 2.5,
                    "keys.enabled": True, "keys.port": 0, "keys.host": "127.0.0.1",
                    "keys.state_dir": str(tmp_path / "state")})
    ex = ListExporter()
    d = Daemon(cfg, exporters=[ex])
    run = Running(d)
    assert d.wait_ready(30)
    time.sleep(1.0)  # the whole capture has been seen, without secrets
    assert ex.calls == []
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    assert d.key_port
    with socket.create_connection(("127.0.0.1", d.key_port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="sensor") as s:
        s.sendall(Path(KEYLOG).read_bytes())
    run.join(40)
    t = d.state.totals()
    assert len(ex.calls) == 60
    assert t["outcomes"]["decrypted"] == 12 and sum(t["held"]["TLS1.2"].values()) + sum(
        t["held"]["TLS1.3"].values()) == 12 == t["held"]["TLS1.2"]["unlocked"] + t["held"]["TLS1.3"]["unlocked"]
    assert d.state.counters["secrets_received"] == 20
    assert ex.closed


def test_sigterm_drains_and_sighup_reopens(tmp_path: Path) -> None:
    pcap = rewrite_sample(tmp_path / "open.pcap", drop_fin=True)
    out = tmp_path / "calls.jsonl"
    mport = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlsmirror", "run", "--pcap", pcap, "--keylog", KEYLOG, "--workers", "2",
         "-o", str(out), "--no-keys", "--metrics-port", str(mport), "--pcap-linger", "120"],
        env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: value(scrape(mport), "exported") == 60, 30, "60 exported calls")
        m = scrape(mport)
        assert sum(m["tlsmirror_tls_connections_total"].values()) == 0  # no FIN: nothing finished yet
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 60, 10, "calls in the file")
        os.rename(out, tmp_path / "calls.jsonl.1")
        proc.send_signal(signal.SIGHUP)
        wait_for(out.exists, 10, "the output file to be reopened")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopping (signal)" in err
    assert "TLS connections: decrypted 12" in err  # engine.finish() ran in every worker
    assert len((tmp_path / "calls.jsonl.1").read_text().splitlines()) == 60


def test_killed_worker_is_restarted_and_counted(tmp_path: Path) -> None:
    cfg = config(**{"capture.pcap": SAMPLE, "capture.pcap_linger": 60})
    ex = ListExporter()
    d = Daemon(cfg, exporters=[ex], preload=load_preload([KEYLOG]))
    run = Running(d)
    try:
        assert d.wait_ready(30)
        wait_for(lambda: len(ex.calls) == 60, 20, "the capture to be processed")
        victim = d.handles[0].proc.pid
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: d.state.restarts == 1 and d.handles[0].ready and d.handles[0].proc.pid != victim,
                 20, "the worker to be restarted")
        assert d.metrics_port is not None
        m = scrape(d.metrics_port)
        assert value(m, "worker_restarts") == 1
        assert value(m, "workers_alive") == 2
        assert value(m, "packets") >= 333  # the dead worker's counters are kept
        with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/healthz", timeout=5) as r:
            assert json.loads(r.read())["workers_alive"] == 2
    finally:
        d.request_stop()
        run.join(30)
    assert d.state.crashes == 1


def test_export_queue_overflow_is_counted_not_grown() -> None:
    cfg = config(**{"capture.pcap": SAMPLE, "output.queue_size": 5})
    d = Daemon(cfg, exporters=[ListExporter()])  # not started: nothing drains the export queue
    d.lossless = False  # the live policy: never wait for exporters
    d._export([object()] * 20)  # type: ignore[list-item]
    assert d._export_q.qsize() == 5
    assert d.state.counters["export_queue_drops"] == 15


# ---------------------------------------------------------------------------- live capture
def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


SERVER = r"""
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[3], 8443))
srv.listen()
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    try:
        with ctx.wrap_socket(c, server_side=True) as s:
            req = s.recv(65536)
            body = b'{"path": "' + req.split(b" ")[1] + b'"}'
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body)
            s.recv(100)
    except OSError:
        pass
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tcpdump") is None,
                    reason="needs root, iproute2 and tcpdump")
@pytest.mark.parametrize("own", [False, True], ids=["parent-exporter", "worker-exporters"])
def test_live_capture_on_a_veth_pair(tmp_path: Path, own: bool) -> None:
    pytest.importorskip("tlsmirror.shell.keylistener.server")
    from tests.support.tlspair import _make_cert

    tag = f"{os.getpid() % 100000}"
    ns, host_if, ns_if = f"tlsm{tag}", f"tmh{tag}", f"tmn{tag}"
    host_ip, ns_ip = "198.18.77.1", "198.18.77.2"
    cert, key = _make_cert("ec")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server = None
    d = None
    run = None
    try:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _sh("ip", "link", "set", ns_if, "netns", ns)
        _sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _sh("ip", "-n", ns, "link", "set", ns_if, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER,
                                   str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), ns_ip],
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"

        out = tmp_path / "calls.jsonl"  # own: the workers write it and send inventory parts, no call
        cfg = config(**{"capture.interfaces": [host_if], "keys.enabled": True, "keys.port": 0,
                        "keys.host": "127.0.0.1", "keys.state_dir": str(tmp_path / "state"),
                        **({"output.jsonl": str(out), "metrics.stats_interval": 0.5} if own else {})})
        ex = ListExporter()
        d = Daemon(cfg, exporters=None if own else [ex])
        run = Running(d)
        assert d.wait_ready(30)
        keylog = tmp_path / "client.keys"
        cctx = ssl.create_default_context()
        cctx.check_hostname = False
        cctx.verify_mode = ssl.CERT_NONE
        cctx.keylog_filename = str(keylog)
        kctx = ssl.create_default_context()
        kctx.check_hostname = False
        kctx.verify_mode = ssl.CERT_NONE
        sent = 0
        for i in range(3):
            with socket.create_connection((ns_ip, 8443), timeout=5) as raw, \
                    cctx.wrap_socket(raw, server_hostname="api.example.test") as s:
                lines = keylog.read_bytes()
                assert d.key_port
                with socket.create_connection(("127.0.0.1", d.key_port), timeout=5) as kraw, \
                        kctx.wrap_socket(kraw, server_hostname="sensor") as ks:
                    ks.sendall(lines[sent:])  # this session's secrets, as the load balancer would
                sent = len(lines)
                s.sendall(f"GET /live/{i} HTTP/1.1\r\nHost: api.example.test\r\n\r\n".encode())
                assert b"200 OK" in s.recv(65536)
                time.sleep(0.2)
        if own:
            inv = d.inventory
            assert inv is not None
            wait_for(lambda: inv.document()["calls"] == 3, 15, "the workers' inventory parts")
            records = [json.loads(x) for x in out.read_text().splitlines()]
            assert sorted(r["path"] for r in records) == ["/live/0", "/live/1", "/live/2"]
            assert {r["server"]["ip"] for r in records} == {ns_ip}
            eps = [e for sv in inv.document()["services"] for e in sv["endpoints"]]
            assert sum(e["count"] for e in eps) == 3
        else:
            wait_for(lambda: len(ex.calls) == 3 and d is not None and
                     d.state.totals().get("outcomes", {}).get("decrypted", 0) == 3, 15, "decrypted live calls")
            assert sorted(c.exchange.path or "" for c in ex.calls) == ["/live/0", "/live/1", "/live/2"]
            assert {c.connection.server_ip for c in ex.calls} == {ns_ip}
            assert all(c.exchange.status == 200 for c in ex.calls)
        t = d.state.totals()
        assert t["kernel_drops"] == 0 and t["packets"] > 0
    finally:
        if d is not None and run is not None:
            d.request_stop()
            run.join(30)
        if server is not None:  # `ip netns exec` forks: end its whole process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for _ in range(50):  # the namespace (and the veth in it) goes when its last process has gone
            if not Path(f"/sys/class/net/{host_if}").exists():
                break
            time.sleep(0.1)


def test_outbox_ring_size_comes_from_the_config() -> None:
    cfg = config(**{"capture.pcap": SAMPLE})
    assert Daemon(cfg, exporters=[ListExporter()])._spec(0).outbox_bytes == 2 << 20  # a file: small
    cfg = config(**{"capture.pcap": SAMPLE, "capture.outbox_bytes": 8 << 20})
    assert Daemon(cfg, exporters=[ListExporter()])._spec(0).outbox_bytes == 8 << 20
