"""`tlsmirror doctor` against a real sensor (the Daemon on the sample capture, its key listener, metrics
and an OTLP exporter to a real receiver), then with parts missing; interfaces on a veth pair (root);
the drop/exporter/memory analysis on metrics text from the real registry."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from tests.support.otlp_receiver import GrpcReceiver, HttpReceiver
from tests.support.paths import REPO
from tests.support.pcapwriter import ethernet, ipv4, tcp, udp, vxlan
from tlsmirror.shell.commands import main
from tlsmirror.shell.config import load_config
from tlsmirror.shell.daemon.metrics import MetricsState, make_registry
from tlsmirror.shell.daemon.supervisor import Daemon, load_preload
from tlsmirror.shell.doctor.exporter import check_exporter
from tlsmirror.shell.doctor.metrics import Scrape, check_drops, check_memory
from tlsmirror.shell.doctor.mirror import (
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PacketSample,
    check_interface,
    check_mirror,
    read_interface,
    sample_interface,
)
from tlsmirror.shell.doctor.result import FAIL, OK, SKIP, WARN, DoctorOptions, Result, exit_code, render_text
from tlsmirror.shell.doctor.run import run_doctor

ROOT = REPO
SAMPLE = str(ROOT / "samples" / "api-mixed.pcap")
KEYLOG = str(ROOT / "samples" / "api-mixed.keylog")
TOKEN = "doctor-test-token-5f3a"
ROOT_AND_IP = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            if cond():
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class TokenReceiver(GrpcReceiver):
    """An OTLP/gRPC receiver that answers UNAUTHENTICATED unless the agent token header is right."""

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        headers = {k.lower(): v for k, v in context.invocation_metadata()}
        if headers.get("x-traceable-refresh-token") != TOKEN:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid agent token")
        return super()._export(request, context)


def by_check(results: list[Result]) -> dict[str, Result]:
    return {r.check: r for r in results}


def write_config(path: Path, body: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(body))
    return str(path)


class Sensor:
    """A Daemon in a thread, configured from a YAML file like `tlsmirror run --config`."""

    def __init__(self, config_path: str, preload: bool) -> None:
        self.cfg = load_config(config_path, env={})
        self.daemon = Daemon(self.cfg, preload=load_preload([KEYLOG]) if preload else None)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as exc:
            self.error = exc

    def outcomes(self) -> dict[str, int]:
        return dict(self.daemon.state.totals().get("outcomes", {}))

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(30)


def base_config(tmp: Path, receiver_port: int, **extra: Any) -> dict[str, Any]:
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    cfg: dict[str, Any] = {
        "capture": {"pcap": SAMPLE, "pcap_linger": 120, "workers": 1},
        "keys": {"host": "127.0.0.1", "port": free_port(), "state_dir": str(tmp / "state")},
        "metrics": {"port": free_port()},
        "output": {"jsonl": str(tmp / "calls.jsonl"), "drain_timeout": 5},
        "otlp": {"endpoint": f"127.0.0.1:{receiver_port}", "token_file": str(token_file), "batch_timeout": 0.1},
        "log": {"level": "error"},
    }
    for dotted, value in extra.items():
        sec, _, key = dotted.partition("__")
        cfg[sec][key] = value
    return cfg


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Sensor, TokenReceiver]]:
    """A sensor that decrypted the whole sample, got its secrets from the key listener and exported
    every call over OTLP to a receiver that checks the token."""
    tmp = tmp_path_factory.mktemp("healthy")
    receiver = TokenReceiver()
    receiver.start()
    path = write_config(tmp / "config.yaml", base_config(tmp, receiver.port))
    sensor = Sensor(path, preload=True)
    try:
        assert sensor.daemon.wait_ready(30), sensor.error
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", sensor.cfg.keys.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="sensor") as s:
            s.sendall(Path(KEYLOG).read_bytes())
        wait_for(lambda: sensor.daemon.state.counters["secrets_received"] == 20, 10, "20 secrets received")
        wait_for(lambda: sensor.outcomes().get("decrypted", 0) == 12, 20, "12 decrypted connections")
        assert receiver.wait_spans(60, 20), "60 spans at the receiver"
        yield path, sensor, receiver
    finally:
        sensor.stop()
        receiver.stop()


# ---------------------------------------------------------------------------- a healthy sensor
def test_healthy_sensor_gives_ok_lines_and_exit_0(healthy: tuple[str, Sensor, TokenReceiver]) -> None:
    path, sensor, _ = healthy
    probes_before = sensor.daemon.keyserver.stats["probes"]
    t0 = time.monotonic()
    results = run_doctor(DoctorOptions(config=path, wait=0.5, env={}))
    assert time.monotonic() - t0 < 8
    r = by_check(results)
    text = render_text(results)
    assert r["config"].status == OK and path in r["config"].message
    if not os.path.isdir("/run/systemd/system"):
        assert r["service"].status == SKIP and "systemd is not running" in r["service"].message
    assert r["metrics"].status == OK, text
    assert ": ok, 1/1 workers" in r["metrics"].message
    assert r["capture"].status == SKIP and "capture file" in r["capture"].message
    assert r["key listener"].status == OK, text
    assert "accepts TLS (TLSv1.3)" in r["key listener"].message and "certificate valid" in r["key listener"].message
    assert r["keys"].status == OK, text
    assert r["keys"].message.startswith("20 secrets received (+0 in ")
    assert r["match rate"].status == OK and "12 of 12 TLS connections" in r["match rate"].message
    assert "(100%)" in r["match rate"].message
    assert r["TLS outcomes"].status == OK and "decrypted 12" in r["TLS outcomes"].message
    assert r["exporter"].status == OK, text
    assert "an empty export was accepted (token sent)" in r["exporter"].message
    assert "exported 60" in r["exporter"].message
    assert r["drops"].status == OK and "internal 0 of 60 API calls" in r["drops"].message
    assert r["memory"].status == OK and "resident in 2 processes" in r["memory"].message
    assert exit_code(results) == 0
    # the handshake was a probe for the listener, not a failure
    wait_for(lambda: sensor.daemon.keyserver.stats["probes"] == probes_before + 1, 5, "the probe counted")
    assert sensor.daemon.keyserver.stats["tls_failed"] == 0
    assert TOKEN not in text


def test_cli_json_and_text(healthy: tuple[str, Sensor, TokenReceiver], capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = healthy
    for var in [v for v in os.environ if v.startswith("TLSMIRROR_")]:
        monkeypatch.delenv(var)
    assert main(["doctor", "--config", path, "--json", "--wait", "0.3"]) == 0
    out = capsys.readouterr().out
    assert TOKEN not in out
    doc = json.loads(out)
    assert doc["exit_code"] == 0 and doc["status"] in (OK, WARN)
    checks = {c["check"]: c for c in doc["checks"]}
    assert checks["match rate"]["status"] == OK and checks["match rate"]["data"]["ratio"] == 1.0
    assert checks["keys"]["data"]["received"] == 20
    assert set(checks["exporter"]) == {"check", "status", "message", "advice", "data"}
    assert main(["doctor", "--config", path, "--wait", "0"]) == 0
    text = capsys.readouterr().out
    assert any(line.startswith("OK    metrics ") for line in text.splitlines())
    assert text.splitlines()[-1].startswith(tuple("0123456789"))


def test_missing_listener_closed_collector_and_bad_interface_fail_with_advice(
        healthy: tuple[str, Sensor, TokenReceiver], tmp_path: Path) -> None:
    path, _, _ = healthy
    body = yaml.safe_load(Path(path).read_text())
    body["keys"]["port"] = free_port()  # nothing listens there
    body["otlp"]["endpoint"] = f"127.0.0.1:{free_port()}"  # a collector that is not running
    other = write_config(tmp_path / "broken.yaml", body)
    t0 = time.monotonic()
    results = run_doctor(DoctorOptions(config=other, wait=0.3, env={}, interfaces=["tlsmnope0"]))
    assert time.monotonic() - t0 < 8
    r = by_check(results)
    assert r["key listener"].status == FAIL and "nothing listens on 127.0.0.1:" in r["key listener"].message
    assert any("--no-keys" in a for a in r["key listener"].advice)
    assert r["exporter"].status == FAIL and "connection refused" in r["exporter"].message
    assert any("4317" in a for a in r["exporter"].advice)
    assert r["interface tlsmnope0"].status == FAIL and "does not exist" in r["interface tlsmnope0"].message
    assert any("ip link" in a for a in r["interface tlsmnope0"].advice)
    assert r["mirror tlsmnope0"].status == SKIP
    assert r["metrics"].status == OK  # the sensor itself still answers
    assert exit_code(results) == 1
    assert all(r.advice for r in results if r.status in (WARN, FAIL))  # every problem says what to do
    text = render_text(results)
    assert "FAIL  key listener" in text and "-> " in text


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_rejected_or_missing_token(healthy: tuple[str, Sensor, TokenReceiver], tmp_path: Path,
                                   token: str | None) -> None:
    path, _, _ = healthy
    body = yaml.safe_load(Path(path).read_text())
    if token is None:
        del body["otlp"]["token_file"]
    else:
        (tmp_path / "token").write_text(token)
        body["otlp"]["token_file"] = str(tmp_path / "token")
    results = run_doctor(DoctorOptions(config=write_config(tmp_path / "c.yaml", body), wait=0, env={}))
    ex = by_check(results)["exporter"]
    assert ex.status == FAIL
    if token is None:
        assert "authentication required (UNAUTHENTICATED) and no token was sent" in ex.message
    else:
        assert "token rejected (UNAUTHENTICATED)" in ex.message
        assert any("otlp.token_file" in a for a in ex.advice)
        assert token not in render_text(results)
    assert exit_code(results) == 1


def test_otlp_http_receiver_and_sensor_down(tmp_path: Path) -> None:
    """No sensor at all: metrics FAIL, counter checks SKIP; the OTLP/HTTP probe still runs. Fast."""
    rx = HttpReceiver()
    rx.start()
    try:
        body = base_config(tmp_path, rx.port)
        body["otlp"] = {"endpoint": rx.endpoint, "protocol": "http"}
        path = write_config(tmp_path / "c.yaml", body)
        t0 = time.monotonic()
        results = run_doctor(DoctorOptions(config=path, wait=0.2, env={}))
        assert time.monotonic() - t0 < 5
    finally:
        rx.stop()
    r = by_check(results)
    assert r["metrics"].status == FAIL and "does not answer" in r["metrics"].message
    assert any("systemctl status tlsmirror" in a for a in r["metrics"].advice)
    assert r["key listener"].status == FAIL
    for name in ("keys", "match rate", "TLS outcomes", "drops", "memory"):
        assert r[name].status == SKIP and "metrics" in r[name].message
    assert r["exporter"].status == OK and "OTLP/http" in r["exporter"].message
    assert "accepted" in r["exporter"].message
    assert exit_code(results) == 1


def test_no_secrets_gives_match_rate_warning(tmp_path: Path) -> None:
    with GrpcReceiver() as receiver:
        body = base_config(tmp_path, receiver.port)
        body["engine"] = {"key_wait": 0.5}  # held records give up on their secrets quickly
        del body["otlp"]["token_file"]
        path = write_config(tmp_path / "c.yaml", body)
        sensor = Sensor(path, preload=False)
        try:
            assert sensor.daemon.wait_ready(30), sensor.error
            wait_for(lambda: sensor.outcomes().get("no_key", 0) == 12, 20, "12 no_key connections")
            results = run_doctor(DoctorOptions(config=path, wait=0.3, env={}))
        finally:
            sensor.stop()
    r = by_check(results)
    assert r["match rate"].status == WARN
    assert "0 of 12 TLS connections had their secrets (0%), below 90%" in r["match rate"].message
    assert any("no secrets arrive at all" in a for a in r["match rate"].advice)
    assert any("#keys-arrive-but-do-not-match" in a for a in r["match rate"].advice)
    assert r["keys"].status == WARN and r["keys"].message.startswith("no secrets received since start")
    assert any("attach the iRule" in a for a in r["keys"].advice)
    assert r["exporter"].status == OK  # no token configured, the receiver takes anything
    assert exit_code(results) == 0  # warnings only


# ---------------------------------------------------------------------------- counters from the registry
def scrape_of(state: MetricsState) -> Scrape:
    return Scrape(generate_latest(make_registry(state)).decode(), None, time.monotonic())


def worker_stats(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"packets": 0, "bytes": 0, "kernel_packets": 0, "kernel_drops": 0, "result_drops": 0,
                            "outcomes": {}, "exchanges": {}, "rss": 50 << 20}
    base.update(kw)
    return base


def test_drops_above_a_thousandth_warn_with_tuning_advice() -> None:
    state = MetricsState(2)
    state.ready = True
    state.update(0, worker_stats(packets=99_000, kernel_packets=100_000, kernel_drops=1_000,
                                 exchanges={"1.1": 5_000}))
    state.update(1, worker_stats(packets=100_000, kernel_packets=100_000, exchanges={"2": 5_000}))
    s0 = scrape_of(state)
    state.update(0, worker_stats(packets=99_000, kernel_packets=100_500, kernel_drops=1_500,
                                 exchanges={"1.1": 5_000}, result_drops=40))
    state.counters["export_queue_drops"] = 10
    s1 = scrape_of(state)
    r = check_drops(s0, s1, 2.0)
    assert r.status == WARN
    assert r.message.startswith("kernel 1,500 of 200,500 packets (0.75%)")
    assert "internal 50 of 10,050 API calls (+500 / +50 in 2 s)" in r.message
    assert any("capture.workers" in a and "capture.buffer_bytes" in a for a in r.advice)
    assert any(a.startswith("worker_outbox") for a in r.advice) and any(a.startswith("export_queue")
                                                                         for a in r.advice)
    quiet = MetricsState(1)
    quiet.ready = True
    quiet.update(0, worker_stats(packets=1_000_000, kernel_packets=1_000_000, kernel_drops=999))
    ok = check_drops(scrape_of(quiet), None, 0)
    assert ok.status == OK and "(0.1%)" in ok.message  # 999 of a million: under the threshold


def test_exporter_counters_spool_and_memory(tmp_path: Path) -> None:
    cfg = load_config(None, env={}, flags={"otlp.endpoint": "127.0.0.1:4317",
                                           "otlp.spool_dir": str(tmp_path), "otlp.spool_max_bytes": "100MiB"},
                      use_default_path=False)
    state = MetricsState(1)
    state.ready = True
    state.update(0, worker_stats(rss=40 << 20))
    spool = {"exported": 900, "failed": 0, "dropped": 0, "retries": 3, "spool_bytes": 0}
    state.exporters["otlpexporter"] = lambda: dict(spool)
    s0 = scrape_of(state)
    spool.update(retries=9, spool_bytes=80 << 20, dropped=12)
    s1 = scrape_of(state)
    probe = Result("exporter", OK, "OTLP/grpc 127.0.0.1:4317: an empty export was accepted")
    r = check_exporter(cfg, probe, s0, s1, 2.0)
    assert r.status == WARN
    assert "spool 80.0 MiB of 100.0 MiB" in r.message and "80% full" in r.message
    assert "otlpexporter: 12 dropped" in r.message and "retrying now (6 retries in 2 s)" in r.message
    assert any("#spool-filling" in a for a in r.advice)
    assert probe.advice == []  # the probe's result is not changed
    mem = check_memory("http://127.0.0.1:9464", s1, None)
    assert mem.status == OK and "resident in 2 processes" in mem.message and "of the machine's" in mem.message


# ---------------------------------------------------------------------------- packet classification
OWN = {bytes([192, 0, 2, 10])}


def test_packet_sample_classifies_own_mirrored_tunnelled_and_sensor_traffic() -> None:
    s = PacketSample()
    ports = frozenset({8001})
    # the host's own traffic (to 192.0.2.10)
    for i in range(3):
        s.add(1, ethernet(ipv4(tcp(b"a", sport=50000 + i, dport=22), src="198.51.100.1", dst="192.0.2.10")),
              PACKET_HOST, OWN, ports)
    # a key sender to the listener: the sensor's own, not counted
    s.add(1, ethernet(ipv4(tcp(b"k", sport=40000, dport=8001), src="198.51.100.2", dst="192.0.2.10")),
          PACKET_HOST, OWN, ports)
    # mirrored: other hosts, both directions of two flows
    from tlsmirror.frames.decoder import FrameDecoder

    dec = FrameDecoder()
    for port in (41000, 41001):
        for _ in range(2):
            s.add(1, ethernet(ipv4(tcp(b"c", sport=port, dport=443), src="10.1.1.1", dst="10.2.2.2")),
                  PACKET_OTHERHOST, OWN, ports, dec)
            s.add(1, ethernet(ipv4(tcp(b"s", sport=443, dport=port), src="10.2.2.2", dst="10.1.1.1")),
                  PACKET_OTHERHOST, OWN, ports, dec)
    # a VXLAN-delivered mirror to this host
    inner = ethernet(ipv4(tcp(b"t", sport=42000, dport=443), src="10.3.3.3", dst="10.4.4.4"))
    s.add(1, ethernet(ipv4(udp(vxlan(inner), sport=5555, dport=4789), src="198.51.100.9", dst="192.0.2.10",
                           proto=17)), PACKET_HOST, OWN, ports, dec)
    # multicast is not judged
    s.add(1, ethernet(ipv4(udp(b"m", dport=5353), src="10.9.9.9", dst="224.0.0.251", proto=17)),
          PACKET_MULTICAST, OWN, ports)
    d = s.as_dict()
    assert d == {"frames": 14, "counted": 12, "own": 3, "foreign": 8, "tunnel": 1, "other_host": 8,
                 "sensor": 1, "non_ip": 1, "flows_both_ways": 2, "flows_one_way": 0}
    r = check_mirror("eth9", s, 1.0)
    assert r.status == OK and "9 mirrored" in r.message and "1 in VXLAN/GENEVE/GRE tunnels" in r.message


def test_mirror_warnings_own_traffic_and_one_direction() -> None:
    own = PacketSample()
    for i in range(10):
        own.add(1, ethernet(ipv4(tcp(b"x", sport=50000 + i, dport=443), src="192.0.2.10", dst="10.0.0.1")),
                PACKET_HOST, OWN, frozenset())
    r = check_mirror("eth0", own, 2.0)
    assert r.status == WARN and "this looks like the host's own traffic, not a mirror" in r.message
    one = PacketSample()
    from tlsmirror.frames.decoder import FrameDecoder

    dec = FrameDecoder()
    for port in range(41000, 41004):
        for seq in range(3):
            one.add(1, ethernet(ipv4(tcp(b"c", sport=port, dport=443, seq=seq), src="10.1.1.1", dst="10.2.2.2")),
                    PACKET_OTHERHOST, OWN, frozenset(), dec)
    r = check_mirror("eth0", one, 2.0)
    assert r.status == WARN and "all 4 TCP flows sampled show one direction only" in r.message
    assert any("#only-one-direction-mirrored" in a for a in r.advice)
    assert check_mirror("eth0", "sampling packets needs CAP_NET_RAW: run doctor as root (sudo)", 2).status == SKIP


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([1, 101, 113]), st.integers(0, 4))
def test_packet_sample_never_raises_on_random_frames(data: bytes, linktype: int, pkttype: int) -> None:
    from tlsmirror.frames.decoder import FrameDecoder

    s = PacketSample()
    s.add(linktype, data, pkttype, OWN, frozenset({8001}), FrameDecoder())
    assert s.frames == 1 and s.counted + s.non_ip + s.sensor == 1


# ---------------------------------------------------------------------------- interfaces (root)
def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    tag = f"{os.getpid() % 100000}"
    a, b = f"tda{tag}", f"tdb{tag}"
    _sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    try:
        _sh("ip", "link", "set", a, "up")
        _sh("ip", "link", "set", b, "up")
        _sh("ip", "addr", "add", "198.18.99.1/30", "dev", b)
        wait_for(lambda: read_interface(b).operstate == "up", 5, "the veth to come up")
        yield a, b
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)


def inject(iface: str, frames: list[bytes], delay: float = 0.2) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((iface, 0))
            for f in frames:
                s.send(f)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def conversation(both: bool, flows: int = 4) -> list[bytes]:
    out = []
    for i in range(flows):
        for seq in range(3):
            out.append(ethernet(ipv4(tcp(b"q" * 20, sport=40000 + i, dport=443, seq=seq), src="10.1.1.1",
                                     dst="10.2.2.2")))
            if both:
                out.append(ethernet(ipv4(tcp(b"r" * 20, sport=443, dport=40000 + i, seq=seq), src="10.2.2.2",
                                         dst="10.1.1.1")))
    return out


@ROOT_AND_IP
def test_interface_receiving_a_mirror(veth: tuple[str, str]) -> None:
    a, b = veth
    own = {bytes([198, 18, 99, 1])}
    inner = ethernet(ipv4(tcp(b"v", sport=42000, dport=443), src="10.3.3.3", dst="10.4.4.4"))
    mac = bytes.fromhex(Path(f"/sys/class/net/{b}/address").read_text().strip().replace(":", ""))
    tunnelled = [ethernet(ipv4(udp(vxlan(inner), sport=5555, dport=4789), src="198.18.99.2", dst="198.18.99.1",
                               proto=17), dst=mac)] * 3  # a VXLAN mirror addressed to this host
    before = read_interface(b)
    t = inject(a, conversation(True) + tunnelled)
    sample = sample_interface(b, 1.0, own, frozenset())
    t.join(5)
    after = read_interface(b)
    assert isinstance(sample, PacketSample)
    assert sample.foreign == 24 and sample.tunnel == 3 and sample.own == 0, sample.as_dict()
    assert sample.other_host == 24 and sample.directions() == (4, 1)  # the tunnelled flow: one way
    r = check_mirror(b, sample, 1.0)
    assert r.status == OK and "27 mirrored" in r.message
    ri = check_interface(b, before, after, 1.0, captured=False, s0=None, s1=None)
    assert ri.status == OK and f"{b} up" in ri.message
    assert ri.data["rx_packets"] >= 27

    t = inject(a, conversation(False))
    one = sample_interface(b, 0.8, own, frozenset())
    t.join(5)
    assert isinstance(one, PacketSample)
    r = check_mirror(b, one, 0.8)
    assert r.status == WARN and "one direction only" in r.message


@ROOT_AND_IP
def test_interface_down_quiet_and_doctor_run(veth: tuple[str, str]) -> None:
    a, b = veth
    _sh("ip", "link", "set", b, "down")
    down = read_interface(b)
    r = check_interface(b, down, down, 1.0, captured=True, s0=None, s1=None)
    assert r.status == FAIL and "is down (administratively)" in r.message
    assert any(f"ip link set {b} up" in x for x in r.advice)
    _sh("ip", "link", "set", b, "up")
    wait_for(lambda: read_interface(b).operstate == "up", 5, "the veth to come up")
    quiet = read_interface(b)
    r = check_interface(b, quiet, quiet, 1.0, captured=True, s0=None, s1=None)
    assert r.status == WARN and "0 packets received" in r.message
    assert any("tcpdump" in x for x in r.advice)
    # the whole run on an interface receiving a mirror, without a sensor
    t = inject(a, conversation(True) * 3, delay=0.1)
    results = run_doctor(DoctorOptions(url=f"http://127.0.0.1:{free_port()}", wait=0.8, env={}, interfaces=[b],
                                       config=None))
    t.join(5)
    r2 = by_check(results)
    assert r2[f"interface {b}"].status == OK, render_text(results)
    assert r2[f"mirror {b}"].status == OK and "mirrored" in r2[f"mirror {b}"].message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to sample packets")
def test_loopback_is_the_hosts_own_traffic() -> None:
    from tlsmirror.shell.doctor.mirror import host_addresses

    stop = threading.Event()
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def chatter() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                conn, _ = srv.accept()
                c.sendall(b"hello")
                conn.close()
            time.sleep(0.01)

    t = threading.Thread(target=chatter, daemon=True)
    t.start()
    try:
        sample = sample_interface("lo", 0.6, host_addresses(), frozenset())
    finally:
        stop.set()
        t.join(5)
        srv.close()
    assert isinstance(sample, PacketSample) and sample.counted > 0
    r = check_mirror("lo", sample, 0.6)
    assert r.status == WARN and "not a mirror" in r.message


def test_every_advice_link_has_a_section_in_the_troubleshooting_guide() -> None:
    import re

    source = "".join(f.read_text() for f in sorted((ROOT / "src" / "tlsmirror" / "shell" / "doctor").glob("*.py")))
    anchors = set(re.findall(r'\bsee\("([a-z-]+)"\)', source))
    guide = (ROOT / "docs" / "troubleshooting.md").read_text()
    slugs = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
             for h in re.findall(r"^## (.+)$", guide, flags=re.M)}
    assert len(anchors) >= 10
    assert anchors <= slugs, anchors - slugs


@ROOT_AND_IP
@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump (compiles the capture filter)")
def test_live_sensor_on_a_veth_captures_what_arrives(veth: tuple[str, str], tmp_path: Path) -> None:
    a, b = veth
    body = {"capture": {"interfaces": [b], "workers": 1}, "keys": {"enabled": False},
            "metrics": {"port": free_port(), "stats_interval": 0.2},
            "output": {"jsonl": str(tmp_path / "calls.jsonl")}, "log": {"level": "error"}}
    path = write_config(tmp_path / "c.yaml", body)
    sensor = Sensor(path, preload=False)
    try:
        assert sensor.daemon.wait_ready(30), sensor.error
        stop = threading.Event()

        def stream() -> None:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind((a, 0))
                while not stop.is_set():
                    for f in conversation(True):
                        s.send(f)
                    time.sleep(0.02)

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        try:
            time.sleep(0.3)
            results = run_doctor(DoctorOptions(config=path, wait=1.0, env={}))
        finally:
            stop.set()
            t.join(5)
    finally:
        sensor.stop()
    r = by_check(results)
    text = render_text(results)
    iface = r[f"interface {b}"]
    assert iface.status == OK, text
    assert iface.data["sensor_packets"] > 0 and "sensor captured" in iface.message
    assert r[f"mirror {b}"].status == OK, text
    assert r["key listener"].status == SKIP and r["keys"].status == WARN  # no key source at all
    assert r["drops"].status == OK and r["drops"].data["kernel_packets"] > 0
    assert r["exporter"].status == OK and str(tmp_path / "calls.jsonl") in r["exporter"].message


def test_api_calls_go_where_the_running_sensor_writes_them(tmp_path: Path) -> None:
    cfg = load_config(None, env={}, flags={}, use_default_path=False)  # doctor without the sensor's -o FILE
    state = MetricsState(1)
    state.ready = True
    state.update(0, worker_stats())
    state.output = str(tmp_path / "calls.jsonl")  # `tlsmirror run -o FILE`
    r = check_exporter(cfg, None, scrape_of(state), None, 0)
    assert r.status == OK and r.message.endswith(f"API calls go to {tmp_path / 'calls.jsonl'}")
    state.output = "-"
    assert check_exporter(cfg, None, scrape_of(state), None, 0).message.endswith("API calls go to stdout")
