"""The on-disk OTLP spool (issue 15, point 13): delivered segments leave the disk and ``spool_bytes``;
every file it makes is 0600 whatever the umask."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.otlp_receiver import receiver, sample_api_calls
from tlsmirror.shell.export.otlp import OtlpConfig, OtlpExporter
from tlsmirror.shell.export.spool import DiskSpool


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def on_disk(d: Path) -> int:
    return sum(p.stat().st_size for p in segments(d))


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0)  # the most permissive umask: modes must not depend on it
    try:
        yield
    finally:
        os.umask(old)


def drain(sp: DiskSpool, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        rec = sp.peek()
        assert rec is not None
        out.append(rec.payload)
        sp.ack()
    return out


def test_delivered_segments_are_deleted_and_not_counted(tmp_path: Path) -> None:
    sp = DiskSpool(str(tmp_path), 1 << 20, segment_bytes=4096)
    batches = [bytes([i]) * 1000 for i in range(10)]
    for b in batches:
        assert sp.append(b, 1)
    assert len(segments(tmp_path)) == 2 and sp.size == on_disk(tmp_path) == 10 * 1012
    assert drain(sp, 6) == batches[:6]
    assert len(segments(tmp_path)) == 1 and sp.size == on_disk(tmp_path) == 5 * 1012  # the first is gone
    assert drain(sp, 4) == batches[6:]
    assert sp.peek() is None
    assert segments(tmp_path) == [] and sp.size == 0  # the segment being written too
    assert sp.append(b"later", 2)  # a new segment after the last deleted one
    assert sp.size == on_disk(tmp_path) == 12 + 5
    sp.close()
    sp = DiskSpool(str(tmp_path), 1 << 20, segment_bytes=4096)
    assert drain(sp, 1) == [b"later"] and sp.peek() is None and sp.size == 0 and segments(tmp_path) == []
    sp.close()
    sp = DiskSpool(str(tmp_path), 1 << 20)  # reopening an empty, fully delivered spool
    assert sp.peek() is None and sp.size == 0
    sp.close()


def test_fully_delivered_spool_left_by_an_older_version_is_cleaned_on_open(tmp_path: Path) -> None:
    sp = DiskSpool(str(tmp_path), 1 << 20)
    assert sp.append(b"x" * 100, 1)
    sp.close()
    seg = segments(tmp_path)[0]
    (tmp_path / "cursor").write_text(f"{int(seg.stem)} {seg.stat().st_size}\n")  # delivered, not deleted
    sp = DiskSpool(str(tmp_path), 1 << 20)
    assert sp.peek() is None and sp.size == 0 and segments(tmp_path) == []
    sp.close()


def test_files_are_0600_whatever_the_umask(tmp_path: Path, umask: None) -> None:
    d = tmp_path / "spool"
    sp = DiskSpool(str(d), 1 << 20, segment_bytes=4096)
    for i in range(8):
        assert sp.append(bytes([i]) * 1000, 1)
    drain(sp, 1)  # writes the cursor
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert {"lock", "cursor"} <= modes.keys() and any(n.endswith(".seg") for n in modes)
    assert set(modes.values()) == {0o600}, modes
    sp.close()
    for p in d.iterdir():  # files from an older version (umask 022): made private on open
        p.chmod(0o644)
    sp = DiskSpool(str(d), 1 << 20, segment_bytes=4096)
    drain(sp, 1)
    assert {stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()} == {0o600}
    sp.close()


def test_exporter_spool_bytes_back_to_zero_after_delivery(tmp_path: Path) -> None:
    calls = sample_api_calls()
    with receiver("grpc") as rcv:
        rcv.stop()
        exp = OtlpExporter(OtlpConfig(endpoint=rcv.endpoint, protocol="grpc", spool_dir=str(tmp_path),
                                      batch_size=4, batch_timeout=0.02, backoff_initial=0.05,
                                      backoff_max=0.2, flush_timeout=2.0, timeout=3.0))
        try:
            for c in calls:
                exp.export(c)
            deadline = time.monotonic() + 10
            while exp.stats["spooled"] < len(calls) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert exp.stats["spool_bytes"] > 0 and segments(tmp_path)
            rcv.start()
            assert exp.flush(20)
            deadline = time.monotonic() + 10
            while exp.stats["spool_bytes"] and time.monotonic() < deadline:
                time.sleep(0.02)
            assert exp.stats["exported"] == len(calls)
            assert exp.stats["spool_bytes"] == 0 and segments(tmp_path) == []
        finally:
            exp.close()
