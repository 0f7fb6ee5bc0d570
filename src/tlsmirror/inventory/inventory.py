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
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from .routes import Route, RouteConfig, RouteTable, split_path, typed
from .schema import (
    API_KEY_HEADERS,
    API_KEY_QUERY,
    SESSION_COOKIE,
    STANDARD_HEADERS,
    ParamSet,
    Shape,
    ValueMemo,
    _is_jwt,
    form_pairs,
)
from .sensitive import NO_HITS, Hits, SensitiveRules, body_hits, path_hits, scan_request

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


_NONE: Final = 0  # what a record side's body is to the inventory: nothing to read,
_JSON: Final = 1  # JSON to parse,
_FORM: Final = 2  # a form to parse,
_TEXT: Final = 3  # text to scan as one value


def _body_kind(body: Any, ct: str | None) -> tuple[int, str]:
    """What to do with a record side's body (given its content type), and its text."""
    if not isinstance(body, (dict, Mapping)):
        return _NONE, ""
    if body.get("encoding") != "utf-8":
        return _NONE, ""
    text = body.get("text")
    if not isinstance(text, str):
        return _NONE, ""
    ct = ct or ""
    if not body.get("truncated") and ("json" in ct or (not ct and text[:1] in "{[")):
        return _JSON, text
    if ct == "application/x-www-form-urlencoded" and not body.get("truncated"):
        return _FORM, text
    return _TEXT, text


def _side(v: Any) -> Mapping[str, Any]:
    if isinstance(v, (dict, Mapping)):
        return v
    return _EMPTY


_EMPTY: Final[Mapping[str, Any]] = {}


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


MEMO_PATHS: Final = 8192  # raw paths whose segments, typed segments and sensitive types are remembered
MEMO_NAMES: Final = 4096  # header names, content types and auth values remembered; then that memory starts again
MEMO_AUTH_TEXT: Final = 4096  # longer Authorization / Cookie values are not remembered
BODY_MEMO_CHARS: Final = 1 << 20  # characters of remembered bodies (each counts 256 more); then it starts again
BODY_MEMO_TEXT: Final = 64 * 1024  # longer bodies are never remembered
_ENTRY_CHARS: Final = 256

# what a request header is to the inventory (header_params and auth_schemes in one look-up)
_H_PARAM: Final = 0  # an API parameter
_H_SKIP: Final = 1  # standard (transport, negotiation) or a pseudo-header
_H_AUTHZ: Final = 2  # Authorization, Proxy-Authorization
_H_KEY: Final = 3  # an API-key header
_H_COOKIE: Final = 4


def _header_kind(name: str) -> int:
    if name in ("authorization", "proxy-authorization"):
        return _H_AUTHZ
    if name in API_KEY_HEADERS:
        return _H_KEY
    if name == "cookie":
        return _H_COOKIE
    if name in STANDARD_HEADERS or name.startswith(":"):
        return _H_SKIP
    return _H_PARAM


def _authz_scheme(value: str) -> str:
    """The auth scheme id of an Authorization value (as :func:`~.schema.auth_schemes` names it), "" for
    a bare token (``apiKey:header:<name>``)."""
    scheme, _, cred = value.strip().partition(" ")
    s = scheme.lower()
    if not s or len(s) > 32 or not s.replace("-", "").isalnum():
        return ""
    if s == "bearer":
        return "bearer:jwt" if _is_jwt(cred.strip()) else "bearer"
    return s


def _session_cookies(value: str) -> tuple[str, ...]:
    """The session-like cookie names of a Cookie value, in order."""
    out = []
    for part in value.strip().split(";"):
        cname = part.split("=", 1)[0].strip()
        if cname and len(cname) <= 64 and SESSION_COOKIE.search(cname):
            out.append(cname)
    return tuple(out)


class BodyFold:
    """What one JSON body text gives the inventory, remembered: whether it parses, the shape a fresh
    :class:`Shape` takes observing it (None when a cap was met: then the body is observed again), the
    sensitive types its values hold."""

    __slots__ = ("hits", "parsed", "shape")

    def __init__(self, parsed: bool, shape: Shape | None, hits: Hits) -> None:
        self.parsed = parsed
        self.shape = shape
        self.hits = hits


_SEEN: Final = BodyFold(False, None, NO_HITS)  # a body seen once: remembered at its second call


class FoldMemo:
    """What folding remembers from call to call, whatever the inventory (a worker's parts share one; it
    never travels with a part), for one set of sensitive-data rules: the segments, typed segments and
    sensitive types of raw paths, the formats and scalar types of short values, header names' kinds,
    content types, auth values' schemes, and JSON bodies that repeat (keyed by their text: whether they
    parse, their shape, their sensitive types). Answers are the same as without it; bounded."""

    __slots__ = ("auth", "bodies", "body_chars", "cookies", "cts", "names", "paths", "rules", "values")

    def __init__(self, rules: SensitiveRules | None = None) -> None:
        self.rules = rules if rules is not None else SensitiveRules()
        self.paths: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[AbstractSet[str], ...]]] = {}
        self.values = ValueMemo()
        self.names: dict[str, tuple[int, str]] = {}  # raw header name -> (kind, lowercased name)
        self.cts: dict[str, str | None] = {}  # raw content type -> _ct of it
        self.auth: dict[str, str] = {}  # Authorization value -> _authz_scheme of it
        self.cookies: dict[str, tuple[str, ...]] = {}  # Cookie value -> _session_cookies of it
        self.bodies: dict[str, BodyFold] = {}
        self.body_chars = 0

    def split(self, path: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[AbstractSet[str], ...]]:
        """(segments, typed segments, the sensitive types of the segments: :func:`.sensitive.path_hits`)
        of a request path."""
        known = self.paths.get(path)
        if known is None:
            raw = split_path(path)
            known = (raw, typed(raw), path_hits(self.rules, raw))
            if len(self.paths) >= MEMO_PATHS:
                self.paths.clear()
            self.paths[path] = known
        return known

    def ct(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        cts = self.cts
        if value in cts:
            return cts[value]
        c = _ct(value)
        if len(cts) >= MEMO_NAMES:
            cts.clear()
        cts[value] = c
        return c

    def header(self, name: str) -> tuple[int, str]:
        known = self.names.get(name)
        if known is None:
            low = name.lower()
            known = (_header_kind(low), low)
            if len(self.names) >= MEMO_NAMES:
                self.names.clear()
            self.names[name] = known
        return known

    def authz(self, value: str) -> str:
        known = self.auth.get(value)
        if known is None:
            known = _authz_scheme(value)
            if len(value) <= MEMO_AUTH_TEXT:
                if len(self.auth) >= MEMO_NAMES:
                    self.auth.clear()
                self.auth[value] = known
        return known

    def cookie(self, value: str) -> tuple[str, ...]:
        known = self.cookies.get(value)
        if known is None:
            known = _session_cookies(value)
            if len(value) <= MEMO_AUTH_TEXT:
                if len(self.cookies) >= MEMO_NAMES:
                    self.cookies.clear()
                self.cookies[value] = known
        return known

    def body(self, text: str) -> BodyFold | None:
        """The remembered fold of a JSON body text, made at its second call (None: not remembered, the
        first call or too long)."""
        n = len(text)
        if n > BODY_MEMO_TEXT:
            return None
        known = self.bodies.get(text)
        if known is not None and known is not _SEEN:
            return known
        if known is None:
            fold = _SEEN
        else:
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                fold = BodyFold(False, None, NO_HITS)
            else:
                shape = Shape()
                shape.observe(value, 0, self.values)
                fold = BodyFold(True, shape if shape.clean() else None, body_hits(self.rules, value))
        if known is None:
            if self.body_chars + n + _ENTRY_CHARS > BODY_MEMO_CHARS:
                self.bodies.clear()
                self.body_chars = 0
            self.body_chars += n + _ENTRY_CHARS
        self.bodies[text] = fold
        return None if fold is _SEEN else fold


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
            if isinstance(srv, (dict, Mapping)):
                host = f"{srv.get('ip')}:{srv.get('port')}"
        memo = self.memo
        if memo is None or memo.rules is not self.rules:
            memo = self.memo = FoldMemo(self.rules)
        raw, tp, path_found = memo.split(path)
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
        self._fold(st, rec, raw, path_found, host, memo)

    def add_all(self, records: Iterable[Mapping[str, Any]]) -> None:
        for r in records:
            self.add(r)

    def _fold(self, st: Stats, rec: Mapping[str, Any], raw: tuple[str, ...],
              path_found: tuple[AbstractSet[str], ...], host: str, memo: FoldMemo) -> None:
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
        req = _side(rec.get("request"))
        resp = _side(rec.get("response"))
        headers = _pairs(req.get("headers"))
        query = _pairs(rec.get("query"))
        values = memo.values
        st.query.observe(query, values)
        # header parameters and auth schemes in one pass (schema.header_params, schema.auth_schemes)
        params: list[tuple[str, str]] = []
        auth: set[str] = set()
        for name, value in headers:
            kind, low = memo.header(name)
            if kind == _H_PARAM:
                params.append((low, value))
            elif kind == _H_AUTHZ:
                a = memo.authz(value)
                auth.add(a if a else "apiKey:header:" + low)
            elif kind == _H_KEY:
                auth.add("apiKey:header:" + low)
            elif kind == _H_COOKIE:
                for cname in memo.cookie(value):
                    auth.add("apiKey:cookie:" + cname)
        for q in query:
            if q[0].lower() in API_KEY_QUERY:
                auth.add("apiKey:query:" + q[0])
        st.headers.observe(params, values)
        if auth:
            for a in sorted(auth):
                _add(st.auth, a, 1, MAX_AUTH)
        req_body = req.get("body")
        req_ct = memo.ct(req.get("content_type"))
        if req_body is not None and req_ct:
            _add(st.request_types, req_ct, 1, MAX_CT)
        req_val, req_text, req_hits, req_fold = self._body(req_body, req_ct, memo)
        if req_fold is not None or req_hits is not None:
            if st.request_shape is None:
                st.request_shape = Shape()
            if req_fold is not None:
                st.request_shape.add_observed(req_fold)
            else:
                st.request_shape.observe(req_val, 0, values)
        resp_body = resp.get("body")
        resp_ct = memo.ct(resp.get("content_type"))
        resp_val, resp_text, resp_hits, resp_fold = self._body(resp_body, resp_ct, memo)
        if status is not None:
            if resp_body is not None and resp_ct:
                _add(st.response_types.setdefault(skey, {}), resp_ct, 1, MAX_CT)
            if ((resp_fold is not None or resp_hits is not None)
                    and (skey in st.responses or len(st.responses) < MAX_STATUSES)):
                shape = st.responses.get(skey)
                if shape is None:
                    shape = st.responses[skey] = Shape()
                if resp_fold is not None:
                    shape.add_observed(resp_fold)
                else:
                    shape.observe(resp_val, 0, values)
        found = scan_request(self.rules, raw, query, headers, _pairs(resp.get("headers")), None, None,
                             req_text, resp_text, path_found=path_found, request_hits=req_hits,
                             response_hits=resp_hits)
        if found:
            for kind_s, loc in sorted(found):
                _add(st.sensitive, f"{kind_s}\t{loc}", 1, MAX_SENSITIVE)

    def _body(self, body: Any, ct: str | None, memo: FoldMemo) -> tuple[Any, str | None, Hits | None, Shape | None]:
        """A record side's body: (the parsed value, the text to scan as one value, what the values hold
        for the sensitive scan, a remembered shape to fold). Parsed: hits is not None, and either the
        value is given or the remembered shape."""
        if body is None:
            return None, None, None, None
        kind, text = _body_kind(body, ct)
        if kind == _JSON:
            fold = memo.body(text)
            if fold is not None:
                if not fold.parsed:
                    return None, text, None, None
                if fold.shape is not None:
                    return None, None, fold.hits, fold.shape
                return orjson.loads(text), None, fold.hits, None  # a cap met: observed again
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                return None, text, None, None
            return value, None, body_hits(self.rules, value), None
        if kind == _FORM:
            value = dict(form_pairs(text))
            return value, None, body_hits(self.rules, value), None
        if kind == _TEXT:
            return None, text, None, None
        return None, None, None, None

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
