"""Route templating: raw request paths in, bounded route templates (``/users/{user_id}/orders``) out.

Pure and deterministic: the routes of a service are a function of the *set* of distinct (typed)
paths it has seen, so the arrival order never changes them. Two steps:

1. Segment typing (:func:`segment_type`): integers, UUIDs, hex ids, dates, emails and base64-ish
   tokens become typed parameters at once; version segments (``v1``, ``v2.1``) and words stay static.
2. Per service (host), per tree level, high-cardinality static siblings are merged into one
   ``{param}``: at a node with more than ``max_siblings`` distinct static children, children whose
   subtrees have the same shape are merged when the group is larger than ``max_siblings``; if more than
   ``max_siblings`` remain, all are merged. Then, while the service has more than ``max_routes``
   routes, the node with the most children has all of them (typed ones too) merged into one parameter;
   a fully merged service has at most one route per depth, so the cap holds for any ``max_routes`` of
   at least ``MAX_SEGMENTS + 1``.

Parameter names come from the parent segment (``/users/{user_id}``, ``/repos/{repo}``) or the type
(``{id}``, ``{uuid}``, ``{date}``, ...); OpenAPI ``paths`` can seed a service with named templates
(``/{owner}/{repo}/hooks``) that take precedence over inferred ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

# typed tokens inside the stored path sets: "\x00" + type (never a valid literal segment of a path)
_T = "\x00"
WILD = _T + "any"  # a merged (formerly static) segment
TYPES = ("integer", "uuid", "hex", "date", "email", "token")

_INT = re.compile(r"\d+\Z")


class _Lazy:
    """The other segment patterns, compiled on first use (most runs type few long segments: the engine
    imports this module at start-up, and compiling them costs more than a capture slice's routing)."""

    __slots__ = ("date", "email", "hex", "token_chars", "uuid", "version")

    def __init__(self) -> None:
        self.uuid = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
        self.hex = re.compile(r"[0-9a-fA-F]{8,}\Z")
        self.date = re.compile(
            r"\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:?\d{2})?)?\Z")
        self.email = re.compile(r"[^@/\s]+(?:@|%40)[A-Za-z0-9.-]+\.[A-Za-z]{2,}\Z")
        self.version = re.compile(r"[vV]\d+(?:\.\d+)*\Z")
        self.token_chars = re.compile(r"[A-Za-z0-9_\-+=.~%]+\Z")


_lazy: list[_Lazy] = []


def _patterns() -> _Lazy:
    if not _lazy:
        _lazy.append(_Lazy())
    return _lazy[0]


_WORD = re.compile(r"[A-Za-z][A-Za-z_-]*\Z")
_PARAM = re.compile(r"\{([^{}/]*)\}\Z")

MAX_SEGMENTS = 32  # deeper paths are cut: the rest becomes one {rest} segment
MAX_SEGMENT_LEN = 200


def segment_type(seg: str) -> str | None:
    """The type of a path segment (one of :data:`TYPES`), or None when it is static."""
    if not seg:
        return None
    if _INT.match(seg):
        return "integer"
    n = len(seg)
    if n < 8 and "@" not in seg:  # shorter than every pattern below but the version's (cheap exit)
        return None
    p = _patterns()
    if p.version.match(seg):
        return None
    if n == 36 and p.uuid.match(seg):
        return "uuid"
    if n >= 10 and p.date.match(seg):
        return "date"
    if p.hex.match(seg) and any(c.isdigit() for c in seg) and any(c.isalpha() for c in seg):
        return "hex"
    if ("@" in seg or "%40" in seg) and p.email.match(seg):
        return "email"
    if n > MAX_SEGMENT_LEN:
        return "token"
    if n >= 16 and p.token_chars.match(seg):
        classes = [0 if c.isdigit() else 1 if c.isupper() else 2 if c.islower() else 3 for c in seg]
        switches = sum(1 for a, b in pairwise(classes) if a != b and a != 3 and b != 3)
        if 0 in classes and (1 in classes or 2 in classes) and switches * 4 >= len(seg):
            return "token"
    return None


def split_path(path: str) -> tuple[str, ...]:
    """The segments of a path (query cut, empty segments dropped, at most MAX_SEGMENTS)."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:  # absolute-form target
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    segs = tuple(s for s in path.split("/") if s)
    if len(segs) > MAX_SEGMENTS:
        segs = (*segs[:MAX_SEGMENTS - 1], _T + "token")
    return segs


def typed(segs: Iterable[str]) -> tuple[str, ...]:
    """Segments with the typed ones replaced by their type tokens."""
    out = []
    for s in segs:
        if s.startswith(_T):
            out.append(s)
            continue
        t = segment_type(s)
        out.append(_T + t if t else s)
    return tuple(out)


def singular(word: str) -> str:
    w = word.lower().replace("-", "_")
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "xes", "ches", "shes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        return w[:-1]
    return w


_TYPE_NAMES = {"integer": "id", "uuid": "uuid", "hex": "id", "date": "date", "email": "email",
               "token": "token", "any": "param"}
_CHILD_ORDER = {t: i for i, t in enumerate(("integer", "uuid", "hex", "any", "date", "email", "token"))}


@dataclass(slots=True)
class RouteConfig:
    max_routes: int = 200  # per service
    max_siblings: int = 20  # distinct static children of one node before they are merged
    max_paths: int = 5000  # distinct typed paths kept per service (then they are compacted)
    max_services: int = 1000

    # parts travel pickled from the workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[RouteConfig], tuple[Any, ...]]:
        return RouteConfig, (self.max_routes, self.max_siblings, self.max_paths, self.max_services)

    def to_dict(self) -> dict[str, int]:
        return {"max_routes": self.max_routes, "max_siblings": self.max_siblings,
                "max_paths": self.max_paths, "max_services": self.max_services}


@dataclass(slots=True)
class Route:
    """One route template: ``template`` (``/users/{user_id}``) and the type of each parameter."""

    template: str
    params: tuple[tuple[str, str], ...]  # (name, type) in path order; type "any" for merged statics
    seeded: bool = False

    # parts travel pickled from the workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[Route], tuple[Any, ...]]:
        return Route, (self.template, self.params, self.seeded)


class _Node:
    __slots__ = ("children", "route", "terminal")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.terminal = False
        self.route: Route | None = None

    # parts travel pickled from the workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[_Node], tuple[()], tuple[Any, ...]]:
        return _Node, (), (self.children, self.terminal, self.route)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.children, self.terminal, self.route = state


def _shape(suffix: tuple[str, ...]) -> tuple[str, ...]:
    """A subtree suffix with its static segments blurred except the last: the shape siblings share."""
    n = len(suffix)
    return tuple(s if (s.startswith(_T) or i == n - 1) else "*" for i, s in enumerate(suffix))


def _build(paths: Iterable[tuple[str, ...]], max_siblings: int, forced: frozenset[tuple[str, ...]],
           prefix: tuple[str, ...] = ()) -> _Node:
    node = _Node()
    by_first: dict[str, list[tuple[str, ...]]] = {}
    for p in paths:
        if not p:
            node.terminal = True
        else:
            by_first.setdefault(p[0], []).append(p[1:])
    statics = sorted(k for k in by_first if not k.startswith(_T))
    merge: set[str] = set()
    if prefix in forced:  # over the route cap: every child (typed ones too) becomes one parameter
        merge = {k for k in by_first if k != WILD}
    elif len(statics) > max_siblings:
        groups: dict[frozenset[tuple[str, ...]], list[str]] = {}
        for k in statics:
            groups.setdefault(frozenset(_shape(s) for s in by_first[k]), []).append(k)
        for members in groups.values():
            if len(members) > max_siblings:
                merge.update(members)
        if len(statics) - len(merge) > max_siblings:
            merge = set(statics)
    if WILD in by_first:  # a compacted parameter: statics shaped like it join it
        wild_shapes = {_shape(s) for s in by_first[WILD]}
        merge.update(k for k in statics if {_shape(s) for s in by_first[k]} <= wild_shapes)
    if merge:
        wild = by_first.setdefault(WILD, [])
        for k in sorted(merge):
            wild.extend(by_first.pop(k))
    for k in sorted(by_first):
        node.children[k] = _build(by_first[k], max_siblings, forced, (*prefix, k))
    return node


def _routes_of(node: _Node, out: list[tuple[str, ...]], prefix: tuple[str, ...] = ()) -> None:
    if node.terminal:
        out.append(prefix)
    for k in sorted(node.children):
        _routes_of(node.children[k], out, (*prefix, k))


def _static_counts(node: _Node, out: list[tuple[int, tuple[str, ...]]], prefix: tuple[str, ...] = ()) -> None:
    n = len(node.children)
    if n > 1:
        out.append((n, prefix))
    for k in sorted(node.children):
        _static_counts(node.children[k], out, (*prefix, k))


def _name(parent: str | None, kind: str, first_param: bool, used: set[str]) -> str:
    if parent is not None and _WORD.match(parent) and first_param and kind in ("integer", "uuid", "hex", "any"):
        base = singular(parent) + ("" if kind == "any" else "_id")
    else:
        base = _TYPE_NAMES.get(kind, "param")
    name, i = base, 2
    while name in used:
        name = f"{base}{i}"
        i += 1
    used.add(name)
    return name


def _name_tree(node: _Node, prefix: list[str], params: list[tuple[str, str]], parent: str | None) -> None:
    if node.terminal:
        node.route = Route("/" + "/".join(prefix), tuple(params))
    kinds = sorted((k for k in node.children if k.startswith(_T)), key=lambda k: _CHILD_ORDER.get(k[1:], 99))
    for k in sorted(k for k in node.children if not k.startswith(_T)):
        _name_tree(node.children[k], [*prefix, k], params, k)
    for i, k in enumerate(kinds):
        used = {n for n, _ in params}
        name = _name(parent, k[1:], i == 0, used)
        _name_tree(node.children[k], [*prefix, "{" + name + "}"], [*params, (name, k[1:])], None)


def _lookup(node: _Node, segs: tuple[str, ...], raw: tuple[str, ...]) -> Route | None:
    for i, s in enumerate(segs):
        child = node.children.get(raw[i]) if not raw[i].startswith(_T) else None
        if child is None:
            child = node.children.get(s) if s.startswith(_T) else None
        if child is None:
            child = node.children.get(WILD)
        if child is None:
            return None
        node = child
    return node.route if node.terminal else None


def _seed_match(template: tuple[str, ...], raw: tuple[str, ...]) -> int:
    """-1 when a seeded template does not match; else its number of literal segments (more is better)."""
    if len(template) != len(raw):
        return -1
    score = 0
    for t, s in zip(template, raw, strict=True):
        if _PARAM.match(t):
            continue
        if t != s:
            return -1
        score += 1
    return score


class _Service:
    __slots__ = ("dirty", "paths", "root", "routes")

    def __init__(self) -> None:
        self.paths: set[tuple[str, ...]] = set()
        self.dirty = True
        self.root: _Node | None = None
        self.routes: list[Route] = []

    # parts travel pickled from the workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[_Service], tuple[()], tuple[Any, ...]]:
        return _Service, (), (self.paths, self.dirty, self.root, self.routes)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.paths, self.dirty, self.root, self.routes = state


@dataclass(slots=True)
class RouteTable:
    """Routes per service. :meth:`observe` paths, then :meth:`route` them (or the other way round:
    :meth:`route` rebuilds lazily when paths were added since)."""

    config: RouteConfig = field(default_factory=RouteConfig)
    services: dict[str, _Service] = field(default_factory=dict)
    seeds: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)  # host ("*" = every host)
    overflow: int = 0  # paths of services past max_services (templated by type only)

    # parts travel pickled from the workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[RouteTable], tuple[Any, ...]]:
        return RouteTable, (self.config, self.services, self.seeds, self.overflow)

    def observe(self, host: str | None, path: str) -> None:
        raw = split_path(path)
        self.observe_split((host or "").lower(), raw, typed(raw))

    def observe_split(self, host: str, raw: tuple[str, ...], p: tuple[str, ...]) -> None:
        """:meth:`observe` of a path already split (``raw``) and typed (``p``), ``host`` lower-cased."""
        svc = self.services.get(host)
        if svc is None:
            if len(self.services) >= self.config.max_services:
                self.overflow += 1
                return
            svc = self.services[host] = _Service()
        if p in svc.paths or (self.seeds and self._seeded(host, raw) is not None):
            return
        svc.paths.add(p)
        svc.dirty = True
        if len(svc.paths) > self.config.max_paths:
            self._compact(svc)

    def _compact(self, svc: _Service) -> None:
        """Replace a service's paths by its current route templates (bounded memory; from here on the
        routes may depend on the order of arrival)."""
        self._rebuild(svc)
        new: set[tuple[str, ...]] = set()
        for r in svc.routes:
            segs = r.template.strip("/").split("/") if r.template != "/" else []
            kinds = iter(t for _, t in r.params)
            new.add(tuple(_T + next(kinds) if _PARAM.match(s) else s for s in segs))
        svc.paths = new
        svc.dirty = True

    def _seeded(self, host: str, raw: tuple[str, ...]) -> tuple[str, ...] | None:
        best: tuple[str, ...] | None = None
        best_score = -1
        for key in (host, "*"):
            for t in self.seeds.get(key, ()):
                sc = _seed_match(t, raw)
                if sc > best_score or (sc == best_score and sc >= 0 and best is not None and t < best):
                    best, best_score = t, sc
        return best if best_score >= 0 else None

    def _rebuild(self, svc: _Service) -> None:
        cfg = self.config
        forced: frozenset[tuple[str, ...]] = frozenset()
        while True:
            root = _build(svc.paths, cfg.max_siblings, forced)
            found: list[tuple[str, ...]] = []
            _routes_of(root, found)
            if len(found) <= cfg.max_routes:
                break
            counts: list[tuple[int, tuple[str, ...]]] = []
            _static_counts(root, counts)
            candidates = [c for c in counts if c[1] not in forced]
            if not candidates:
                break
            candidates.sort(key=lambda c: (-c[0], c[1]))
            forced = forced | {candidates[0][1]}
        _name_tree(root, [], [], None)
        svc.root = root
        routes: list[Route] = []
        _collect(root, routes)
        svc.routes = sorted(routes, key=lambda r: r.template)
        svc.dirty = False

    def route(self, host: str | None, path: str) -> Route:
        """The route of a request path: a seeded template, else the inferred one, else the path with its
        typed segments as parameters (a path never observed)."""
        host = (host or "").lower()
        raw = split_path(path)
        seed = self._seeded(host, raw)
        if seed is not None:
            return _seed_route(seed)
        svc = self.services.get(host)
        if svc is not None:
            if svc.dirty:
                self._rebuild(svc)
            assert svc.root is not None
            r = _lookup(svc.root, typed(raw), raw)
            if r is not None:
                return r
        root = _build([typed(raw)], self.config.max_siblings, frozenset())
        _name_tree(root, [], [], None)
        r = _lookup(root, typed(raw), raw)
        assert r is not None
        return r

    def routes(self, host: str | None) -> list[Route]:
        """The inferred routes of a service (sorted by template; seeds not included)."""
        svc = self.services.get((host or "").lower())
        if svc is None:
            return []
        if svc.dirty:
            self._rebuild(svc)
        return list(svc.routes)

    def seed(self, paths: Iterable[str], host: str | None = None) -> None:
        """Seed templates (OpenAPI ``paths`` keys such as ``/repos/{owner}/{repo}``) for ``host`` (None:
        every host). Paths already observed that match a seed are moved to it."""
        key = (host or "*").lower()
        lst = self.seeds.setdefault(key, [])
        for p in paths:
            t = split_path(p)
            if t not in lst:
                lst.append(t)
        lst.sort()
        for h, svc in self.services.items():
            if key in ("*", h):
                kept = {p for p in svc.paths if not _has_seed_for_typed(self, h, p)}
                if kept != svc.paths:
                    svc.paths = kept
                    svc.dirty = True

    def merge(self, other: RouteTable) -> None:
        """Fold another table's seeds and observed paths into this one (the union of what both saw, within
        this table's caps): routes of the merged table are those of one table that saw every path."""
        for h, ts in other.seeds.items():
            lst = self.seeds.setdefault(h, [])
            lst.extend(t for t in ts if t not in lst)
            lst.sort()
        for h in sorted(other.services):
            theirs = other.services[h]
            svc = self.services.get(h)
            if svc is None:
                if len(self.services) >= self.config.max_services:
                    self.overflow += len(theirs.paths)
                    continue
                svc = self.services[h] = _Service()
            new = theirs.paths - svc.paths
            if new:
                svc.paths |= new
                svc.dirty = True
                if len(svc.paths) > self.config.max_paths:
                    self._compact(svc)
        self.overflow += other.overflow

    def seed_openapi(self, doc: Mapping[str, Any], host: str | None = None) -> None:
        paths = doc.get("paths")
        if isinstance(paths, Mapping):
            self.seed([p for p in paths if isinstance(p, str)], host)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "config": self.config.to_dict(),
            "seeds": {h: ["/" + "/".join(t) for t in ts] for h, ts in sorted(self.seeds.items())},
            "services": {h: sorted("/" + "/".join(_enc(s) for s in p) for p in svc.paths)
                         for h, svc in sorted(self.services.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RouteTable:
        cfg_d = d.get("config") or {}
        cfg = RouteConfig(**{k: int(v) for k, v in cfg_d.items() if k in RouteConfig.__dataclass_fields__})
        table = cls(cfg)
        for h, ts in (d.get("seeds") or {}).items():
            table.seeds[str(h)] = sorted(split_path(str(t)) for t in ts)
        for h, ps in (d.get("services") or {}).items():
            svc = table.services[str(h)] = _Service()
            for p in ps:
                svc.paths.add(tuple(_dec(s) for s in split_path(str(p))))
        return table


def _has_seed_for_typed(table: RouteTable, host: str, p: tuple[str, ...]) -> bool:
    # only literal paths can be matched against a seed exactly; typed tokens match seed parameters
    for key in (host, "*"):
        for t in table.seeds.get(key, ()):
            if len(t) == len(p) and all(_PARAM.match(a) or (not b.startswith(_T) and a == b)
                                        for a, b in zip(t, p, strict=True)):
                return True
    return False


def _enc(s: str) -> str:
    return "{" + s[1:] + "}" if s.startswith(_T) else s


_DEC_TYPES = frozenset((*TYPES, "any"))


def _dec(s: str) -> str:
    m = _PARAM.match(s)
    if m and m.group(1) in _DEC_TYPES:
        return _T + m.group(1)
    return s


def _seed_route(t: tuple[str, ...]) -> Route:
    params = tuple((m.group(1), "any") for s in t if (m := _PARAM.match(s)))
    return Route("/" + "/".join(t), params, seeded=True)


def _collect(node: _Node, out: list[Route]) -> None:
    if node.route is not None:
        out.append(node.route)
    for child in node.children.values():
        _collect(child, out)


REBUILD_SHARE = 8  # a service's tree is rebuilt once it has 1/8 more distinct paths than when last built
MAX_CACHE = 4096  # raw paths remembered per service (then the memo starts over)
MAX_SEGMENT_MEMO = 8192


def _lookup_via(node: _Node, segs: tuple[str, ...], raw: tuple[str, ...]) -> tuple[Route | None, bool]:
    """:func:`_lookup`, and whether a merged parameter (not a literal or a typed segment) matched."""
    wild = False
    for i, s in enumerate(segs):
        r = raw[i]
        child = node.children.get(r) if not r.startswith(_T) else None
        if child is None:
            child = node.children.get(s) if s.startswith(_T) else None
        if child is None:
            child = node.children.get(WILD)
            wild = True
        if child is None:
            return None, False
        node = child
    return (node.route if node.terminal else None), wild


class CallRouter:
    """The route of each API call as it comes (the engine's record path): :meth:`template` observes the
    path and returns its route template, in one step.

    Deterministic: the answer is a function of the calls seen so far, in their order (the same capture
    gives the same routes every run). Cheap per call: a memo per service maps a raw path (no query) to
    its template. A path the service's current tree already routes through a merged parameter
    (``/items/{item}``) is not observed again: high-cardinality segments cost one lookup and grow
    nothing. Other new paths are observed; the tree is rebuilt once the service's distinct typed paths
    grew by 1/REBUILD_SHARE since its last build (a path new since then is looked up in the last tree),
    and the service's memo starts over at each rebuild. Bounded by the table's caps, ``max_cache`` raw
    paths per service and a memo of segment types.
    """

    __slots__ = ("_built", "_memo", "_segs", "max_cache", "table")

    def __init__(self, table: RouteTable | None = None, *, max_cache: int = MAX_CACHE) -> None:
        self.table = table if table is not None else RouteTable()
        self.max_cache = max_cache
        self._memo: dict[str, dict[str, str]] = {}  # host -> raw path -> template
        self._built: dict[str, int] = {}  # host -> distinct typed paths at its last build
        self._segs: dict[str, str] = {}  # segment -> itself or its type token

    def template(self, host: str | None, path: str) -> str:
        """The route template of ``path`` (a request target; the query is cut) on ``host``."""
        raw = path.partition("?")[0]
        memo = self._memo.get(host or "")  # keyed by the host as written: lower-cased on a miss only
        if memo is not None:
            t = memo.get(raw)
            if t is not None:
                return t
        return self._miss(host or "", raw, memo)

    def _typed(self, segs: tuple[str, ...]) -> tuple[str, ...]:
        memo = self._segs
        out = []
        for s in segs:
            t = memo.get(s)
            if t is None:
                if s.startswith(_T):
                    t = s
                else:
                    kind = segment_type(s)
                    t = _T + kind if kind else s
                if len(memo) >= MAX_SEGMENT_MEMO:
                    memo.clear()
                memo[s] = t
            out.append(t)
        return tuple(out)

    def _miss(self, host: str, raw_path: str, memo: dict[str, str] | None) -> str:
        table = self.table
        key = host.lower()
        raw = split_path(raw_path)
        tp = self._typed(raw)
        svc = table.services.get(key)
        t: str | None = None
        if table.seeds:
            seed = table._seeded(key, raw)
            if seed is not None:
                t = _seed_route(seed).template
        if t is None and svc is not None and svc.root is not None:
            r, via_wild = _lookup_via(svc.root, tp, raw)
            if r is not None and (via_wild or tp in svc.paths):
                t = r.template  # nothing new for the service: no need to observe it
        if t is None:
            if svc is None:
                if len(table.services) >= table.config.max_services:
                    table.overflow += 1
                    return table.route(key, raw_path).template  # typed segments only, not remembered
                svc = table.services[key] = _Service()
            if tp not in svc.paths:
                svc.paths.add(tp)
                svc.dirty = True
                if len(svc.paths) > table.config.max_paths:
                    table._compact(svc)
            n = len(svc.paths)
            if svc.dirty and (svc.root is None or n - self._built.get(key, 0) >= max(1, n // REBUILD_SHARE)):
                table._rebuild(svc)
                self._built[key] = len(svc.paths)
                for h in [h for h in self._memo if h.lower() == key]:  # its memos start over
                    del self._memo[h]
                memo = None
            t = self._route(table, svc, tp, raw)
        if memo is None or len(memo) >= self.max_cache:
            if len(self._memo) >= 2 * table.config.max_services:
                self._memo.clear()
            memo = self._memo[host] = {}
        memo[raw_path] = t
        return t

    @staticmethod
    def _route(table: RouteTable, svc: _Service, tp: tuple[str, ...], raw: tuple[str, ...]) -> str:
        if svc.root is not None:
            r = _lookup(svc.root, tp, raw)
            if r is not None:
                return r.template
        root = _build([tp], table.config.max_siblings, frozenset())
        _name_tree(root, [], [], None)
        r = _lookup(root, tp, raw)
        return r.template if r is not None else "/" + "/".join(raw)
