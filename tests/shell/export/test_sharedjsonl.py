"""The JSON lines file the daemon's workers share: several processes appending batches of long lines (far
beyond PIPE_BUF) at once, with rotation, and every line comes out whole, once."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import select
from pathlib import Path

from tests.shell.daemon.test_workers import api_call
from tlsmirror.shell.export.sharedjsonl import SharedJsonlExporter

BODY = 40_000  # bytes of each body: a line is ~81 KB of JSON, 19x PIPE_BUF


def _writer(path: str, who: int, n: int, max_bytes: int | None, go: object) -> None:
    ex = SharedJsonlExporter(path, max_bytes=max_bytes, backups=1000, batch_bytes=300_000)
    go.wait()  # type: ignore[attr-defined]
    for k in range(n):
        ex.export(api_call(who * 1000 + k, body=BODY))
    ex.close()


def _run(path: Path, writers: int, n: int, max_bytes: int | None = None) -> None:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(path), w, n, max_bytes, go)) for w in range(writers)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def _paths(records: list[dict[str, object]]) -> list[str]:
    return sorted(str(r["path"]) for r in records)


def test_batches_of_long_lines_from_several_processes_never_interleave(tmp_path: Path) -> None:
    out = tmp_path / "calls.jsonl"
    _run(out, writers=3, n=40)
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]  # a torn line would not parse
    assert all(len(line) > 16 * select.PIPE_BUF for line in lines[:-1])
    assert _paths(records) == sorted(f"/items/{w * 1000 + k}" for w in range(3) for k in range(40))


def test_rotation_shared_by_several_processes_keeps_every_line_and_the_size_limit(tmp_path: Path) -> None:
    out = tmp_path / "calls.jsonl"
    limit = 1 << 20  # 12 lines a file
    _run(out, writers=3, n=30, max_bytes=limit)
    files = [out, *sorted(tmp_path.glob("calls.jsonl.*"), key=lambda p: int(p.suffix[1:]))]
    assert len(files) >= 7
    records = []
    for f in files:
        data = f.read_bytes()
        assert 0 < len(data) <= limit, f
        records += [json.loads(line) for line in data.splitlines()]
    assert _paths(records) == sorted(f"/items/{w * 1000 + k}" for w in range(3) for k in range(30))


def test_a_moved_file_is_recreated_and_a_write_error_is_counted(tmp_path: Path) -> None:
    out = tmp_path / "calls.jsonl"
    ex = SharedJsonlExporter(str(out))
    ex.export(api_call(1))
    assert ex.flush()
    os.rename(out, tmp_path / "old.jsonl")  # logrotate's move: the next batch goes to a new file
    ex.export(api_call(2))
    ex.flush()
    assert [json.loads(x)["path"] for x in out.read_text().splitlines()] == ["/items/2"]
    assert len((tmp_path / "old.jsonl").read_text().splitlines()) == 1
    ex.close()
    full = SharedJsonlExporter("/dev/full")
    full.export(api_call(3))
    assert not full.flush()
    assert full.stats["errors"] == 1 and full.stats["dropped"] == 1 and full.stats["exported"] == 0
    full.close()


def test_each_record_goes_to_the_hook_as_its_line_says_and_a_failing_hook_costs_no_line(tmp_path: Path) -> None:
    out = tmp_path / "calls.jsonl"
    ex = SharedJsonlExporter(str(out))
    seen: list[dict[str, object]] = []
    ex.on_record = seen.append
    for i in range(3):
        ex.export(api_call(i))

    def broken(_rec: dict[str, object]) -> None:
        raise RuntimeError("hook")

    ex.on_record = broken
    ex.export(api_call(3))
    ex.close()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 4 and lines[:3] == json.loads(json.dumps(seen))
    assert ex.stats["record_hook_errors"] == 1 and ex.stats["exported"] == 4
