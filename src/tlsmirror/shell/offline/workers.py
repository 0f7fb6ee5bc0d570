"""``replay --workers N`` and ``decrypt --workers N``: N processes share the flows of the capture files.

Every worker reads the whole of every file itself (no frame goes through the parent) and keeps the frames
of its share of the flows (:class:`~.share.FlowShare`): flows are told apart by their flow hash
(:class:`~tlsmirror.frames.flowhash.FlowHasher`, the one the daemon's ``--pcap`` feed uses, symmetric like
the kernel's fanout) and take the workers in turn as they first appear; the other workers' common frames
are dropped in the reader's buffer, unread. Secrets blocks go
to every worker: any flow may need them. So that the records do not depend on N:

- flows are numbered by the capture frame that opened them (1 for the file's first frame, counted on
  across the files of one run), not by how many flows one worker has seen;
- the engine's clock runs on every TCP segment of the file, the other workers' too: flows expire and
  connections open at the end are closed at the same packet times as in one process;
- each worker writes its records to a private file (0600, in a 0700 directory) with an index of
  (request start, connection id, emission order); the parent sorts the indexes and copies the records
  into the one output in that order, byte for byte.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import multiprocessing
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from ..errors import InputError, ShellError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from ...calls import ApiCall

MAX_WORKERS = 64

IndexEntry = tuple[float, int, int, int, int]
"""(sort time, connection id, emission order in the worker, offset in its part file, length)."""


class PartWriter:
    """An :class:`~tlsmirror.shell.export.Exporter` writing one worker's records to its part file, in
    the order they come, and an index to sort them by (request start, connection id, order)."""

    def __init__(self, path: str, render: Callable[[ApiCall], bytes]) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._fh: IO[bytes] | None = os.fdopen(fd, "wb")
        self.render = render
        self.index: list[IndexEntry] = []
        self.pos = 0
        self.stats: dict[str, int] = {"exported": 0, "errors": 0, "dropped": 0}
        self.last_error: str | None = None

    def export(self, call: ApiCall) -> None:
        ex = call.exchange
        start = ex.request_ts if ex.request_ts is not None else ex.response_ts
        self.add(start if start is not None else 0.0, call.connection.id, self.render(call))

    def add(self, start: float, conn_id: int, data: bytes) -> None:
        """One record, sorted by ``start`` then ``conn_id`` then the order of :meth:`add` calls."""
        fh = self._fh
        if fh is None:
            self.stats["dropped"] += 1
            return
        try:
            fh.write(data)
        except OSError as exc:
            self.stats["errors"] += 1
            self.stats["dropped"] += 1
            self.last_error = str(exc.strerror or exc)
            return
        self.index.append((start, conn_id, len(self.index), self.pos, len(data)))
        self.pos += len(data)
        self.stats["exported"] += 1

    def flush(self, timeout: float = 0.0) -> bool:
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                self.stats["errors"] += 1
                self.last_error = str(exc.strerror or exc)
                return False
        return True

    def reopen(self) -> None:
        self.flush()

    def close(self) -> None:
        """Close the part file and sort the index here, in the worker: the parent then merges sorted
        runs (one comparison per record, not a sort)."""
        self.index.sort()
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError as exc:
                self.stats["errors"] += 1
                self.last_error = str(exc.strerror or exc)


def check_workers(n: int) -> int:
    if not 1 <= n <= MAX_WORKERS:
        raise InputError(f"--workers {n}: give 1 to {MAX_WORKERS}")
    return n


def part_dir(output: str) -> str:
    """A private (0700) directory for the part files: beside ``output`` when it is a file there, so the
    parts land on the disk the output goes to; else in the temporary directory."""
    if output != "-":
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.exists(output) or os.path.isfile(output):
            try:
                return tempfile.mkdtemp(prefix=".tlsmirror-parts-", dir=parent)
            except OSError:
                pass
    try:
        return tempfile.mkdtemp(prefix="tlsmirror-parts-")
    except OSError as exc:
        raise InputError(f"cannot create a directory for the workers' records: {exc.strerror or exc}") from None


def remove_parts(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _child(conn: Connection, job: Callable[[int], Any], index: int) -> None:
    try:
        result = job(index)
        conn.send(("ok", result))
    except ShellError as exc:
        conn.send(("input", str(exc)))
    except KeyboardInterrupt:
        conn.send(("input", "interrupted"))
    except BaseException:  # reported to the parent, which fails the run
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()


def run_workers(count: int, job: Callable[[int], Any]) -> list[Any]:
    """``job(0)`` ... ``job(count - 1)``, each in its own (forked) process; their results, in order.

    A worker's :class:`ShellError` becomes this process's (the first one); a crash is reported with the
    worker's traceback. Interrupted, every worker is stopped."""
    ctx = multiprocessing.get_context("fork")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    procs: list[tuple[Any, Connection]] = []
    answers: list[tuple[str, Any]] = []
    collect = gc.isenabled()
    # what the parent built stays out of the workers' collections; no collection runs in the parent
    # while the answers (the workers' indexes: thousands of tuples) are unpickled
    gc.freeze()
    try:
        for k in range(count):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(writer, job, k), name=f"tlsmirror-share-{k}", daemon=True)
            proc.start()
            writer.close()
            procs.append((proc, reader))
        gc.disable()
        for proc, reader in procs:
            try:
                answers.append(reader.recv())
            except EOFError:
                proc.join()
                answers.append(("crash", f"worker {proc.name} ended with exit code {proc.exitcode}\n"))
            reader.close()
    except BaseException:
        for proc, _reader in procs:
            if proc.is_alive():
                proc.terminate()
        raise
    finally:
        for proc, _reader in procs:
            proc.join()
        gc.unfreeze()
        if collect:
            gc.enable()
    for kind, value in answers:
        if kind == "input":
            raise InputError(value)
    for kind, value in answers:
        if kind == "crash":
            print(value, file=sys.stderr, end="")
            raise InputError("a worker process failed (its traceback is above)")
    return [value for _kind, value in answers]


def merge_parts(parts: Sequence[tuple[str, list[IndexEntry]]], out: IO[bytes], *, head: bytes = b"",
                first: bytes = b"", sep: bytes = b"", tail: bytes = b"") -> int:
    """Write the records of every part to ``out`` sorted by their index keys: ``head``, the records
    (``first`` before the first one, ``sep`` before each other one) and ``tail``. Returns the count.

    Compiled. Each index is sorted on its own (a pass over it when :meth:`PartWriter.close` sorted it
    already) and the parts merged, the smallest head first; the entries stay Python tuples (unboxed
    and boxed again, they cost more than the comparisons) and the records are slices of views of the
    part files, joined in chunks."""
    runs: list[list[Any]] = [sorted(index) for _path, index in parts]
    count = len(runs)
    heads: list[Any] = [run[0] if run else None for run in runs]
    pos = [0] * count
    maps: list[mmap.mmap | None] = []
    views: list[Any] = []
    files = []
    chunk: list[Any] = [head]
    total = 0
    collect = gc.isenabled()
    gc.disable()  # nothing here makes cycles: a collection would only walk the records
    try:
        for path, index in parts:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
            files.append(fh)
            m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if index else None
            maps.append(m)
            views.append(memoryview(m) if m is not None else None)
        joined = bool(first or sep)
        lead = first
        while True:
            best = -1
            entry: Any = None
            for k in range(count):
                e = heads[k]
                if e is not None and (best < 0 or e < entry):
                    best = k
                    entry = e
            if best < 0:
                break
            if joined:
                chunk.append(lead)
                lead = sep
            off: int = entry[3]
            size: int = entry[4]
            chunk.append(views[best][off:off + size])
            total += 1
            run = runs[best]
            p = pos[best] + 1
            pos[best] = p
            heads[best] = run[p] if p < len(run) else None
            if len(chunk) >= 4096:
                out.write(b"".join(chunk))
                chunk.clear()
        chunk.append(tail)
        out.write(b"".join(chunk))
        chunk.clear()
        out.flush()
    finally:
        chunk.clear()  # the slices first: a view cannot be released, nor a map closed, under them
        if collect:
            gc.enable()
        for v in views:
            if v is not None:
                v.release()
        for m in maps:
            if m is not None:
                m.close()
        for fh in files:
            fh.close()
    return total


def open_output(output: str, append: bool) -> tuple[IO[bytes], bool]:
    """The output file (``-``: stdout), truncated unless ``append``; and whether to close it."""
    if output == "-":
        return sys.stdout.buffer, False
    try:
        return open(output, "ab" if append else "wb"), True  # the caller closes it
    except OSError as exc:
        raise InputError(f"{output}: cannot write output: {exc.strerror or exc}") from None


def close_output(out: IO[bytes], close: bool) -> None:
    """Close what :func:`open_output` opened (never stdout)."""
    if close:
        with contextlib.suppress(OSError):
            out.close()
