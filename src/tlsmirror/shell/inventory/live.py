"""The daemon's live API inventory: an exporter (shell/export) that folds every API call it is given into
an :class:`~tlsmirror.inventory.inventory.Inventory`, bounded in memory, read at any time by the metrics
server's ``/inventory`` (JSON, the document ``tlsmirror inventory`` writes) and ``/inventory.html``.

Thread-safe: calls come from the export thread, reads from the metrics server's threads. Several live
inventories (one per worker, say) are folded into one with :meth:`LiveInventory.merged`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from typing import Any

from ...calls import ApiCall
from ...inventory.inventory import Inventory
from ...inventory.report import render
from ...inventory.routes import RouteTable
from ...record import call_to_dict

TITLE = "API inventory (live)"


class LiveInventory:
    """Exporter protocol: ``export``, ``flush``, ``reopen``, ``close`` and ``stats``."""

    def __init__(self, table: RouteTable | None = None, *, max_endpoints: int = 20000,
                 bucket_seconds: int = 300, state: str | None = None) -> None:
        """``state``: a file the route table is written to on close (``inventory.state``: the next run
        starts from it)."""
        self.state = state
        self.inventory = Inventory(table if table is not None else RouteTable(), max_keys=max_endpoints,
                                   bucket_seconds=bucket_seconds)
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {"exported": 0}

    def export(self, call: ApiCall) -> None:
        rec = call_to_dict(call)  # the record the JSON lines carry: `tlsmirror inventory --calls` reads them
        with self._lock:
            self.inventory.add(rec)
        self.stats["exported"] += 1

    def flush(self, timeout: float) -> bool:
        return True

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        if self.state:
            with self._lock:
                data = json.dumps(self.inventory.routes.to_dict())
            tmp = self.state + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(tmp, self.state)

    def document(self) -> dict[str, Any]:
        """The JSON inventory now (docs/inventory.md)."""
        with self._lock:
            return self.inventory.to_dict()

    @classmethod
    def merged(cls, parts: Iterable[LiveInventory], table: RouteTable | None = None) -> LiveInventory:
        """One live inventory holding the calls of all ``parts`` (each is read under its lock)."""
        out = cls(table)
        for p in parts:
            with p._lock:
                out.inventory.merge(p.inventory)
        return out

    def pages(self) -> dict[str, Any]:
        """The metrics server's routes: path -> a function giving (body, content type)."""
        def as_json() -> tuple[bytes, str]:
            return (json.dumps(self.document(), indent=1) + "\n").encode(), "application/json"

        def as_html() -> tuple[bytes, str]:
            return render(self.document(), None, TITLE).encode(), "text/html; charset=utf-8"

        return {"/inventory": as_json, "/inventory.html": as_html}
