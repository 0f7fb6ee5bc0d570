"""JSON lines into one file (or stdout) shared by several processes: the daemon's workers each write their
own API calls to ``output.jsonl``, without a hop through the parent.

Each process buffers whole lines and appends them in batches: the file is opened with ``O_APPEND`` and
every batch is written under an exclusive ``flock`` on it, looping over short writes, so that batches of any
size (lines longer than ``PIPE_BUF`` included) never interleave. A lock dies with its process: a killed
writer cannot block the others. Rotation (``max_bytes``) happens under the same lock; a writer that finds
the path no longer names the file it holds (rotated by another writer, or moved by logrotate) reopens it
before writing.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...calls import ApiCall
from ...record import call_to_dict, call_to_json_line, call_to_json_lines, to_json_line
from ..errors import InputError
from . import rotate_file

if TYPE_CHECKING:  # the GraphQL reader is imported with the first call that may be GraphQL
    from ...http.graphql import GraphqlOptions

BATCH_BYTES = 256 << 10  # buffered line bytes that trigger a write


class SharedJsonlExporter:
    """An :class:`~tlsmirror.shell.export.Exporter` writing one JSON object per line to ``path`` (``-``:
    stdout), batched, safe to share with other processes writing the same path.

    ``max_bytes`` rotates before a line would make the file larger (``path`` -> ``path.1`` ...
    ``path.<backups>``), as :class:`~tlsmirror.shell.export.jsonl.JsonlExporter` does. A write error is
    counted (``stats["errors"]``, ``stats["dropped"]`` per line, the message in ``last_error``).

    ``on_record``: called with each call's record after its line is queued (the worker's live inventory
    folds the same dict instead of building it again); not for WebSocket calls written per message, and
    an error in it is counted (``stats["record_hook_errors"]``), never the line's."""

    def __init__(self, path: str, *, max_bytes: int | None = None, backups: int = 5,
                 body_mode: str = "auto", batch_bytes: int = BATCH_BYTES, websocket_records: str = "session",
                 graphql: GraphqlOptions | None = None) -> None:
        if websocket_records not in ("session", "message"):
            raise ValueError("websocket_records must be 'session' or 'message'")
        self.per_message = websocket_records == "message"
        self.graphql = graphql
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = path
        self.max_bytes = max_bytes if path != "-" else None
        self.backups = max(0, backups)
        self.body_mode = body_mode
        self.batch_bytes = batch_bytes
        self.stats: dict[str, int] = {"exported": 0, "bytes": 0, "rotations": 0, "errors": 0, "dropped": 0}
        self.last_error: str | None = None
        self.on_record: Callable[[dict[str, Any]], None] | None = None
        self._lines: list[bytes] = []
        self._pending = 0
        self._fd = -1
        self._closed = False
        self._open()

    # ------------------------------------------------------------------ file handling
    def _open(self) -> None:
        if self.path == "-":
            self._fd = 1
            return
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot write output: {exc.strerror or exc}") from None

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd > 2:
            os.close(fd)

    def _current(self) -> bool:
        """With the lock held: True when ``path`` still names the open file."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def _lock(self) -> None:
        """Lock the file ``path`` names now (reopening it when it was rotated or moved away)."""
        while True:
            if self._fd < 0:
                self._open()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if self.path == "-" or self._current():
                return
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._close_fd()

    def _rotate(self) -> None:
        """With the lock held: move the file away, open (and lock) a new one."""
        rotate_file(self.path, self.backups)
        old = self._fd
        self._fd = -1
        self._open()  # the others find the path changed and reopen it before they write
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.close(old)  # releases its lock
        self.stats["rotations"] += 1

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def _write(self) -> bool:
        lines, self._lines = self._lines, []
        self._pending = 0
        if not lines:
            return True
        written = 0
        try:
            self._lock()
            try:
                size = os.fstat(self._fd).st_size if self.max_bytes is not None else 0
                start = 0
                while start < len(lines):  # runs of lines that fit the file, rotating between them
                    end, n = start, 0
                    while end < len(lines) and (self.max_bytes is None or not size + n
                                                or size + n + len(lines[end]) <= self.max_bytes):
                        n += len(lines[end])
                        end += 1
                    if end == start:
                        self._rotate()
                        size = 0
                        continue
                    self._write_all(b"".join(lines[start:end]))
                    size += n
                    written += end - start
                    self.stats["exported"] += end - start
                    self.stats["bytes"] += n
                    start = end
            finally:
                if self._fd >= 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        except BrokenPipeError:
            raise  # stdout piped into a reader that stopped
        except (OSError, InputError) as exc:
            self.stats["errors"] += 1
            self.stats["dropped"] += len(lines) - written
            self.last_error = str(getattr(exc, "strerror", None) or exc)
            return False
        return True

    # ------------------------------------------------------------------ Exporter
    def export(self, call: ApiCall) -> None:
        if self._closed:
            self.stats["dropped"] += 1
            return
        if self.per_message and call.exchange.websocket is not None:
            lines = call_to_json_lines(call, body_mode=self.body_mode, graphql=self.graphql, per_message=True)
        else:
            hook = self.on_record
            if hook is None:  # only serialised: the connection's part of the line once per connection
                lines = [call_to_json_line(call, body_mode=self.body_mode, graphql=self.graphql)]
            else:  # the live inventory takes the record the line is made of
                rec = call_to_dict(call, body_mode=self.body_mode, graphql=self.graphql)
                lines = [to_json_line(rec)]
                try:
                    hook(rec)
                except Exception:
                    self.stats["record_hook_errors"] = self.stats.get("record_hook_errors", 0) + 1
        for line in lines:
            self._lines.append(line)
            self._pending += len(line)
        if self._pending >= self.batch_bytes:
            self._write()

    def flush(self, timeout: float = 0.0) -> bool:
        return self._write()

    def reopen(self) -> None:
        self._write()
        if self.path == "-" or self._closed:
            return
        self._close_fd()
        try:
            self._open()
        except InputError as exc:
            self.stats["errors"] += 1
            self.last_error = str(exc)

    def close(self) -> None:
        if self._closed:
            return
        self._write()
        self._closed = True
        try:
            self._close_fd()
        except OSError as exc:
            self.stats["errors"] += 1
            self.last_error = str(exc.strerror or exc)
