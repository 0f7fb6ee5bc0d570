"""The API inventory: API call records (the JSON-lines dicts of ``docs/exchange-schema.md``) folded into
endpoints (service, method, route) with counts, status mix, latency percentiles per time bucket, first
and last seen, schemas, parameters, auth schemes and sensitive data types. Pure: time comes from the
records.

Records are folded per (service, method, *typed path*) first; routes are resolved when the inventory
is read (:meth:`Inventory.endpoints`), so a route that merges later (``/alice/...`` and ``/bob/...``
into ``/{param}/...``) gathers every call, whatever the order of arrival.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .routes import Route, RouteConfig, RouteTable, split_path, typed
from .schema import ParamSet, Shape, ValueMemo, auth_schemes, form_pairs, header_params
from .sensitive import SensitiveRules, scan_request

INVENTORY_VERSION = 1
_G = 1.04  # latency histogram: bins grow by 4% (percentiles within 2%)
_LOG_G = math.log(_G)
MAX_STATUSES = 32
MAX_CT = 8
MAX_SENSITIVE = 64
MAX_AUTH = 16


def _bin(ms: float) -> int:
    return math.floor(math.log(max(ms, 0.001)) / _LOG_G)


def percentile(hist: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0..1) of a latency histogram, in ms (the geometric middle of its bin)."""
    total = sum(hist.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return round(float(_G ** (b + 0.5)), 3)
    return round(float(_G ** (max(hist) + 0.5)), 3)


def _add(d: dict[Any, int], k: Any, n: int = 1, cap: int = 1 << 30) -> None:
    if k in d:
        d[k] += n
    elif len(d) < cap:
        d[k] = n


@dataclass(slots=True)
class Stats:
    """What one endpoint (or one typed path of it) saw. Mergeable."""

    count: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # "200", ..., "none" (no response)
    latency: dict[int, int] = field(default_factory=dict)  # histogram bin -> calls
    timeline: dict[int, dict[int, int]] = field(default_factory=dict)  # bucket start (epoch s) -> histogram
    timeline_counts: dict[int, int] = field(default_factory=dict)
    first_seen: float | None = None
    last_seen: float | None = None
    request_types: dict[str, int] = field(default_factory=dict)
    request_shape: Shape | None = None
    responses: dict[str, Shape] = field(default_factory=dict)  # status -> JSON body shape
    response_types: dict[str, dict[str, int]] = field(default_factory=dict)  # status -> content types
    query: ParamSet = field(default_factory=ParamSet)
    headers: ParamSet = field(default_factory=ParamSet)
    auth: dict[str, int] = field(default_factory=dict)
    sensitive: dict[str, int] = field(default_factory=dict)  # "type\tlocation" -> calls
    flagged: int = 0  # calls with flags (partial records)
    servers: dict[str, int] = field(default_factory=dict)  # scheme://authority

    # parts travel pickled from the workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[Stats], tuple[Any, ...]]:
        return Stats, (self.count, self.statuses, self.latency, self.timeline, self.timeline_counts,
                       self.first_seen, self.last_seen, self.request_types, self.request_shape, self.responses,
                       self.response_types, self.query, self.headers, self.auth, self.sensitive, self.flagged,
                       self.servers)

    def merge(self, o: Stats) -> None:
        self.count += o.count
        for k, n in o.statuses.items():
            _add(self.statuses, k, n)
        for b, n in o.latency.items():
            _add(self.latency, b, n)
        for t, h in o.timeline.items():
            mine = self.timeline.setdefault(t, {})
            for b, n in h.items():
                _add(mine, b, n)
        for t, n in o.timeline_counts.items():
            _add(self.timeline_counts, t, n)
        if o.first_seen is not None and (self.first_seen is None or o.first_seen < self.first_seen):
            self.first_seen = o.first_seen
        if o.last_seen is not None and (self.last_seen is None or o.last_seen > self.last_seen):
            self.last_seen = o.last_seen
        for k, n in o.request_types.items():
            _add(self.request_types, k, n)
        if o.request_shape is not None:
            if self.request_shape is None:
                self.request_shape = Shape()
            self.request_shape.merge(o.request_shape)
        for st, sh in o.responses.items():
            self.responses.setdefault(st, Shape()).merge(sh)
        for st, cts in o.response_types.items():
            mine_ct = self.response_types.setdefault(st, {})
            for k, n in cts.items():
                _add(mine_ct, k, n)
        self.query.merge(o.query)
        self.headers.merge(o.headers)
        for k, n in o.auth.items():
            _add(self.auth, k, n)
        for k, n in o.sensitive.items():
            _add(self.sensitive, k, n)
        self.flagged += o.flagged
        for k, n in o.servers.items():
            _add(self.servers, k, n)


def _ct(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value.split(";", 1)[0].strip().lower()[:100] or None


_NO_BODY: tuple[Any, str | None, bool] = (None, None, False)


def _json_body(body: Any, ct: str | None) -> tuple[Any, str | None, bool]:
    """(parsed JSON or form value or None, text for scanning or None, whether it parsed) of a record
    side's body and content type."""
    if not isinstance(body, Mapping) or body.get("encoding") != "utf-8":
        return _NO_BODY
    text = body.get("text")
    if not isinstance(text, str):
        return _NO_BODY
    ct = ct or ""
    if not body.get("truncated") and ("json" in ct or (not ct and text[:1] in "{[")):
        try:
            return orjson.loads(text), None, True
        except orjson.JSONDecodeError:
            return None, text, False
    if ct == "application/x-www-form-urlencoded" and not body.get("truncated"):
        return dict(form_pairs(text)), None, True
    return None, text, False


def _pairs(v: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(v, (list, tuple)):
        for p in v:
            if isinstance(p, (list, tuple)) and len(p) >= 2:
                a = p[0]
                b = p[1]
                if isinstance(a, str) and isinstance(b, str):
                    out.append((a, b))
    return out


MEMO_PATHS = 8192  # raw paths whose segments and typed segments are remembered


class FoldMemo:
    """What folding remembers from call to call, whatever the inventory (a worker's parts share one; it
    never travels with a part): the segments and typed segments of raw paths, the formats and scalar
    types of short values. Answers are the same as without it; bounded."""

    __slots__ = ("paths", "values")

    def __init__(self) -> None:
        self.paths: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self.values = ValueMemo()

    def split(self, path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(segments, typed segments) of a request path."""
        known = self.paths.get(path)
        if known is None:
            raw = split_path(path)
            known = (raw, typed(raw))
            if len(self.paths) >= MEMO_PATHS:
                self.paths.clear()
            self.paths[path] = known
        return known


@dataclass(slots=True)
class Endpoint:
    host: str
    method: str
    route: Route
    stats: Stats


@dataclass(slots=True)
class Inventory:
    """Fold records with :meth:`add`; read :meth:`endpoints` or :meth:`to_dict`."""

    routes: RouteTable = field(default_factory=RouteTable)
    rules: SensitiveRules = field(default_factory=SensitiveRules)
    bucket_seconds: int = 300
    max_buckets: int = 288  # per endpoint: the latest ones are kept
    max_keys: int = 20000  # (service, method, typed path) folds kept; then calls fold into their route
    keys: dict[tuple[str, str, tuple[str, ...]], Stats] = field(default_factory=dict)
    calls: int = 0
    skipped: int = 0  # records without a method or a path (responses without requests, CONNECT)
    memo: FoldMemo | None = None  # made at the first call; None before pickling (InventoryFeed.take)

    # parts travel pickled from the workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[Inventory], tuple[Any, ...]]:
        return Inventory, (self.routes, self.rules, self.bucket_seconds, self.max_buckets, self.max_keys,
                           self.keys, self.calls, self.skipped)  # not the memo

    def add(self, rec: Mapping[str, Any]) -> None:
        method = rec.get("method")
        path = rec.get("path")
        if not isinstance(method, str) or not isinstance(path, str):
            self.skipped += 1
            return
        self.calls += 1
        authority = rec.get("authority")
        host = authority.lower() if isinstance(authority, str) else ""
        if not host:
            srv = rec.get("server")
            if isinstance(srv, Mapping):
                host = f"{srv.get('ip')}:{srv.get('port')}"
        memo = self.memo
        if memo is None:
            memo = self.memo = FoldMemo()
        raw, tp = memo.split(path)
        self.routes.observe_split(host, raw, tp)
        key = (host, method.upper()[:16], tp)
        st = self.keys.get(key)
        if st is None:
            if len(self.keys) >= self.max_keys:
                r = self.routes.route(host, path)
                key = (host, key[1], ("\x00route", r.template))
                st = self.keys.get(key)
            if st is None:
                st = self.keys[key] = Stats()
        self._fold(st, rec, raw, host, memo)

    def add_all(self, records: Iterable[Mapping[str, Any]]) -> None:
        for r in records:
            self.add(r)

    def _fold(self, st: Stats, rec: Mapping[str, Any], raw: tuple[str, ...], host: str, memo: FoldMemo) -> None:
        st.count += 1
        status = rec.get("status")
        skey = str(status) if isinstance(status, int) else "none"
        _add(st.statuses, skey, 1, MAX_STATUSES)
        ts = rec.get("request_start_ts")
        if not isinstance(ts, (int, float)):
            ts = rec.get("response_start_ts")
        dur = rec.get("duration_ms")
        b = _bin(float(dur)) if isinstance(dur, (int, float)) and status is not None else None
        if isinstance(ts, (int, float)):
            t = float(ts)
            if st.first_seen is None or t < st.first_seen:
                st.first_seen = t
            if st.last_seen is None or t > st.last_seen:
                st.last_seen = t
            bucket = int(ts // self.bucket_seconds * self.bucket_seconds)
            counts = st.timeline_counts
            counts[bucket] = counts.get(bucket, 0) + 1
            if b is not None:
                hist = st.timeline.get(bucket)
                if hist is None:
                    hist = st.timeline[bucket] = {}
                hist[b] = hist.get(b, 0) + 1
            if len(counts) > self.max_buckets:
                oldest = min(counts)
                del counts[oldest]
                st.timeline.pop(oldest, None)
        if b is not None:
            st.latency[b] = st.latency.get(b, 0) + 1
        if rec.get("flags"):
            st.flagged += 1
        scheme = rec.get("scheme")
        _add(st.servers, f"{scheme if isinstance(scheme, str) else 'https'}://{host}", 1, 8)
        req = rec.get("request")
        req = req if isinstance(req, Mapping) else {}
        resp = rec.get("response")
        resp = resp if isinstance(resp, Mapping) else {}
        headers = _pairs(req.get("headers"))
        query = _pairs(rec.get("query"))
        values = memo.values
        st.query.observe(query, values)
        st.headers.observe(header_params(headers), values)
        auth = auth_schemes(headers, query)
        if auth:
            for a in sorted(auth):
                _add(st.auth, a, 1, MAX_AUTH)
        req_ct = _ct(req.get("content_type"))
        req_body = req.get("body")
        req_val, req_text, req_parsed = _json_body(req_body, req_ct) if req_body is not None else _NO_BODY
        if req_body is not None and req_ct:
            _add(st.request_types, req_ct, 1, MAX_CT)
        if req_parsed:
            if st.request_shape is None:
                st.request_shape = Shape()
            st.request_shape.observe(req_val, 0, values)
        resp_ct = _ct(resp.get("content_type"))
        resp_body = resp.get("body")
        resp_val, resp_text, resp_parsed = (_json_body(resp_body, resp_ct) if resp_body is not None
                                                       else _NO_BODY)
        if status is not None:
            if resp_body is not None and resp_ct:
                _add(st.response_types.setdefault(skey, {}), resp_ct, 1, MAX_CT)
            if resp_parsed and (skey in st.responses or len(st.responses) < MAX_STATUSES):
                shape = st.responses.get(skey)
                if shape is None:
                    shape = st.responses[skey] = Shape()
                shape.observe(resp_val, 0, values)
        found = scan_request(self.rules, raw, query, headers, _pairs(resp.get("headers")),
                             req_val if req_parsed else None, resp_val if resp_parsed else None,
                             req_text, resp_text)
        if found:
            for kind, loc in sorted(found):
                _add(st.sensitive, f"{kind}\t{loc}", 1, MAX_SENSITIVE)

    def merge(self, other: Inventory) -> None:
        """Fold another inventory (the calls another worker saw) into this one: the result is the
        inventory of both sets of calls, as if one inventory had seen them all (within ``max_keys``)."""
        self.routes.merge(other.routes)
        for key, st in other.keys.items():
            mine = self.keys.get(key)
            if mine is None:
                if len(self.keys) >= self.max_keys and key[2][:1] != ("\x00route",):
                    r = self.routes.route(key[0], "/" + "/".join(key[2]))
                    key = (key[0], key[1], ("\x00route", r.template))
                    mine = self.keys.get(key)
                if mine is None:
                    mine = self.keys[key] = Stats()
            mine.merge(st)
            while len(mine.timeline_counts) > self.max_buckets:
                oldest = min(mine.timeline_counts)
                del mine.timeline_counts[oldest]
                mine.timeline.pop(oldest, None)
        self.calls += other.calls
        self.skipped += other.skipped

    def endpoints(self) -> list[Endpoint]:
        """Endpoints sorted by (service, route, method), each folding every typed path of its route."""
        merged: dict[tuple[str, str, str], Endpoint] = {}
        for (host, method, tp), st in sorted(self.keys.items(), key=lambda kv: kv[0]):
            if tp[:1] == ("\x00route",):
                route = self.routes.route(host, tp[1])
            else:
                route = self.routes.route(host, "/" + "/".join(tp))
            k = (host, route.template, method)
            ep = merged.get(k)
            if ep is None:
                ep = merged[k] = Endpoint(host, method, route, Stats())
            ep.stats.merge(st)
        return [merged[k] for k in sorted(merged)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON inventory (``docs/inventory.md``)."""
        eps = self.endpoints()
        first = [e.stats.first_seen for e in eps if e.stats.first_seen is not None]
        last = [e.stats.last_seen for e in eps if e.stats.last_seen is not None]
        services: dict[str, list[dict[str, Any]]] = {}
        for e in eps:
            services.setdefault(e.host, []).append(endpoint_dict(e, self.bucket_seconds))
        return {
            "v": INVENTORY_VERSION,
            "calls": self.calls,
            "skipped": self.skipped,
            "first_seen": min(first) if first else None,
            "last_seen": max(last) if last else None,
            "bucket_seconds": self.bucket_seconds,
            "services": [{"host": h, "endpoints": services[h]} for h in sorted(services)],
            "routes": self.routes.to_dict(),
        }

    @classmethod
    def with_config(cls, route_config: RouteConfig | None = None, rules: SensitiveRules | None = None,
                    bucket_seconds: int = 300) -> Inventory:
        return cls(RouteTable(route_config or RouteConfig()), rules or SensitiveRules(),
                   bucket_seconds=bucket_seconds)


def _lat(hist: Mapping[int, int]) -> dict[str, float | None]:
    return {"p50": percentile(hist, 0.5), "p95": percentile(hist, 0.95), "p99": percentile(hist, 0.99)}


def endpoint_dict(e: Endpoint, bucket_seconds: int) -> dict[str, Any]:
    st = e.stats
    path_params = [{"name": n, "type": t} for n, t in e.route.params]
    sens: dict[tuple[str, str], int] = {}
    for k, n in st.sensitive.items():
        t, _, loc = k.partition("\t")
        sens[(t, loc)] = sens.get((t, loc), 0) + n
    return {
        "method": e.method,
        "route": e.route.template,
        "seeded": e.route.seeded,
        "path_params": path_params,
        "count": st.count,
        "flagged": st.flagged,
        "status": dict(sorted(st.statuses.items())),
        "latency_ms": _lat(st.latency),
        "timeline": [{"t": t, "count": st.timeline_counts.get(t, 0), **_lat(st.timeline.get(t, {}))}
                     for t in sorted(st.timeline_counts)],
        "first_seen": st.first_seen,
        "last_seen": st.last_seen,
        "servers": sorted(st.servers),
        "query": [{"name": n, "required": st.query.required(n), "schema": st.query.to_schema(n),
                   "count": st.query.params[n]["count"]} for n in sorted(st.query.params)],
        "headers": [{"name": n, "required": st.headers.required(n), "schema": st.headers.to_schema(n),
                     "count": st.headers.params[n]["count"]} for n in sorted(st.headers.params)],
        "auth": dict(sorted(st.auth.items())),
        "request": {"content_types": dict(sorted(st.request_types.items())),
                    "schema": st.request_shape.to_schema() if st.request_shape is not None else None,
                    "fields": st.request_shape.fields() if st.request_shape is not None else {}},
        "responses": {s: {"content_types": dict(sorted(st.response_types.get(s, {}).items())),
                          "schema": st.responses[s].to_schema() if s in st.responses else None,
                          "fields": st.responses[s].fields() if s in st.responses else {}}
                      for s in sorted(set(st.response_types) | set(st.responses) |
                                      {k for k in st.statuses if k != "none"})},
        "sensitive": [{"type": t, "location": loc, "count": n} for (t, loc), n in sorted(sens.items())],
    }
