"""The workers own the exporters: no API call passes through the parent; killed workers lose no count and
repeat no record; SIGTERM with the collector down ends within the drain timeout, the spans in the spool;
spans a full spool drops are in tlsmirror_dropped_total."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import (
    ENV,
    KEYLOG,
    SAMPLE,
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


def _requests_in(pcap: str) -> set[tuple[int, float]]:
    """(client port, request time) of every exchange of *pcap*, from one engine."""
    from tlsmirror.calls import ApiCall
    from tlsmirror.pipeline import Engine, EngineConfig
    from tlsmirror.shell.offline.pcapfile import CapturedFrame, read_capture

    e = Engine(EngineConfig(http=True))
    e.add_secrets(load_preload([KEYLOG]), 0.0)
    out = set()
    for item in read_capture(pcap):
        assert type(item) is CapturedFrame
        for ev in e.feed_frame(item.linktype, item.data, item.ts):
            if type(ev) is ApiCall:
                out.add((ev.connection.client_port, round(ev.exchange.request_ts or 0.0, 6)))
    return out


def _offline_inventory(tmp: Path, pcap: str) -> dict[str, Any]:
    """``tlsmirror inventory`` of *pcap* (one process)."""
    from tlsmirror.shell.offline.inventory import inventory_main

    assert inventory_main(captures=[pcap], keylogs=[KEYLOG], out_dir=str(tmp / "inv")) == 0
    return dict(json.loads((tmp / "inv" / "inventory.json").read_text()))


def _records(path: Path) -> list[tuple[int, float]]:
    return [(r["client"]["port"], round(r["request_start_ts"], 6))
            for r in map(json.loads, path.read_text().splitlines())]


class NoParentExport(Daemon):
    """Fails the test if an API call reaches the parent."""

    through_parent = 0

    def _export(self, calls: list[Any]) -> None:
        NoParentExport.through_parent += len(calls)
        super()._export(calls)


def test_workers_write_the_one_output_file_and_no_call_reaches_the_parent(tmp_path: Path) -> None:
    out = tmp_path / "calls.jsonl"
    # the default configuration: the live inventory is on (the workers send it their parts, not calls)
    d = NoParentExport(config(**{"capture.pcap": SAMPLE, "output.jsonl": str(out)}),
                       preload=load_preload([KEYLOG]))
    Running(d).join(60)
    assert NoParentExport.through_parent == 0 and d.exporters == []
    assert d.inventory is not None and d.inventory.document()["calls"] == 60
    got = _records(out)
    assert len(got) == 60 and set(got) == expected_requests()
    t = d.state.totals()
    assert t["packets"] == 333 and t["outcomes"]["decrypted"] == 12
    assert d.state.exported(t) == 60
    assert t["exporters"]["sharedjsonlexporter"]["exported"] == 60  # summed over the two workers


def test_killed_workers_lose_no_count_and_repeat_no_record(tmp_path: Path) -> None:
    pcap = rewrite_sample(tmp_path / "slow.pcap", stretch=150.0)  # about 6 s at speed 1
    out = tmp_path / "calls.jsonl"
    cfg = config(**{"capture.pcap": pcap, "capture.pcap_speed": 1, "output.jsonl": str(out),
                    "metrics.stats_interval": 0.5})
    d = Daemon(cfg, preload=load_preload([KEYLOG]))
    run = Running(d)
    try:
        assert d.wait_ready(30)
        kills = 0
        for victim in (0, 1, 0, 1):  # one kill every ~1.2 s, alternating, while the file plays
            time.sleep(1.2)
            wait_for(lambda v=victim: d.handles[v].ready and d.handles[v].proc.is_alive(), 20,  # type: ignore[misc]
                     "the worker to be running")
            os.kill(d.handles[victim].proc.pid, signal.SIGKILL)
            kills += 1
    finally:
        run.join(90)
    assert d.state.restarts == kills == 4 and d.state.crashes == 4
    t = d.state.totals()
    assert t["packets"] == 333  # the file's frames, each counted once
    assert t["outcomes"] == {**{k: 0 for k in t["outcomes"]}, "decrypted": 12}
    assert sum(t["exchanges"].values()) == 60 == d.state.exported(t)
    got = _records(out)
    assert set(got) == _requests_in(pcap) and len(got) == 60  # every call once
    assert len({json.loads(x)["connection_id"] for x in out.read_text().splitlines()}) == 12
    # the live inventory took in each killed worker's parts up to the positions it had reported
    assert d.inventory is not None
    assert d.inventory.document() == _offline_inventory(tmp_path, pcap)


def _otlp_run(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], int, Path]:
    pcap = rewrite_sample(tmp_path / "open.pcap", drop_fin=True)
    mport = free_port()
    spool = tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlsmirror", "run", "--pcap", pcap, "--keylog", KEYLOG, "--workers", "2",
         "--no-keys", "--metrics-port", str(mport), "--pcap-linger", "120",
         "--set", f"otlp.endpoint=http://127.0.0.1:{free_port()}/v1/traces", "--set", "otlp.protocol=http",
         "--set", f"otlp.spool_dir={spool}", "--set", "otlp.batch_timeout=0.1", *extra],
        env=ENV, stderr=subprocess.PIPE, text=True)
    return proc, mport, spool


def test_sigterm_with_the_collector_down_ends_within_the_drain_timeout_and_keeps_the_spans(
        tmp_path: Path) -> None:
    from tlsmirror.shell.export.spool import DiskSpool

    proc, mport, spool = _otlp_run(tmp_path, "--set", "output.drain_timeout=3")  # otlp.flush_timeout: 60
    try:
        wait_for(lambda: value(scrape(mport), "exported") == 60, 60, "60 calls handed to the exporters")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert took < 3 + 5, took
    assert "TLS connections: decrypted 12" in err
    kept = 0
    for w in (0, 1):
        s = DiskSpool(str(spool / f"worker{w}"))
        kept += s.spans
        s.close()
    assert kept == 60  # every span waits in the workers' spools for the next start


def test_spans_a_full_spool_drops_are_in_dropped_total(tmp_path: Path) -> None:
    proc, mport, _spool = _otlp_run(tmp_path, "--set", "otlp.spool_max_bytes=1", "--set", "otlp.batch_size=4",
                                    "--set", "output.drain_timeout=2")
    try:
        def dropped() -> bool:
            m = scrape(mport)
            return value(m, "dropped", where="exporter") >= 40
        wait_for(dropped, 60, "spans dropped by the full spools")
        m = scrape(mport)
        per_exporter = sum(v for k, v in m["tlsmirror_exporter_total"].items() if dict(k)["counter"] == "dropped")
        assert value(m, "dropped", where="exporter") == per_exporter
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_keys_stored_is_one_copy_not_the_sum_over_workers() -> None:
    d = Daemon(config(**{"capture.pcap": SAMPLE, "output.jsonl": os.devnull}), preload=load_preload([KEYLOG]))
    Running(d).join(60)
    t = d.state.totals()
    assert t["keys_stored"] == 20  # each of the two workers holds the 20 preloaded secrets


def test_the_unit_lets_the_drain_finish_before_systemd_kills() -> None:
    from tests.support.paths import REPO
    from tlsmirror.shell.config import OutputConfig

    unit = (REPO / "packaging" / "tlsmirror.service").read_text()
    stop = [int(line.split("=", 1)[1]) for line in unit.splitlines() if line.startswith("TimeoutStopSec=")]
    assert stop and stop[0] >= OutputConfig().drain_timeout + 10
