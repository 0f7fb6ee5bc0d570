"""A bounded, ordered, persistent queue of serialized span batches (the OTLP exporter's spool).

Layout of a spool directory::

    lock                      flock'ed while a process uses the spool (one user at a time)
    0000000000000001.seg      segment files, append-only, named by sequence number
    0000000000000002.seg
    cursor                    "<segment seq> <offset>\\n": where the oldest undelivered record starts

A segment is a run of records ``length:u32be | count:u32be | crc32(payload):u32be | payload``;
``count`` is the number of spans in the batch. A new segment starts when the current one passes
``segment_bytes``; a segment is deleted once every record in it is delivered (the one being written
too: the next append starts a new one), so ``size`` counts only undelivered data. The size limit
(``max_bytes``) bounds the bytes on disk (all segment files); an append that would pass it is refused
and the caller counts the spans as dropped. Every file is created mode 0600 whatever the umask (and an
older one found with other modes is made 0600).

Durability (``fsync``): ``"always"`` fsyncs every append and every cursor update; ``"interval"``
(default) fsyncs at most every ``fsync_interval`` seconds, on a segment switch and on close;
``"never"`` leaves it to the OS. Every append is written to the kernel before ``append`` returns, so
a crash of the sensor process loses nothing; a power loss can lose up to the last interval. The cursor
is updated after the receiver acknowledged a batch: a crash between the two re-sends that batch once
(delivery is at-least-once across crashes, exactly-once otherwise).

On open, a record cut short at the end of a segment (torn write) is truncated away; a record whose
checksum does not match makes the rest of its segment unreadable: it is skipped and counted in
``corrupt``.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import IO, Any

from ..errors import SpoolError

_HEADER = struct.Struct(">III")
_MODE = 0o600
_MAX_RECORD = 1 << 30
FSYNC_POLICIES = ("always", "interval", "never")


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One stored batch: its serialized bytes and the number of spans in it."""

    payload: bytes
    count: int


class MemorySpool:
    """The spool without a directory: bounded by ``max_bytes`` of payload, lost on exit."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._records: collections.deque[SpoolRecord] = collections.deque()
        self._lock = threading.Lock()
        self.size = 0
        self.spans = 0
        self.corrupt = 0
        self.persistent = False

    def __len__(self) -> int:
        return len(self._records)

    def append(self, payload: bytes, count: int) -> bool:
        with self._lock:
            if self.size + len(payload) > self.max_bytes:
                return False
            self._records.append(SpoolRecord(payload, count))
            self.size += len(payload)
            self.spans += count
            return True

    def peek(self) -> SpoolRecord | None:
        with self._lock:
            return self._records[0] if self._records else None

    def ack(self) -> None:
        with self._lock:
            rec = self._records.popleft()
            self.size -= len(rec.payload)
            self.spans -= rec.count

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class DiskSpool:
    """The on-disk spool (see the module docstring). Thread-safe: one appender and one reader may
    use it at once."""

    def __init__(self, directory: str, max_bytes: int = 256 << 20, *, segment_bytes: int | None = None,
                 fsync: str = "interval", fsync_interval: float = 1.0) -> None:
        if fsync not in FSYNC_POLICIES:
            raise SpoolError(f"spool fsync policy must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(64 << 10, min(16 << 20, max_bytes // 8))
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.persistent = True
        self._lock = threading.Lock()
        self.corrupt = 0
        self.corrupt_spans = 0
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self._lock_file = _open_private(os.path.join(directory, "lock"), os.O_RDWR | os.O_APPEND, "a+b")
        except OSError as exc:
            raise SpoolError(f"spool directory {directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise SpoolError(f"spool directory {directory} is in use by another exporter") from None
        # state: segment seq -> size on disk; the read position; pending records (count only)
        self._sizes: dict[int, int] = {}
        self._pending: collections.deque[tuple[int, int, int]] = collections.deque()  # (seq, offset, count)
        self._head: SpoolRecord | None = None
        self._reader: tuple[int, IO[bytes]] | None = None
        self._writer: IO[bytes] | None = None
        self._write_seq = 0
        self._last_sync = time.monotonic()
        self._dirty = False
        self._cursor_dirty = False
        self.spans = 0
        try:
            self._recover()
        except OSError as exc:
            self.close()
            raise SpoolError(f"spool directory {directory}: {exc.strerror or exc}") from None

    # ------------------------------------------------------------------ public
    def __len__(self) -> int:
        return len(self._pending)

    @property
    def size(self) -> int:
        """Bytes on disk in segment files."""
        return sum(self._sizes.values())

    def append(self, payload: bytes, count: int) -> bool:
        """Store one batch; False (nothing written) when the size limit would be passed."""
        rec_len = _HEADER.size + len(payload)
        with self._lock:
            if self.size + rec_len > self.max_bytes:
                return False
            seq = self._write_seq
            if seq not in self._sizes or self._sizes[seq] >= self.segment_bytes:  # none yet, or all delivered
                seq = self._new_segment()
            f = self._writer
            assert f is not None
            offset = self._sizes[seq]
            try:
                f.write(_HEADER.pack(len(payload), count, zlib.crc32(payload)) + payload)
                f.flush()
            except OSError:  # disk full or failing: undo the partial record, refuse the batch
                with contextlib.suppress(OSError):
                    f.truncate(offset)
                    f.seek(offset)
                return False
            self._sizes[seq] = offset + rec_len
            self._pending.append((seq, offset, count))
            self.spans += count
            self._dirty = True
            self._maybe_sync(self.fsync == "always")
            return True

    def peek(self) -> SpoolRecord | None:
        """The oldest undelivered batch (the same one until :meth:`ack`), or None when empty."""
        with self._lock:
            while self._head is None and self._pending:
                seq, offset, count = self._pending[0]
                payload = self._read(seq, offset)
                if payload is None:  # unreadable (damaged on disk): skip this record
                    self.corrupt += 1
                    self.corrupt_spans += count
                    self.spans -= count
                    self._pending.popleft()
                    self._cursor_moved()
                    continue
                self._head = SpoolRecord(payload, count)
            return self._head

    def ack(self) -> None:
        """The oldest batch was delivered (or given up): forget it."""
        with self._lock:
            if not self._pending:
                return
            _seq, _off, count = self._pending.popleft()
            self.spans -= count
            self._head = None
            self._cursor_moved()

    def sync(self) -> None:
        with self._lock:
            self._maybe_sync(True)

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(OSError, ValueError):
                self._maybe_sync(True)
            for f in (self._writer, self._reader[1] if self._reader else None):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
            self._writer = self._reader = None
            lock = getattr(self, "_lock_file", None)
            if lock is not None and not lock.closed:
                with contextlib.suppress(OSError):
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
                lock.close()

    # ------------------------------------------------------------------ internals
    def _path(self, seq: int) -> str:
        return os.path.join(self.directory, f"{seq:016d}.seg")

    def _new_segment(self) -> int:
        if self._writer is not None:
            self._fsync_file(self._writer)
            self._writer.close()
        seq = max(self._sizes, default=self._write_seq) + 1
        self._writer = _open_private(self._path(seq), os.O_WRONLY | os.O_APPEND, "ab")
        self._sizes[seq] = 0
        self._write_seq = seq
        if self.fsync != "never":
            self._fsync_dir()
        return seq

    def _read(self, seq: int, offset: int) -> bytes | None:
        reader = self._reader
        if reader is None or reader[0] != seq:
            if reader is not None:
                reader[1].close()
            try:
                opened: IO[bytes] = open(self._path(seq), "rb")  # noqa: SIM115
            except OSError:
                self._reader = None
                return None
            self._reader = reader = (seq, opened)
        f = reader[1]
        f.seek(offset)
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return None
        length, _count, crc = _HEADER.unpack(head)
        payload = f.read(length)
        if len(payload) != length or zlib.crc32(payload) != crc:
            return None
        return bytes(payload)

    def _cursor_moved(self) -> None:
        """Delete fully delivered segments (with nothing pending, the one being written too) and persist
        the read position."""
        if self._pending:
            first = self._pending[0][0]
        else:  # everything delivered: no segment is needed; the next append opens a new one
            first = self._write_seq + 1
            if self._writer is not None:
                with contextlib.suppress(OSError):
                    self._writer.close()
                self._writer = None
        for seq in sorted(self._sizes):
            if seq >= first:
                break
            if self._reader is not None and self._reader[0] == seq:
                self._reader[1].close()
                self._reader = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(seq))
            del self._sizes[seq]
        self._cursor_dirty = True
        self._write_cursor()

    def _write_cursor(self) -> None:
        if self._pending:
            seq, offset, _ = self._pending[0]
        else:
            seq, offset = self._write_seq, self._sizes.get(self._write_seq, 0)
        tmp = os.path.join(self.directory, "cursor.tmp")
        with _open_private(tmp, os.O_WRONLY | os.O_TRUNC, "w") as f:
            f.write(f"{seq} {offset}\n")
            if self.fsync == "always":
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.directory, "cursor"))
        self._cursor_dirty = False

    def _maybe_sync(self, force: bool) -> None:
        if self.fsync == "never" or not self._dirty:
            return
        now = time.monotonic()
        if force or now - self._last_sync >= self.fsync_interval:
            if self._writer is not None:
                self._fsync_file(self._writer)
            self._last_sync = now
            self._dirty = False

    @staticmethod
    def _fsync_file(f: IO[bytes]) -> None:
        f.flush()
        os.fsync(f.fileno())

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _recover(self) -> None:
        seqs = sorted(int(n[:-4]) for n in os.listdir(self.directory)
                      if n.endswith(".seg") and n[:-4].isdigit())
        cur_seq, cur_off = 0, 0
        try:
            with open(os.path.join(self.directory, "cursor")) as f:
                a, b = f.read().split()
                cur_seq, cur_off = int(a), int(b)
        except (OSError, ValueError):
            pass
        for seq in seqs:
            path = self._path(seq)
            if seq < cur_seq:
                os.unlink(path)
                continue
            start = cur_off if seq == cur_seq else 0
            size = os.path.getsize(path)
            with _open_private(path, os.O_RDWR, "r+b") as f:
                off = 0
                while off < size:
                    f.seek(off)
                    head = f.read(_HEADER.size)
                    if len(head) < _HEADER.size:
                        break
                    length, count, _crc = _HEADER.unpack(head)
                    end = off + _HEADER.size + length
                    if length > _MAX_RECORD or end > size:
                        break
                    if off >= start:
                        self._pending.append((seq, off, count))
                        self.spans += count
                    off = end
                if off < size:  # torn or garbled tail: cut it
                    f.truncate(off)
                    size = off
            self._sizes[seq] = size
        if self._sizes:
            self._write_seq = max(self._sizes)
            self._writer = _open_private(self._path(self._write_seq), os.O_WRONLY | os.O_APPEND, "ab")
        self._cursor_moved()


def _open_private(path: str, flags: int, mode: str) -> IO[Any]:
    """Open (creating if needed) *path* mode 0600, not umask dependent: ``os.open`` with the mode, and a
    file that exists with other modes bits (made by an older version, or a umask of 0) is fchmod'ed."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, _MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != _MODE:
            os.fchmod(fd, _MODE)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise
