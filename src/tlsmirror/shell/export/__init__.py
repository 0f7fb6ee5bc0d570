"""Exporters: where API calls go (JSON lines, HAR, OTLP). All implement :class:`Exporter`."""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: keeps `import tlsmirror.shell.export.<x>` light at start-up
    from ...calls import ApiCall


class Exporter(Protocol):
    """A destination for API calls. ``export`` must not block for long: an exporter that can fall
    behind keeps a bounded queue (or spool) and counts what it drops in ``stats``."""

    stats: dict[str, int]

    def export(self, call: ApiCall) -> None: ...

    def flush(self, timeout: float) -> bool:
        """Deliver what is pending within ``timeout`` seconds; True when nothing is left."""
        ...

    def reopen(self) -> None:
        """SIGHUP: reopen files (log rotation)."""
        ...

    def close(self) -> None: ...


class FileSink:
    """What the file exporters (JSON lines, HAR) share: an open file, counters, the last error."""

    _fh: IO[Any] | None
    stats: dict[str, int]
    last_error: str | None

    def flush(self, timeout: float = 0.0) -> bool:
        fh = self._fh
        if fh is not None:
            try:
                fh.flush()
            except OSError as exc:
                self.stats["errors"] += 1
                self.last_error = str(exc.strerror or exc)
                return False
        return True


def rotate_file(path: str, backups: int) -> None:
    """Move ``path`` away as its rotation does: ``path.1`` .. ``path.<backups>`` shifted up by one (the
    oldest dropped), ``path`` becomes ``path.1``; with no backups it is removed."""
    if backups == 0:
        os.unlink(path)
        return
    for i in range(backups - 1, 0, -1):
        src = f"{path}.{i}"
        if os.path.exists(src):
            os.replace(src, f"{path}.{i + 1}")
    os.replace(path, f"{path}.1")
