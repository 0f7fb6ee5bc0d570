"""JSON Lines exporter: one exchange record (``tlsmirror.record``) per line, with size-based rotation."""

from __future__ import annotations

import os
import sys
from typing import IO, TYPE_CHECKING

from ...calls import ApiCall
from ...record import call_to_json_line, call_to_json_lines
from ..errors import InputError
from . import FileSink, rotate_file

if TYPE_CHECKING:  # the GraphQL reader is imported with the first call that may be GraphQL
    from ...http.graphql import GraphqlOptions


class JsonlExporter(FileSink):
    """Writes one JSON object per line to ``path`` (``-`` = stdout), as calls come.

    With ``max_bytes``, the file is rotated before a line would make it larger than that:
    ``path`` -> ``path.1`` -> ... -> ``path.<backups>`` (the oldest is deleted; ``backups=0`` keeps
    none). :meth:`reopen` (SIGHUP) reopens ``path`` for appending, for external log rotation.
    A write error is counted (``stats["errors"]``, the message in ``last_error``) and the record
    dropped; the exporter keeps going. ``websocket_records``: ``session`` (a WebSocket session is one
    record, its messages in ``websocket.list``) or ``message`` (the handshake's record without the list,
    then one ``websocket_message`` record per message). ``graphql``: GraphQL paths and limits.
    """

    def __init__(self, path: str, *, max_bytes: int | None = None, backups: int = 5,
                 body_mode: str = "auto", websocket_records: str = "session",
                 graphql: GraphqlOptions | None = None) -> None:
        if websocket_records not in ("session", "message"):
            raise ValueError("websocket_records must be 'session' or 'message'")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if backups < 0:
            raise ValueError("backups must be >= 0")
        self.path = path
        self.max_bytes = max_bytes if path != "-" else None
        self.backups = backups
        self.body_mode = body_mode
        self.per_message = websocket_records == "message"
        self.graphql = graphql
        self.stats: dict[str, int] = {"exported": 0, "bytes": 0, "rotations": 0, "errors": 0, "dropped": 0}
        self.last_error: str | None = None
        self._size = 0
        self._fh: IO[bytes] | None = None
        self._closed = False
        self._open("ab")

    # ------------------------------------------------------------------ file handling
    def _open(self, mode: str) -> None:
        if self.path == "-":
            self._fh = sys.stdout.buffer
            self._size = 0
            return
        try:
            self._fh = open(self.path, mode)  # noqa: SIM115  (closed by close())
            self._size = self._fh.seek(0, os.SEEK_END)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot write output: {exc.strerror or exc}") from None

    def _close_file(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        if self.path == "-":
            fh.flush()
        else:
            fh.close()

    def _rotate(self) -> None:
        self._close_file()
        rotate_file(self.path, self.backups)
        self.stats["rotations"] += 1
        self._open("ab")

    # ------------------------------------------------------------------ Exporter
    def export(self, call: ApiCall) -> None:
        if self._closed:
            self.stats["dropped"] += 1
            return
        if not self.per_message:  # one line per call: no list
            self.write_line(call_to_json_line(call, body_mode=self.body_mode, graphql=self.graphql))
            return
        for line in call_to_json_lines(call, body_mode=self.body_mode, graphql=self.graphql, per_message=True):
            self.write_line(line)

    def write_line(self, line: bytes) -> None:
        """Append one ready-made line (used by :meth:`export`; the daemon may reuse it)."""
        try:
            if self.max_bytes is not None and self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            fh = self._fh
            if fh is None:
                self._open("ab")
                fh = self._fh
                assert fh is not None
            fh.write(line)
        except BrokenPipeError:
            raise  # stdout piped into a reader that stopped: the CLI ends quietly
        except (OSError, InputError) as exc:
            self.stats["errors"] += 1
            self.stats["dropped"] += 1
            self.last_error = str(getattr(exc, "strerror", None) or exc)
            return
        self._size += len(line)
        self.stats["exported"] += 1
        self.stats["bytes"] += len(line)

    def reopen(self) -> None:
        if self._closed or self.path == "-":
            self.flush()
            return
        try:
            self._close_file()
        except OSError as exc:
            self.stats["errors"] += 1
            self.last_error = str(exc.strerror or exc)
        try:
            self._open("ab")
        except InputError as exc:
            self.stats["errors"] += 1
            self.last_error = str(exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._close_file()
        except OSError as exc:
            self.stats["errors"] += 1
            self.last_error = str(exc.strerror or exc)
