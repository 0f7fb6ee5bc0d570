"""The daemon's live API inventory: an exporter (shell/export) that folds every API call it is given into
an :class:`~tlsmirror.inventory.inventory.Inventory`, bounded in memory, read at any time by the metrics
server's ``/inventory`` (JSON, the document ``tlsmirror inventory`` writes) and ``/inventory.html``.

Thread-safe: calls come from the export thread (or parts from the workers, :meth:`LiveInventory.fold`),
reads from the metrics server's threads. Several live inventories are folded into one with
:meth:`LiveInventory.merged`.

In the daemon each worker folds its own calls (:class:`InventoryFeed`, bounded by ``max_endpoints``) and
hands the parent the part it folded since the last one, with its statistics (every ``stats_interval``
live; with a capture file, with each file position it reports, so that the parent's inventory covers
exactly the calls up to the positions it knows: a worker killed and restarted neither loses nor repeats
what it had reported). The parent folds the parts into its :class:`LiveInventory`; no call crosses.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ...calls import ApiCall
from ...inventory.inventory import FoldMemo, Inventory
from ...inventory.routes import RouteTable
from ...inventory.sensitive import QuickRules, SensitiveRules
from ...record import call_to_dict

if TYPE_CHECKING:
    from ..config import Config

TITLE = "API inventory (live)"


class LiveInventory:
    """Exporter protocol: ``export``, ``flush``, ``reopen``, ``close`` and ``stats``."""

    def __init__(self, table: RouteTable | None = None, *, max_endpoints: int = 20000,
                 bucket_seconds: int = 300, state: str | None = None) -> None:
        """``state``: a file the route table is written to on close (``inventory.state``: the next run
        starts from it)."""
        self.state = state
        self.inventory = Inventory(table if table is not None else RouteTable(), QuickRules(),
                                   max_keys=max_endpoints, bucket_seconds=bucket_seconds)
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {"exported": 0}

    def export(self, call: ApiCall) -> None:
        rec = call_to_dict(call)  # the record the JSON lines carry: `tlsmirror inventory --calls` reads them
        with self._lock:
            self.inventory.add(rec)
        self.stats["exported"] += 1

    def fold(self, part: Inventory) -> None:
        """Fold a worker's part (:meth:`InventoryFeed.take`): the calls it folded since its last part."""
        with self._lock:
            self.inventory.merge(part)
        self.stats["exported"] += part.calls + part.skipped

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
            from ...inventory.report import render  # the parent's only (a worker starts without it)

            return render(self.document(), None, TITLE).encode(), "text/html; charset=utf-8"

        return {"/inventory": as_json, "/inventory.html": as_html}


_NO_RULES = SensitiveRules(())  # a part travels without the rules (the parent does not scan again)


class InventoryFeed:
    """A worker's share of the live inventory: the calls it exported since its last part, folded into an
    :class:`~tlsmirror.inventory.inventory.Inventory` of at most ``max_endpoints`` endpoints, whose route
    table starts from the seeds of ``routes`` (the run's starting table as data: the parent has its
    paths already). :meth:`take` hands the part over and starts an empty one. One thread only."""

    def __init__(self, routes: dict[str, Any] | None = None, *, max_endpoints: int = 20000,
                 bucket_seconds: int = 300) -> None:
        base = RouteTable.from_dict(routes) if routes else RouteTable()
        self._config = base.config
        self._seeds = base.seeds
        self.max_endpoints = max_endpoints
        self.bucket_seconds = bucket_seconds
        self.rules = QuickRules()
        self.memo = FoldMemo(self.rules)  # what folding remembers lives as long as the feed, not a part
        self.current = self._new()

    def _new(self) -> Inventory:
        table = RouteTable(self._config, seeds={h: list(ts) for h, ts in self._seeds.items()})
        return Inventory(table, self.rules, bucket_seconds=self.bucket_seconds, max_keys=self.max_endpoints,
                         memo=self.memo)

    def add(self, call: ApiCall) -> None:
        self.current.add(call_to_dict(call))

    def add_record(self, rec: dict[str, Any]) -> None:
        """The record of a call, as the JSON lines carry it (built once for both)."""
        self.current.add(rec)

    def take(self) -> Inventory | None:
        """The part folded since the last one (None: no call since), ready to pickle; an empty one
        starts."""
        part = self.current
        if not part.calls and not part.skipped:
            return None
        self.current = self._new()
        part.rules = _NO_RULES
        part.routes.seeds = {}  # the parent's table has them
        for svc in part.routes.services.values():  # what the parent does not need: rebuilt from paths
            svc.root, svc.routes, svc.dirty = None, [], True
        return part


def inventory_feed(cfg: Config, routes: dict[str, Any] | None) -> InventoryFeed | None:
    """A worker's share of the live inventory (``inventory.enabled``); *routes*: the starting table as data
    (``EngineConfig.routes``, which the worker has). Here, not in :mod:`.seeds`: a worker reads no file."""
    inv = cfg.inventory
    if not inv.enabled:
        return None
    return InventoryFeed(routes, max_endpoints=inv.max_endpoints)
