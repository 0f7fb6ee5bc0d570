"""The daemon's live inventory: ``tlsmirror run --pcap`` serves /inventory and /inventory.html, and
/inventory is the document ``tlsmirror inventory`` makes of the same traffic (from the capture and from
the daemon's own JSON lines)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.daemon import ENV, KEYLOG, SAMPLE, free_port, scrape, value, wait_for
from tlsmirror.calls import ApiCall
from tlsmirror.inventory.routes import RouteTable
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.shell.daemon.supervisor import load_preload
from tlsmirror.shell.inventory.live import LiveInventory
from tlsmirror.shell.offline.inventory import inventory_main
from tlsmirror.shell.offline.pcapfile import CapturedFrame, read_capture


def _get(port: int, path: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.headers["Content-Type"], r.read()


def _offline(tmp: Path, name: str, **kw: Any) -> dict[str, Any]:
    out = tmp / name
    assert inventory_main(out_dir=str(out), **kw) == 0
    return json.loads((out / "inventory.json").read_text())


def test_running_daemon_serves_the_inventory_tlsmirror_inventory_makes(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    mport = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlsmirror", "run", "--pcap", SAMPLE, "--keylog", KEYLOG, "--workers", "2",
         "-o", str(calls), "--no-keys", "--metrics-port", str(mport), "--pcap-linger", "4"],
        env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: value(scrape(mport), "exchanges", http_version="1.1")
                 + value(scrape(mport), "exchanges", http_version="2") == 60, 60, "the capture's 60 calls")
        wait_for(lambda: json.loads(_get(mport, "/inventory")[1])["calls"] == 60, 30, "/inventory to have them")
        ctype, body = _get(mport, "/inventory")
        live = json.loads(body)
        hctype, page = _get(mport, "/inventory.html")
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert ctype == "application/json" and hctype.startswith("text/html")
    assert b"<table" in page and b"API inventory (live)" in page
    from_capture = _offline(tmp_path, "cap", captures=[SAMPLE], keylogs=[KEYLOG])
    from_calls = _offline(tmp_path, "calls", calls=[str(calls)])
    assert live == from_capture == from_calls  # nothing in the document depends on when it was made
    eps = [e for s in live["services"] for e in s["endpoints"]]
    assert sum(e["count"] for e in eps) == 60 and live["calls"] == 60
    # the records carry the route the engine gave each call
    records = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(records) == 60 and all(r["route"] and r["route"].startswith("/") for r in records)


def _sample_calls() -> list[ApiCall]:
    engine = Engine(EngineConfig(http=True))
    engine.add_secrets(load_preload([KEYLOG]), 0.0)
    calls: list[ApiCall] = []
    for item in read_capture(SAMPLE):
        assert type(item) is CapturedFrame
        calls += [ev for ev in engine.feed_frame(item.linktype, item.data, item.ts) if type(ev) is ApiCall]
    calls += [ev for ev in engine.finish() if type(ev) is ApiCall]
    return calls


def test_live_inventories_merge_into_the_inventory_of_all_calls() -> None:
    calls = _sample_calls()
    whole, parts = LiveInventory(), [LiveInventory(), LiveInventory()]
    for i, c in enumerate(calls):
        whole.export(c)
        parts[i % 2].export(c)
    merged = LiveInventory.merged(parts, RouteTable())
    assert merged.document() == whole.document()
    assert merged.document()["calls"] == 60


def test_state_written_on_close_and_read_back(tmp_path: Path) -> None:
    state = tmp_path / "routes.json"
    inv = LiveInventory(state=str(state))
    for c in _sample_calls():
        inv.export(c)
    inv.close()
    table = RouteTable.from_dict(json.loads(state.read_text()))
    assert table.to_dict() == inv.inventory.routes.to_dict() and table.services
