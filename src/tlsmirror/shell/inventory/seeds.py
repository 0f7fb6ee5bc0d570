"""The route table a run starts from (``inventory.*`` keys): a state file and an OpenAPI file's paths."""

from __future__ import annotations

import os
from typing import Any

from ...inventory.routes import RouteConfig, RouteTable
from ..config import Config
from ..errors import InputError
from .live import LiveInventory


def route_table(cfg: Config) -> RouteTable:
    """A route table with the configured caps, started from ``inventory.state`` (when the file exists)
    and seeded with the paths of ``inventory.seed_openapi``. Raises InputError for a bad file."""
    inv = cfg.inventory
    rc = RouteConfig(max_routes=inv.max_routes, max_siblings=inv.max_siblings)
    table = RouteTable(rc)
    if not (inv.state or inv.seed_openapi):
        return table
    from ..offline.inventory import _load_json  # the offline inventory's reader (and its OpenAPI, report)

    if inv.state and os.path.exists(inv.state):
        loaded = _load_json(inv.state)
        if not isinstance(loaded, dict):
            raise InputError(f"inventory.state {inv.state!r}: not a route state file")
        table = RouteTable.from_dict(loaded)
        table.config = rc
    if inv.seed_openapi:
        doc = _load_json(inv.seed_openapi)
        if not isinstance(doc, dict):
            raise InputError(f"inventory.seed_openapi {inv.seed_openapi!r}: not an OpenAPI document")
        table.seed_openapi(doc)
    return table


def engine_routes(cfg: Config) -> dict[str, Any]:
    """``EngineConfig(routes=...)``: the starting route table as data (it travels to the workers)."""
    return route_table(cfg).to_dict()


def live_inventory(cfg: Config) -> LiveInventory | None:
    """The daemon's live inventory (``inventory.enabled``), started from the configured route table."""
    inv = cfg.inventory
    if not inv.enabled:
        return None
    return LiveInventory(route_table(cfg), max_endpoints=inv.max_endpoints, state=inv.state)

