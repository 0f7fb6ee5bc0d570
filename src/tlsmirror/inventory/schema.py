"""Schema summaries: JSON bodies, query and header parameters, auth schemes seen. Pure; values are
never stored, only names, types, formats and counts, with caps on fields and depth."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

MAX_FIELDS = 64  # properties kept per object (further ones are counted in ``dropped``)
MAX_DEPTH = 8  # nesting kept (deeper values count as "object"/"array" without properties/items)
MAX_PARAMS = 64  # query / header parameters kept per route
TYPE_ORDER = ("object", "array", "string", "integer", "number", "boolean", "null")

_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:?\d{2})?\Z")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_EMAIL = re.compile(r"[^@\s]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\Z")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_URI = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s]+\Z")
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\Z")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\Z")
_INT = re.compile(r"-?\d{1,18}\Z")
_NUM = re.compile(r"-?\d+\.\d+(?:[eE][+-]?\d+)?\Z")


def string_format(s: str) -> str | None:
    """The JSON Schema ``format`` of a string value (date-time, date, email, uuid, uri, ipv4), or None."""
    if len(s) > 2048:
        return None
    if _UUID.match(s):
        return "uuid"
    if _DATE_TIME.match(s):
        return "date-time"
    if _DATE.match(s):
        return "date"
    if "@" in s and _EMAIL.match(s):
        return "email"
    if "://" in s and _URI.match(s):
        return "uri"
    if _IPV4.match(s):
        return "ipv4"
    return None


def _type_of(v: Any) -> str:
    if v is None:
        return "null"
    if v is True or v is False:
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


MEMO_TEXT = 256  # values up to this length have their format / scalar type remembered
MEMO_SIZE = 16384  # remembered values per table; then the memory starts again


class ValueMemo:
    """What :func:`string_format` and :func:`scalar_type` said of short values, remembered: field values,
    query and header values repeat from call to call (one dict look-up instead of up to eight regular
    expressions). The same answers; bounded."""

    __slots__ = ("formats", "scalars")

    def __init__(self) -> None:
        self.formats: dict[str, str] = {}  # value -> format ("" for none)
        self.scalars: dict[str, tuple[str, str]] = {}  # value -> ("t:" + scalar type, "f:" + format or "")

    def format_of(self, s: str) -> str:
        f = self.formats.get(s)
        if f is None:
            f = string_format(s) or ""
            if len(s) <= MEMO_TEXT:
                if len(self.formats) >= MEMO_SIZE:
                    self.formats.clear()
                self.formats[s] = f
        return f

    def scalar_of(self, s: str) -> tuple[str, str]:
        ts = self.scalars.get(s)
        if ts is None:
            f = self.format_of(s)
            ts = ("t:" + scalar_type(s), "f:" + f if f else "")
            if len(s) <= MEMO_TEXT:
                if len(self.scalars) >= MEMO_SIZE:
                    self.scalars.clear()
                self.scalars[s] = ts
        return ts


class Shape:
    """The summary of the JSON values seen at one place: types, string formats, object properties (with
    how often each was present, for optionality) and array items."""

    __slots__ = ("count", "dropped", "formats", "items", "properties", "types")

    def __init__(self) -> None:
        self.count = 0
        self.types: dict[str, int] = {}
        self.formats: dict[str, int] = {}  # string values with a format; strings without one count as ""
        self.properties: dict[str, Shape] = {}
        self.items: Shape | None = None
        self.dropped = 0

    # parts travel pickled from the workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[Shape], tuple[()], tuple[Any, ...]]:
        return Shape, (), (self.count, self.types, self.formats, self.properties, self.items, self.dropped)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.count, self.types, self.formats, self.properties, self.items, self.dropped = state

    def observe(self, v: Any, depth: int = 0, memo: ValueMemo | None = None) -> None:
        self.count += 1
        t = _type_of(v)
        self.types[t] = self.types.get(t, 0) + 1
        if t == "string":
            f = memo.format_of(v) if memo is not None else string_format(v) or ""
            self.formats[f] = self.formats.get(f, 0) + 1
        elif depth >= MAX_DEPTH:
            return
        elif t == "object":
            for k, sub in v.items():
                if not isinstance(k, str):
                    continue
                p = self.properties.get(k)
                if p is None:
                    if len(self.properties) >= MAX_FIELDS:
                        self.dropped += 1
                        continue
                    p = self.properties[k] = Shape()
                p.observe(sub, depth + 1, memo)
        elif t == "array":
            items = self.items
            if items is None:
                items = self.items = Shape()
            for sub in v[:MAX_FIELDS]:
                items.observe(sub, depth + 1, memo)

    def clean(self) -> bool:
        """Whether nothing was dropped here or below (no cap on properties met)."""
        if self.dropped:
            return False
        for p in self.properties.values():
            if not p.clean():
                return False
        return self.items is None or self.items.clean()

    def add_observed(self, seen: Shape) -> None:
        """Fold a remembered observation: ``seen`` is a fresh shape that observed one value (at depth 0)
        and is :meth:`clean`; this shape ends exactly as if it had observed that value itself, caps
        included (a property new here when this object is full is dropped once per occurrence, as
        :meth:`observe` drops it; occurrences come in the order ``seen`` met them)."""
        self.count += seen.count
        types = self.types
        for k, n in seen.types.items():
            types[k] = types.get(k, 0) + n
        if seen.formats:
            formats = self.formats
            for k, n in seen.formats.items():
                formats[k] = formats.get(k, 0) + n
        if seen.properties:
            props = self.properties
            for k, p in seen.properties.items():
                mine = props.get(k)
                if mine is None:
                    if len(props) >= MAX_FIELDS:
                        self.dropped += p.count
                        continue
                    mine = props[k] = Shape()
                mine.add_observed(p)
        if seen.items is not None:
            items = self.items
            if items is None:
                items = self.items = Shape()
            items.add_observed(seen.items)

    def merge(self, other: Shape) -> None:
        """Add what ``other`` saw (same caps)."""
        self.count += other.count
        for k, n in other.types.items():
            self.types[k] = self.types.get(k, 0) + n
        for k, n in other.formats.items():
            self.formats[k] = self.formats.get(k, 0) + n
        for k, p in other.properties.items():
            mine = self.properties.get(k)
            if mine is None:
                if len(self.properties) >= MAX_FIELDS:
                    self.dropped += 1
                    continue
                mine = self.properties[k] = Shape()
            mine.merge(p)
        if other.items is not None:
            if self.items is None:
                self.items = Shape()
            self.items.merge(other.items)
        self.dropped += other.dropped

    def to_schema(self) -> dict[str, Any]:
        """A JSON Schema (2020-12, as OpenAPI 3.1 uses) for the values seen."""
        types = [t for t in TYPE_ORDER if self.types.get(t)]
        if "integer" in types and "number" in types:
            types.remove("integer")
        out: dict[str, Any] = {}
        if len(types) == 1:
            out["type"] = types[0]
        elif types:
            out["type"] = types
        if "string" in types:
            fmts = [f for f in self.formats if f]
            if len(fmts) == 1 and not self.formats.get(""):
                out["format"] = fmts[0]
        n_obj = self.types.get("object", 0)
        if n_obj and self.properties:
            out["properties"] = {k: self.properties[k].to_schema() for k in sorted(self.properties)}
            required = sorted(k for k, p in self.properties.items() if p.count >= n_obj)
            if required:
                out["required"] = required
        if self.items is not None and self.items.count:
            out["items"] = self.items.to_schema()
        return out

    def fields(self, prefix: str = "") -> dict[str, str]:
        """Every field path (``a.b[].c``) with its type(s) joined by ``|``: what diffs compare."""
        out: dict[str, str] = {}
        for k in sorted(self.properties):
            p = self.properties[k]
            path = f"{prefix}.{k}" if prefix else k
            out[path] = "|".join(t for t in TYPE_ORDER if p.types.get(t))
            out.update(p.fields(path))
        if self.items is not None:
            out.update(self.items.fields(prefix + "[]"))
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"count": self.count, "types": dict(self.types)}
        if self.formats:
            d["formats"] = dict(self.formats)
        if self.properties:
            d["properties"] = {k: p.to_dict() for k, p in sorted(self.properties.items())}
        if self.items is not None:
            d["items"] = self.items.to_dict()
        if self.dropped:
            d["dropped"] = self.dropped
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Shape:
        s = cls()
        s.count = int(d.get("count", 0))
        s.types = {str(k): int(v) for k, v in (d.get("types") or {}).items()}
        s.formats = {str(k): int(v) for k, v in (d.get("formats") or {}).items()}
        s.properties = {str(k): cls.from_dict(v) for k, v in (d.get("properties") or {}).items()}
        if d.get("items") is not None:
            s.items = cls.from_dict(d["items"])
        s.dropped = int(d.get("dropped", 0))
        return s


def scalar_type(s: str) -> str:
    """The type a query/header value looks like: integer, number, boolean or string."""
    if _INT.match(s):
        return "integer"
    if _NUM.match(s):
        return "number"
    if s in ("true", "false"):
        return "boolean"
    return "string"


class ParamSet:
    """Parameters of one location (query or header) of a route: per name, how often it was present,
    the value types and formats seen."""

    __slots__ = ("dropped", "params", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.params: dict[str, dict[str, int]] = {}  # name -> {"count": n, "t:integer": n, "f:uuid": n}
        self.dropped = 0

    # parts travel pickled from the workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[ParamSet], tuple[()], tuple[Any, ...]]:
        return ParamSet, (), (self.requests, self.params, self.dropped)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.requests, self.params, self.dropped = state

    def observe(self, pairs: Iterable[tuple[str, str]], memo: ValueMemo | None = None) -> None:
        self.requests += 1
        seen: set[str] = set()
        for name, value in pairs:
            if name in seen:
                continue
            seen.add(name)
            p = self.params.get(name)
            if p is None:
                if len(self.params) >= MAX_PARAMS or len(name) > 128:
                    self.dropped += 1
                    continue
                p = self.params[name] = {"count": 0}
            p["count"] += 1
            if memo is not None:
                t, f = memo.scalar_of(value)
            else:
                t = "t:" + scalar_type(value)
                f = string_format(value) or ""
                f = "f:" + f if f else ""
            p[t] = p.get(t, 0) + 1
            if f:
                p[f] = p.get(f, 0) + 1

    def merge(self, other: ParamSet) -> None:
        self.requests += other.requests
        for name, q in other.params.items():
            p = self.params.get(name)
            if p is None:
                if len(self.params) >= MAX_PARAMS:
                    self.dropped += 1
                    continue
                p = self.params[name] = {}
            for k, n in q.items():
                p[k] = p.get(k, 0) + n
        self.dropped += other.dropped

    def to_schema(self, name: str) -> dict[str, Any]:
        p = self.params[name]
        types = [t for t in ("integer", "number", "boolean", "string") if p.get("t:" + t)]
        t = types[0] if len(types) == 1 else ("number" if set(types) == {"integer", "number"} else "string")
        out: dict[str, Any] = {"type": t}
        fmts = [k[2:] for k in p if k.startswith("f:")]
        if t == "string" and len(fmts) == 1 and p["f:" + fmts[0]] == p["count"]:
            out["format"] = fmts[0]
        return out

    def required(self, name: str) -> bool:
        return self.params[name]["count"] >= self.requests > 0

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "params": {k: dict(v) for k, v in sorted(self.params.items())},
                "dropped": self.dropped}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParamSet:
        ps = cls()
        ps.requests = int(d.get("requests", 0))
        ps.params = {str(k): {str(a): int(b) for a, b in v.items()} for k, v in (d.get("params") or {}).items()}
        ps.dropped = int(d.get("dropped", 0))
        return ps


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# request headers that are not API parameters (transport, negotiation, auth: reported apart)
STANDARD_HEADERS = _words("""
host user-agent accept accept-encoding accept-language accept-charset connection content-length content-type
content-encoding transfer-encoding te trailer upgrade keep-alive proxy-connection cache-control pragma
if-none-match if-modified-since if-match if-unmodified-since if-range range referer origin cookie
authorization proxy-authorization expect dnt priority via forwarded x-forwarded-for x-forwarded-proto
x-forwarded-host x-real-ip sec-fetch-site sec-fetch-mode sec-fetch-dest sec-fetch-user sec-ch-ua
sec-ch-ua-mobile sec-ch-ua-platform upgrade-insecure-requests traceparent tracestate baggage x-request-id
x-amzn-trace-id x-b3-traceid x-b3-spanid x-b3-sampled b3 content-md5 date
""")
API_KEY_HEADERS = _words("""
x-api-key api-key apikey x-apikey x-auth-token x-access-token x-token x-api-token x-functions-key
ocp-apim-subscription-key x-goog-api-key x-amz-security-token private-token x-gitlab-token x-csrf-token
""")
API_KEY_QUERY = frozenset(["api_key", "apikey", "api-key", "key", "access_token", "token", "auth", "sig"])
SESSION_COOKIE = re.compile(r"(?i)sess|sid\b|auth|token|jwt|login|remember")


def header_params(headers: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """The request headers that are parameters of the API (lowercased names; standard, auth and API-key
    headers left out)."""
    out = []
    for h in headers:
        name = h[0].lower()
        if name in STANDARD_HEADERS or name in API_KEY_HEADERS or name.startswith(":"):
            continue
        out.append((name, h[1]))
    return out


def _is_jwt(token: str) -> bool:
    if not _JWT.match(token):
        return False
    head = token.split(".", 1)[0]
    try:
        raw = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
    except ValueError:
        return False
    return raw.startswith(b"{")


def auth_schemes(headers: Sequence[Sequence[str]], query: Sequence[Sequence[str]] = ()) -> set[str]:
    """The auth schemes a request carries, as ids: ``bearer``, ``bearer:jwt``, ``basic``, ``digest``,
    ``<scheme>`` (other Authorization schemes, lowercased), ``apiKey:header:<name>``,
    ``apiKey:query:<name>``, ``apiKey:cookie:<name>`` (session-like cookie names). Never values."""
    out: set[str] = set()
    for h in headers:
        name = h[0].lower()
        value = h[1].strip()
        if name in ("authorization", "proxy-authorization"):
            scheme, _, cred = value.partition(" ")
            s = scheme.lower()
            if not s or len(s) > 32 or not s.replace("-", "").isalnum():
                out.add("apiKey:header:" + name)  # a bare token in Authorization
            elif s == "bearer":
                out.add("bearer:jwt" if _is_jwt(cred.strip()) else "bearer")
            else:
                out.add(s)
        elif name in API_KEY_HEADERS:
            out.add("apiKey:header:" + name)
        elif name == "cookie":
            for part in value.split(";"):
                cname = part.split("=", 1)[0].strip()
                if cname and len(cname) <= 64 and SESSION_COOKIE.search(cname):
                    out.add("apiKey:cookie:" + cname)
    for q in query:
        if q[0].lower() in API_KEY_QUERY:
            out.add("apiKey:query:" + q[0])
    return out


def form_pairs(text: str) -> list[tuple[str, str]]:
    """An application/x-www-form-urlencoded body as (name, value) pairs."""
    return parse_qsl(text, keep_blank_values=True)[:MAX_FIELDS]
