"""Metrics state, the prometheus collector, /healthz, the status table, and structured logs."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tlsmirror.shell.commands import main
from tlsmirror.shell.daemon.metrics import MetricsServer, MetricsState, make_registry, parse_metrics, status_table
from tlsmirror.shell.logs import scrub, setup_logging
from tlsmirror.tls.events import OUTCOMES


def worker_stats(packets: int, decrypted: int, *, rss: int = 1 << 20, flows: int = 3) -> dict[str, object]:
    return {"packets": packets, "bytes": packets * 100, "kernel_packets": packets, "kernel_drops": 1,
            "result_drops": 0,
            "outcomes": {**dict.fromkeys(OUTCOMES, 0), "decrypted": decrypted, "no_key": 1},
            "held": {"TLS1.3": {"unlocked": 3, "expired": 1}, "TLS1.2": {"evicted": 1}},
            "key_lag": {"TLS1.3": {"0.005": 2, "2.5": 1, "sum": 2.01, "count": 3}},
            "exchanges": {"1.1": decrypted * 2, "2": 1}, "http_issues": 0,
            "engine": {"frames": packets}, "tcp": {"gaps": 2}, "frames": {"non_tcp": 4},
            "keys": {"added": 10, "matched": 3, "expired": 0, "evicted": 0}, "keys_stored": 10,
            "held_bytes": 100, "flows_open": flows, "tcp_buffered": 0, "rss": rss, "last_packet_wall": 50.0,
            "pid": 1}


def test_counters_survive_a_restart_and_gauges_do_not_add_up() -> None:
    st = MetricsState(2)
    st.alive = {0: True, 1: True}
    st.update(0, worker_stats(100, 5))
    st.update(1, worker_stats(50, 2))
    t = st.totals()
    assert t["packets"] == 150 and t["outcomes"]["decrypted"] == 7 and t["flows_open"] == 6
    st.retire(0)  # worker 0 died; its replacement starts from zero
    st.update(0, worker_stats(10, 1, flows=1))
    t = st.totals()
    assert t["packets"] == 160 and t["outcomes"]["decrypted"] == 8
    assert t["flows_open"] == 4  # gauges: live workers only
    assert t["keys_max"]["added"] == 10  # every worker gets every secret: not summed
    assert t["exchanges"] == {"1.1": 16, "2": 3}


def test_collector_output_and_status_table() -> None:
    st = MetricsState(2)
    st.alive = {0: True, 1: True}
    st.update(0, {**worker_stats(100, 5), "outbox": 2, "outbox_bytes": 3000})
    st.update(1, {**worker_stats(50, 2), "outbox": 1, "outbox_bytes": 500})
    st.restarts = 1
    st.counters["export_queue_drops"] = 4
    st.exporters["jsonlexporter"] = lambda: {"exported": 9, "errors": 0}
    from prometheus_client import generate_latest

    text = generate_latest(make_registry(st)).decode()
    m = parse_metrics(text)
    assert m["tlsmirror_packets_total"][()] == 150
    assert m["tlsmirror_tls_connections_total"][(("outcome", "decrypted"),)] == 7
    assert m["tlsmirror_tls_connections_total"][(("outcome", "no_key"),)] == 2
    assert m["tlsmirror_dropped_total"][(("where", "export_queue"),)] == 4
    assert m["tlsmirror_kernel_drops_total"][()] == 2
    assert m["tlsmirror_exporter_total"][(("counter", "exported"), ("exporter", "jsonlexporter"))] == 9
    assert m["tlsmirror_worker_restarts_total"][()] == 1
    assert m["tlsmirror_worker_outbox_messages"][()] == 3 and m["tlsmirror_worker_outbox_bytes"][()] == 3500
    assert (("process", "worker0"),) in m["tlsmirror_memory_rss_bytes"]
    table = status_table(text, {"status": "ok", "reasons": []})
    assert "TLS connections  9: decrypted 7, no_key 2" in table
    assert "2/2 alive, 1 restarts" in table
    assert "HTTP/1.1 14, HTTP/2 2" in table, table
    assert "export_queue 4" in table
    # how each connection's wait for its keys ended, and how long its keys took, per TLS version
    held = m["tlsmirror_tls_held_sessions_total"]
    assert held[(("outcome", "unlocked"), ("tls_version", "TLS1.3"))] == 6
    assert held[(("outcome", "expired"), ("tls_version", "TLS1.3"))] == 2
    assert held[(("outcome", "evicted"), ("tls_version", "TLS1.2"))] == 2
    assert m["tlsmirror_tls_key_lag_seconds_bucket"][(("le", "0.005"), ("tls_version", "TLS1.3"))] == 4
    assert m["tlsmirror_tls_key_lag_seconds_bucket"][(("le", "2.5"), ("tls_version", "TLS1.3"))] == 6
    assert m["tlsmirror_tls_key_lag_seconds_bucket"][(("le", "+Inf"), ("tls_version", "TLS1.3"))] == 6
    assert m["tlsmirror_tls_key_lag_seconds_count"][(("tls_version", "TLS1.3"),)] == 6
    assert "held for keys    unlocked 6, expired 2, evicted 2" in table


def test_capture_mode_counts_the_live_sockets_by_how_they_read() -> None:
    from prometheus_client import generate_latest

    from tlsmirror.shell.doctor.metrics import Scrape, check_drops

    st = MetricsState(2)
    st.update(0, {**worker_stats(100, 5), "capture_mode": ["ring", "ring"]})
    st.update(1, {**worker_stats(50, 2), "capture_mode": ["recv", "ring"]})
    text = generate_latest(make_registry(st)).decode()
    m = parse_metrics(text)
    assert m["tlsmirror_capture_mode"] == {(("mode", "recv"),): 1, (("mode", "ring"),): 3}
    res = check_drops(Scrape(text, None, 0.0), None, 0.0)
    assert "capture recv 1, ring 3" in res.message and res.data["capture_mode"] == {"ring": 3, "recv": 1}
    st.retire(1)  # a mode is a gauge: a dead worker's sockets are gone
    assert parse_metrics(generate_latest(make_registry(st)).decode())["tlsmirror_capture_mode"] == {
        (("mode", "recv"),): 0, (("mode", "ring"),): 2}


def test_health_reasons() -> None:
    st = MetricsState(2, mode="live")
    st.started = 0.0
    st.ready = True
    st.alive = {0: True, 1: False}
    st.update(0, worker_stats(1, 0))
    h = st.health(no_packets_after=30, now=100.0)
    assert h["status"] == "degraded"
    assert "worker down: 1" in h["reasons"]
    assert "no packets for 50 s" in h["reasons"]
    st.alive[1] = True
    assert st.health(no_packets_after=30, now=60.0)["status"] == "ok"


def test_server_and_status_command(capsys: pytest.CaptureFixture[str]) -> None:
    st = MetricsState(1)
    st.ready = True
    st.alive = {0: False}
    st.update(0, worker_stats(7, 1))
    srv = MetricsServer("127.0.0.1", 0, make_registry(st), lambda: st.health(0))
    srv.start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        with urllib.request.urlopen(base + "/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            assert b"tlsmirror_packets_total 7.0" in r.read()
        with urllib.request.urlopen(base + "/healthz") as r:
            h = json.loads(r.read())
        assert h["status"] == "degraded" and h["reasons"] == ["worker down: 0"]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/healthz?strict=1")
        assert err.value.code == 503
        assert main(["status", "--url", base]) == 0
        out = capsys.readouterr().out
        assert "health" in out and "degraded: worker down: 0" in out and "packets" in out
    finally:
        srv.stop()
    assert main(["status", "--url", base]) == 1
    assert "is `tlsmirror run` running" in capsys.readouterr().err


@pytest.fixture
def restore_logger() -> Iterator[None]:
    logger = logging.getLogger("tlsmirror")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_logs_are_structured_scrubbed_and_rate_limited(restore_logger: None) -> None:
    buf = io.StringIO()
    log = setup_logging("info", "json", rate=2.0, stream=buf)
    secret = "ab" * 48
    log.info("got key %s", secret, extra={"worker": 3})
    for i in range(50):
        log.warning("flood %d", i)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines[0]["msg"] == "got key <hex:96>" and lines[0]["worker"] == 3 and lines[0]["level"] == "info"
    assert secret not in buf.getvalue()
    floods = [x for x in lines if x["msg"].startswith("flood")]
    assert 1 <= len(floods) <= 6  # burst of 2 * rate, the rest suppressed
    text = io.StringIO()
    log = setup_logging("warning", "text", stream=text)
    log.info("hidden")
    log.warning("shown %s", "x")
    assert "hidden" not in text.getvalue() and "warning tlsmirror: shown x" in text.getvalue()
    assert scrub("id 0123456789abcdef0123456789abcdef end") == "id <hex:32> end"


def test_fabric_metrics_health_and_status_row() -> None:
    st = MetricsState(1, mode="pcap")
    st.ready = True
    st.alive = {0: True}
    st.update(0, worker_stats(1, 0))
    from prometheus_client import generate_latest

    assert "fabric" not in generate_latest(make_registry(st)).decode()  # no keys.fabric: no families
    fabric = {"secrets_in": 7, "secrets_out": 20, "errors": 3, "bad_entries": 1, "reconnects": 2, "dropped": 0,
              "connected": 0, "pending": 5, "facts_in": 4, "facts_out": 9,
              "resume_in": 6, "resume_out": 8}
    st.fabric = lambda: dict(fabric)
    text = generate_latest(make_registry(st)).decode()
    m = parse_metrics(text)
    assert m["tlsmirror_fabric_secrets_total"] == {(("direction", "in"),): 7, (("direction", "out"),): 20}
    assert m["tlsmirror_fabric_facts_total"] == {(("direction", "in"),): 4, (("direction", "out"),): 9}
    assert m["tlsmirror_fabric_resumption_total"] == {(("direction", "in"),): 6, (("direction", "out"),): 8}
    assert m["tlsmirror_fabric_errors_total"][()] == 3 and m["tlsmirror_fabric_bad_entries_total"][()] == 1
    assert m["tlsmirror_fabric_reconnects_total"][()] == 2 and m["tlsmirror_fabric_pending"][()] == 5
    assert m["tlsmirror_fabric_connected"][()] == 0
    h = st.health(no_packets_after=0)
    assert h["status"] == "degraded" and any("key fabric unreachable" in r for r in h["reasons"])
    assert "key fabric       UNREACHABLE, in 7, out 20, errors 3" in status_table(text)
    fabric["connected"] = 1
    assert st.health(no_packets_after=0)["status"] == "ok"
