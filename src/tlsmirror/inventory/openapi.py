"""OpenAPI 3.1 from an inventory, and diffs between inventories / OpenAPI documents. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .. import __version__ as _version

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_PARAM = re.compile(r"\{[^{}/]*\}")
_PARAM_SCHEMA: dict[str, dict[str, str]] = {
    "integer": {"type": "integer"},
    "uuid": {"type": "string", "format": "uuid"},
    "date": {"type": "string", "format": "date"},
    "email": {"type": "string", "format": "email"},
}


def _security_scheme(auth: str) -> tuple[str, dict[str, Any]]:
    """(name, OpenAPI security scheme) of an auth id from :func:`schema.auth_schemes`."""
    if auth in ("bearer", "bearer:jwt"):
        scheme: dict[str, Any] = {"type": "http", "scheme": "bearer"}
        if auth == "bearer:jwt":
            scheme["bearerFormat"] = "JWT"
            return "bearerJwt", scheme
        return "bearer", scheme
    if auth.startswith("apiKey:"):
        _, where, name = auth.split(":", 2)
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "key"
        return f"apiKey_{where}_{slug}", {"type": "apiKey", "in": where, "name": name}
    return re.sub(r"[^A-Za-z0-9]+", "_", auth) or "http", {"type": "http", "scheme": auth}


def _op_id(method: str, route: str, used: set[str]) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", route).strip("_") or "root"
    base = f"{method.lower()}_{slug}"
    name, i = base, 2
    while name in used:
        name = f"{base}_{i}"
        i += 1
    used.add(name)
    return name


def _content(types: Mapping[str, int], schema: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ct in sorted(types) or (["application/json"] if schema is not None else []):
        media: dict[str, Any] = {}
        if schema is not None and ("json" in ct or ct == "application/x-www-form-urlencoded"):
            media["schema"] = dict(schema)
        out[ct] = media
    return out


def to_openapi(inv: Mapping[str, Any], title: str = "API inventory") -> dict[str, Any]:
    """An OpenAPI 3.1 document from an inventory dict (:meth:`Inventory.to_dict`). Paths of every
    service are merged; each path item lists the servers it was seen on."""
    paths: dict[str, dict[str, Any]] = {}
    schemes: dict[str, dict[str, Any]] = {}
    servers_all: set[str] = set()
    used: set[str] = set()
    for svc in inv.get("services", []):
        for ep in svc.get("endpoints", []):
            method = str(ep["method"]).lower()
            if method not in METHODS:
                continue
            route = ep["route"]
            item = paths.setdefault(route, {})
            item.setdefault("servers", [])
            for s in ep.get("servers", []):
                servers_all.add(s)
                if {"url": s} not in item["servers"]:
                    item["servers"].append({"url": s})
            if method in item:
                continue  # the same route and method on another service: the first one describes it
            params: list[dict[str, Any]] = []
            for p in ep.get("path_params", []):
                params.append({"name": p["name"], "in": "path", "required": True,
                               "schema": dict(_PARAM_SCHEMA.get(p["type"], {"type": "string"}))})
            for loc, key in (("query", "query"), ("header", "headers")):
                for p in ep.get(key, []):
                    params.append({"name": p["name"], "in": loc, "required": bool(p["required"]),
                                   "schema": dict(p["schema"])})
            op: dict[str, Any] = {"operationId": _op_id(method, route, used),
                                  "summary": f"{method.upper()} {route}"}
            if params:
                op["parameters"] = params
            req = ep.get("request") or {}
            if req.get("content_types") or req.get("schema") is not None:
                op["requestBody"] = {"content": _content(req.get("content_types") or {}, req.get("schema"))}
            responses: dict[str, Any] = {}
            for status, r in sorted((ep.get("responses") or {}).items()):
                resp: dict[str, Any] = {"description": f"status {status} (seen {ep['status'].get(status, 0)}x)"}
                content = _content(r.get("content_types") or {}, r.get("schema"))
                if content:
                    resp["content"] = content
                responses[status] = resp
            if not responses:
                responses["default"] = {"description": "no response seen"}
            op["responses"] = responses
            sec: list[dict[str, list[str]]] = []
            for a in sorted(ep.get("auth") or {}):
                name, scheme = _security_scheme(a)
                schemes[name] = scheme
                if {name: []} not in sec:
                    sec.append({name: []})
            if sec:
                op["security"] = sec
            op["x-tlsmirror-calls"] = ep["count"]
            if ep.get("sensitive"):
                op["x-tlsmirror-sensitive"] = sorted({f"{s['type']}@{s['location']}" for s in ep["sensitive"]})
            item[method] = op
    for item in paths.values():
        if not item.get("servers"):
            item.pop("servers", None)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": f"inventory-{inv.get('v', 1)}",
                 "description": f"Inferred by tlsmirror {_version} from {inv.get('calls', 0)} observed API calls."},
        "paths": {k: paths[k] for k in sorted(paths)},
    }
    if servers_all:
        doc["servers"] = [{"url": s} for s in sorted(servers_all)]
    if schemes:
        doc["components"] = {"securitySchemes": {k: schemes[k] for k in sorted(schemes)}}
    return doc


# --- diff ------------------------------------------------------------------------------------------


def _norm(route: str) -> str:
    return _PARAM.sub("{}", route)


def _schema_fields(schema: Any, prefix: str = "") -> dict[str, str]:
    """Field paths (``a.b[].c``) of a JSON Schema with their types."""
    out: dict[str, str] = {}
    if not isinstance(schema, Mapping):
        return out
    props = schema.get("properties")
    if isinstance(props, Mapping):
        for k in sorted(props):
            sub = props[k]
            path = f"{prefix}.{k}" if prefix else str(k)
            t = sub.get("type") if isinstance(sub, Mapping) else None
            out[path] = "|".join(t) if isinstance(t, list) else str(t or "any")
            out.update(_schema_fields(sub, path))
    items = schema.get("items")
    if isinstance(items, Mapping):
        out.update(_schema_fields(items, prefix + "[]"))
    return out


Surface = dict[str, dict[str, Any]]  # "METHOD /route/{}" -> {"route", "params", "request", "responses"}


def surface_of_inventory(inv: Mapping[str, Any]) -> Surface:
    out: Surface = {}
    for svc in inv.get("services", []):
        for ep in svc.get("endpoints", []):
            key = f"{str(ep['method']).upper()} {_norm(ep['route'])}"
            if key in out:
                continue
            params = {f"query:{p['name']}" for p in ep.get("query", [])}
            params |= {f"header:{p['name']}" for p in ep.get("headers", [])}
            req = ep.get("request") or {}
            out[key] = {
                "route": ep["route"],
                "params": sorted(params),
                "request": _schema_fields(req.get("schema")),
                "responses": {s: _schema_fields(r.get("schema")) for s, r in (ep.get("responses") or {}).items()},
            }
    return out


def surface_of_openapi(doc: Mapping[str, Any]) -> Surface:
    out: Surface = {}
    for route, item in (doc.get("paths") or {}).items():
        if not isinstance(item, Mapping):
            continue
        shared = item.get("parameters") or []
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, Mapping):
                continue
            params = set()
            for p in [*shared, *(op.get("parameters") or [])]:
                if isinstance(p, Mapping) and p.get("in") in ("query", "header") and "name" in p:
                    params.add(f"{p['in']}:{str(p['name']).lower() if p['in'] == 'header' else p['name']}")
            req_schema = None
            body = op.get("requestBody")
            if isinstance(body, Mapping):
                for media in (body.get("content") or {}).values():
                    if isinstance(media, Mapping) and "schema" in media:
                        req_schema = media["schema"]
                        break
            responses: dict[str, dict[str, str]] = {}
            for status, r in (op.get("responses") or {}).items():
                schema = None
                if isinstance(r, Mapping):
                    for media in (r.get("content") or {}).values():
                        if isinstance(media, Mapping) and "schema" in media:
                            schema = media["schema"]
                            break
                if str(status) != "default":
                    responses[str(status)] = _schema_fields(schema)
            out[f"{method.upper()} {_norm(route)}"] = {"route": route, "params": sorted(params),
                                                        "request": _schema_fields(req_schema),
                                                        "responses": responses}
    return out


def surface(doc: Mapping[str, Any]) -> Surface:
    """The comparable surface of an inventory dict or an OpenAPI document."""
    return surface_of_openapi(doc) if "openapi" in doc or "swagger" in doc else surface_of_inventory(doc)


def _field_changes(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, Any]:
    ch: dict[str, Any] = {}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    retyped = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    if added:
        ch["added"] = added
    if removed:
        ch["removed"] = removed
    if retyped:
        ch["type_changed"] = [{"field": k, "from": old[k], "to": new[k]} for k in retyped]
    return ch


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from ``old`` to ``new`` (inventories or OpenAPI documents, in any mix): endpoints
    ``new`` (in new only: shadow APIs when old is the documented spec), ``removed`` (in old only: zombie
    or unused), ``changed`` (parameters, request fields, response statuses and fields)."""
    a, b = surface(old), surface(new)
    changed = []
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        ch: dict[str, Any] = {}
        pa, pb = set(x["params"]), set(y["params"])
        if pb - pa:
            ch["params_added"] = sorted(pb - pa)
        if pa - pb:
            ch["params_removed"] = sorted(pa - pb)
        req = _field_changes(x["request"], y["request"])
        if req:
            ch["request"] = req
        sa, sb = set(x["responses"]), set(y["responses"])
        if sb - sa:
            ch["statuses_added"] = sorted(sb - sa)
        if sa - sb:
            ch["statuses_removed"] = sorted(sa - sb)
        resp = {s: c for s in sorted(sa & sb) if (c := _field_changes(x["responses"][s], y["responses"][s]))}
        if resp:
            ch["responses"] = resp
        if ch:
            changed.append({"endpoint": f"{key.split(' ', 1)[0]} {y['route']}", **ch})
    return {
        "new": [f"{k.split(' ', 1)[0]} {b[k]['route']}" for k in sorted(set(b) - set(a))],
        "removed": [f"{k.split(' ', 1)[0]} {a[k]['route']}" for k in sorted(set(a) - set(b))],
        "changed": changed,
    }
