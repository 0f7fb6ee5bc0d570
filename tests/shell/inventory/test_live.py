"""The daemon's live inventory: ``tlsmirror run --pcap`` serves /inventory and /inventory.html, and
/inventory is the document ``tlsmirror inventory`` makes of the same traffic (from the capture and from
the daemon's own JSON lines)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.daemon import ENV, KEYLOG, SAMPLE, config, free_port, scrape, value, wait_for
from tlsmirror.calls import ApiCall
from tlsmirror.inventory import sensitive
from tlsmirror.inventory.inventory import Inventory
from tlsmirror.inventory.routes import RouteTable
from tlsmirror.inventory.sensitive import SensitiveRules
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.shell.daemon.messages import InventoryPart, WorkerStats
from tlsmirror.shell.daemon.supervisor import Daemon, _Handle, load_preload
from tlsmirror.shell.inventory.live import InventoryFeed, LiveInventory, QuickRules
from tlsmirror.shell.offline.inventory import inventory_main
from tlsmirror.shell.offline.pcapfile import CapturedFrame, read_capture


def _get(port: int, path: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.headers["Content-Type"], r.read()


def _offline(tmp: Path, name: str, **kw: Any) -> dict[str, Any]:
    out = tmp / name
    assert inventory_main(out_dir=str(out), **kw) == 0
    return json.loads((out / "inventory.json").read_text())


@pytest.mark.parametrize("workers", [1, 2])
def test_running_daemon_serves_the_inventory_tlsmirror_inventory_makes(tmp_path: Path, workers: int) -> None:
    calls = tmp_path / "calls.jsonl"
    state = tmp_path / "routes.json"
    mport = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlsmirror", "run", "--pcap", SAMPLE, "--keylog", KEYLOG, "--workers", str(workers),
         "--set", f"inventory.state={state}",
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
    assert json.loads(state.read_text()) == live["routes"]  # written at stop: the table of every part
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


def _seeded() -> RouteTable:
    table = RouteTable()
    table.seed(["/api/v1/items/{item}"])
    return table


def test_worker_parts_of_any_size_fold_into_the_inventory_of_all_calls() -> None:
    calls = _sample_calls()
    whole = LiveInventory(_seeded())
    for c in calls:
        whole.export(c)
    for every in (1, 7, 60):  # a part after every call, every 7 calls, one part
        feed = InventoryFeed(_seeded().to_dict())
        parent = LiveInventory(_seeded())
        for i, c in enumerate(calls, 1):
            feed.add(c)
            if i % every == 0 or i == len(calls):
                part = feed.take()
                assert part is not None and not part.routes.seeds  # the parent has the seeds
                parent.fold(pickle.loads(pickle.dumps(part)))  # as it crosses the pipe
        assert feed.take() is None  # nothing since the last part
        assert parent.document() == whole.document() and parent.document()["calls"] == 60
        assert parent.stats["exported"] == 60


def test_parent_takes_a_capture_file_part_in_with_its_stats_and_drops_the_killed_workers_last_part() -> None:
    calls = _sample_calls()
    whole = LiveInventory()
    for c in calls:
        whole.export(c)

    def part(chunk: list[ApiCall]) -> Inventory:
        feed = InventoryFeed()
        for c in chunk:
            feed.add(c)
        p = feed.take()
        assert p is not None
        return p

    d = Daemon(config(**{"capture.pcap": SAMPLE}))
    d.inventory = LiveInventory()
    first = _Handle(0, None, None, None, 0.0)
    d._message(first, InventoryPart(0, part(calls[:20])))
    assert d.inventory.document()["calls"] == 0  # not before the stats with the position it covers
    d._message(first, WorkerStats(0, {"position": 100}))
    d._message(first, InventoryPart(0, part(calls[20:40])))  # then killed before its stats
    assert d.inventory.document()["calls"] == 20
    second = _Handle(0, None, None, None, 0.0)  # resumes after position 100: calls 20.. again
    d._message(second, InventoryPart(0, part(calls[20:])))
    d._message(second, WorkerStats(0, {"position": 333}))
    assert d.inventory.document() == whole.document()  # every call once


def test_live_parts_are_taken_in_at_once() -> None:
    d = Daemon(config(**{"capture.interfaces": ["lo"]}))
    d.inventory = LiveInventory()
    feed = InventoryFeed()
    for c in _sample_calls()[:5]:
        feed.add(c)
    p = feed.take()
    assert p is not None
    d._message(_Handle(0, None, None, None, 0.0), InventoryPart(0, p))
    assert d.inventory.document()["calls"] == 5


_PIECES = ["alice@example.com", "4111 1111 1111 1111", "4111111111111112", "DE89370400440532013000", "+44 20 7946 0958",
           "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlX2hlcmU", "AKIAIOSFODNN7EXAMPLE", "078-05-1120",
           "AWS secret = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYab", "QQ 12 34 56 C", "12345678Z", "ghp_" + "a" * 36,
           "-----BEGIN RSA PRIVATE KEY-----", "xoxb-1234567890", "id-42", "", " ", "@", "-", "2024-01-01"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=12)), max_size=6))
def test_quick_rules_find_what_the_rules_find(parts: list[str]) -> None:
    text = " ".join(parts)
    extra = {"ticket": r"TK-(\d{4})", "order": r"(?i)order-[0-9]{3}"}  # a group of its own; a flag
    configured = SensitiveRules.configured(extra=extra)
    for quick, plain in ((QuickRules(), SensitiveRules()), (QuickRules(configured.rules), configured)):
        assert quick.types_in(text) == plain.types_in(text)
        assert quick.types_in(text) == plain.types_in(text)  # from its memory when short
        assert quick.types_in(text + " TK-1234 ORDER-123") == plain.types_in(text + " TK-1234 ORDER-123")


def test_quick_rules_remember_long_strings_by_content() -> None:
    quick, plain = QuickRules(), SensitiveRules()
    texts = [f"{'x' * 300} {piece} {i}" for i, piece in enumerate(_PIECES)]
    for _ in range(2):  # the second time from its memory of long strings, the same answers
        for text in texts:
            assert quick.types_in("".join(list(text))) == plain.types_in(text)  # a new string, same content
    assert len(quick._long) == len(texts)
    quick._long_chars = sensitive.LONG_CACHE_CHARS  # full: the memory starts again, answers unchanged
    assert quick.types_in(texts[0] + " a@b.example") == plain.types_in(texts[0] + " a@b.example")
    assert len(quick._long) == 1
    huge = "y" * (sensitive.SCAN_LIMIT + 1) + " a@b.example"  # past the scan limit: not remembered
    assert quick.types_in(huge) == plain.types_in(huge) == set()
    assert len(quick._long) == 1
