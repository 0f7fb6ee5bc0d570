"""`tlsmirror inventory`: captures (through the `replay` pipeline) or JSON-lines call records in; an
OpenAPI 3.1 document, a JSON inventory and a single-file HTML report out (docs/inventory.md)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from ...calls import ApiCall
from ...inventory.inventory import Inventory
from ...inventory.openapi import diff as diff_docs
from ...inventory.openapi import to_openapi
from ...inventory.report import render
from ...inventory.routes import RouteConfig, RouteTable
from ...record import call_to_dict
from ..errors import InputError


class InventoryExporter:
    """An exporter (shell/export) that folds every API call into an :class:`Inventory`."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.stats: dict[str, int] = {"exported": 0}

    def export(self, call: ApiCall) -> None:
        self.inventory.add(call_to_dict(call))
        self.stats["exported"] += 1

    def flush(self, timeout: float) -> bool:
        return True

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def _load_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        import yaml

        return yaml.safe_load(data)
    except Exception:
        raise InputError(f"{path}: neither JSON nor YAML") from None


def read_calls(path: str, inventory: Inventory, warn: Any = sys.stderr) -> int:
    """Fold the records of a JSON-lines file (``-``: stdin) into ``inventory``; returns bad lines."""
    bad = 0
    fh = sys.stdin.buffer if path == "-" else None
    try:
        f = fh or open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    try:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                inventory.add(rec)
            else:
                bad += 1
    finally:
        if fh is None:
            f.close()
    if bad:
        print(f"{path}: skipped {bad} line(s) that are not call records", file=warn)
    return bad


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def inventory_main(captures: Sequence[str] = (), calls: Sequence[str] = (), keylogs: Sequence[str] = (),
                   rsa_keys: Sequence[str] = (), ports: Sequence[int] = (), out_dir: str = ".",
                   previous: str | None = None, seed_openapi: str | None = None, state: str | None = None,
                   max_routes: int = 200, max_siblings: int = 20, body_limit: int = 128 * 1024,
                   title: str = "API inventory") -> int:
    """Build the inventory from ``captures`` (decrypted as ``tlsmirror replay`` does) and/or ``calls``
    (JSON-lines files); write ``openapi.json``, ``inventory.json`` and ``inventory.html`` into
    ``out_dir``. ``previous``: an inventory JSON or an OpenAPI file (JSON/YAML) to diff against.
    ``seed_openapi``: an OpenAPI file whose paths seed the route templates. ``state``: a route table
    file read at start (when present) and written at the end. Returns the exit code."""
    if not captures and not calls:
        raise InputError("give capture files or --calls FILE.jsonl")
    cfg = RouteConfig(max_routes=max_routes, max_siblings=max_siblings)
    table = RouteTable(cfg)
    if state and os.path.exists(state):
        loaded = _load_json(state)
        if not isinstance(loaded, dict):
            raise InputError(f"{state}: not a route state file")
        table = RouteTable.from_dict(loaded)
        table.config = cfg
    if seed_openapi:
        doc = _load_json(seed_openapi)
        if not isinstance(doc, dict):
            raise InputError(f"{seed_openapi}: not an OpenAPI document")
        table.seed_openapi(doc)
    prev = None
    if previous:
        prev = _load_json(previous)
        if not isinstance(prev, dict):
            raise InputError(f"{previous}: not an inventory or OpenAPI document")
    inv = Inventory(table)
    code = 0
    if captures:
        from .replay import replay_main

        code = replay_main(captures, keylogs, rsa_keys, ports, output=os.devnull, body_limit=body_limit,
                           extra_exporters=[InventoryExporter(inv)])
    for path in calls:
        read_calls(path, inv)
    os.makedirs(out_dir, exist_ok=True)
    data = inv.to_dict()
    d = diff_docs(prev, data) if prev is not None else None
    if d is not None:
        data["diff"] = d
    _write(os.path.join(out_dir, "inventory.json"), json.dumps(data, indent=1, sort_keys=False))
    _write(os.path.join(out_dir, "openapi.json"), json.dumps(to_openapi(data, title), indent=1))
    _write(os.path.join(out_dir, "inventory.html"), render(data, d, title))
    if state:
        _write(state, json.dumps(table.to_dict()))
    n = sum(len(s["endpoints"]) for s in data["services"])
    print(f"inventory: {inv.calls} calls, {n} endpoints on {len(data['services'])} services -> {out_dir}/"
          "{inventory.json,openapi.json,inventory.html}", file=sys.stderr)
    return code
