"""Redaction of API call data before it leaves the process (pure: no I/O, no clock).

What is masked (each configurable, all of it can be turned off with ``enabled=False``):

- header values by header name (case-insensitive), default :data:`DEFAULT_HEADERS`;
- JSON body fields by name, at any depth (the whole value: string, number, object or array), also in
  bodies cut short (the scanner is tolerant of truncated JSON); the same names in query strings and
  ``application/x-www-form-urlencoded`` bodies;
- every match of the configured regular expressions in header values, URLs and bodies.

What is captured (applies even when masking is off): bodies whose media type is in the allow list
(``content_types``, ``fnmatch`` patterns such as ``text/*``; ``*`` allows everything), cut to
``body_limit`` bytes (after masking, so a cut never splits a secret out of reach of a pattern).
Bodies of other types are dropped; their size is still reported by the caller.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import TlsmirrorError

MASK = "[REDACTED]"

DEFAULT_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"})

DEFAULT_CONTENT_TYPES = (
    "application/json",
    "application/*+json",
    "application/x-ndjson",
    "application/graphql",
    "application/x-www-form-urlencoded",
    "application/xml",
    "application/*+xml",
    "application/javascript",
    "text/*",
)

DEFAULT_BODY_LIMIT = 128 * 1024


class RedactionError(TlsmirrorError, ValueError):
    """The redaction settings are invalid (e.g. a regular expression does not compile)."""


@dataclass(frozen=True, slots=True)
class RedactionConfig:
    """Settings of :class:`Redactor` (see the module docstring)."""

    enabled: bool = True
    headers: frozenset[str] = DEFAULT_HEADERS
    fields: frozenset[str] = frozenset()
    patterns: tuple[str, ...] = ()
    mask: str = MASK
    body_limit: int = DEFAULT_BODY_LIMIT
    content_types: tuple[str, ...] = DEFAULT_CONTENT_TYPES


@dataclass(frozen=True, slots=True)
class BodyCapture:
    """What of one body may leave the process.

    ``data`` is None when the body was dropped (media type not allowed); ``truncated`` tells that
    ``data`` is shorter than the captured body; ``masked`` counts the replacements made.
    """

    data: bytes | None
    truncated: bool
    masked: int


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.S)
_COLON = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*")
_SCALAR = re.compile(rb"[^,}\]\s]*")
_STRUCT = re.compile(rb'["{}\[\]]')


def _value_end(data: bytes, i: int) -> int:
    """End of the JSON value starting at ``i`` (the end of ``data`` when it is cut short)."""
    n = len(data)
    if i >= n:
        return n
    ch = data[i]
    if ch == 0x22:  # "
        m = _STRING.match(data, i)
        return m.end() if m else n
    if ch in (0x7B, 0x5B):  # { [
        depth = 0
        j = i
        while True:
            m = _STRUCT.search(data, j)
            if m is None:
                return n
            k = m.start()
            c = data[k]
            if c == 0x22:
                s = _STRING.match(data, k)
                j = s.end() if s else n
                if j >= n:
                    return n
                continue
            depth += 1 if c in (0x7B, 0x5B) else -1
            j = k + 1
            if depth <= 0:
                return j
    return _SCALAR.match(data, i).end()  # type: ignore[union-attr]


def _key_text(token: bytes) -> str:
    inner = token[1:-1] if len(token) >= 2 and token.endswith(b'"') else token[1:]
    if b"\\" in inner:
        try:
            return str(json.loads(b'"' + inner + b'"')).lower()
        except ValueError:
            pass
    return inner.decode("utf-8", "replace").lower()


def redact_json_fields(data: bytes, names: frozenset[str], mask: bytes) -> tuple[bytes, int]:
    """Replace the value of every member named in ``names`` (lowercase) by the JSON string ``mask``.

    Works on any bytes: valid JSON, JSON cut short, or not JSON at all (then nothing matches except
    ``"name": value`` fragments). Formatting outside the masked values is kept byte for byte.
    """
    if not names or b'"' not in data:
        return data, 0
    out: list[bytes] = []
    last = pos = count = 0
    replacement = b'"' + mask + b'"'
    n = len(data)
    while pos < n:
        m = _STRING.search(data, pos)
        if m is None:
            break
        end = m.end()
        colon = _COLON.match(data, end)
        if colon is not None and _key_text(m.group()) in names:
            vstart = colon.end()
            vend = _value_end(data, vstart)
            out.append(data[last:vstart])
            out.append(replacement)
            last = pos = vend
            count += 1
            if vend == vstart:
                pos += 1
            continue
        pos = end if end > m.start() else m.start() + 1
    if not count:
        return data, 0
    out.append(data[last:])
    return b"".join(out), count


def _form_source(names: Iterable[str]) -> str | None:
    ordered = sorted(names)
    if not ordered:
        return None
    alt = "|".join(re.escape(x) for x in ordered)
    return rf"(?i)(^|[?&;])((?:{alt})=)([^&#;]*)"


def media_type(headers: Iterable[tuple[str, str]]) -> str | None:
    """The lowercase media type of the last ``Content-Type`` header, parameters removed."""
    found = None
    for name, value in headers:
        if name.lower() == "content-type":
            found = value
    if found is None:
        return None
    return found.split(";", 1)[0].strip().lower() or None


def _is_json(mtype: str | None, data: bytes) -> bool:
    if mtype is not None:
        return "json" in mtype
    head = data[:64].lstrip()
    return head[:1] in (b"{", b"[")


def _cut_utf8(data: bytes, limit: int) -> bytes:
    """Cut ``data`` to ``limit`` bytes, backing off a partial UTF-8 character at the end."""
    cut = data[:limit]
    for back in range(min(3, len(cut))):
        b = cut[len(cut) - 1 - back]
        if b < 0x80:
            break
        if b >= 0xC0:  # a lead byte: is its sequence complete?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            if back + 1 < need:
                return cut[: len(cut) - 1 - back]
            break
    return cut


class Redactor:
    """Applies a :class:`RedactionConfig`. Build once, use for every call (patterns are compiled once).

    Raises :class:`RedactionError` for a pattern that does not compile.
    """

    __slots__ = ("_allow", "_allow_all", "_fields", "_form_b", "_form_s", "_mask_b", "_pats_b", "_pats_s",
                 "config", "enabled", "header_names")

    def __init__(self, config: RedactionConfig | None = None) -> None:
        cfg = config or RedactionConfig()
        self.config = cfg
        self.enabled = cfg.enabled
        self.header_names = frozenset(h.lower() for h in cfg.headers) if cfg.enabled else frozenset()
        self._mask_b = cfg.mask.encode()
        pats_s: list[re.Pattern[str]] = []
        pats_b: list[re.Pattern[bytes]] = []
        if cfg.enabled:
            for p in cfg.patterns:
                try:
                    pats_s.append(re.compile(p))
                    pats_b.append(re.compile(p.encode()))
                except (re.error, UnicodeEncodeError) as exc:
                    raise RedactionError(f"redaction pattern {p!r} does not compile: {exc}") from None
        self._pats_s = tuple(pats_s)
        self._pats_b = tuple(pats_b)
        names = frozenset(f.lower() for f in cfg.fields) if cfg.enabled else frozenset()
        self._fields = names
        src = _form_source(names)
        self._form_s: re.Pattern[str] | None = re.compile(src) if src else None
        self._form_b: re.Pattern[bytes] | None = re.compile(src.encode()) if src else None
        allow = tuple(t.lower() for t in cfg.content_types)
        self._allow_all = "*" in allow or "*/*" in allow
        self._allow = allow

    def header_value(self, name: str, value: str) -> str:
        """The value to report for header ``name`` (lowercase or not)."""
        if not self.enabled:
            return value
        if name.lower() in self.header_names:
            return self.config.mask
        return self.text(value)

    def headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(n, self.header_value(n, v)) for n, v in headers]

    def text(self, value: str) -> str:
        """Apply the regular expressions to a header value or URL."""
        mask = self.config.mask
        for p in self._pats_s:
            value = p.sub(mask, value)
        return value

    def url(self, target: str) -> str:
        """Mask named query parameters and pattern matches in a request target or URL."""
        if not self.enabled:
            return target
        form = self._form_s
        if form is not None and "?" in target:
            path, _, query = target.partition("?")
            mask = self.config.mask
            query = form.sub(lambda m: m.group(1) + m.group(2) + mask, "?" + query)[1:]
            target = path + "?" + query
        return self.text(target)

    def allowed(self, mtype: str | None) -> bool:
        """True when bodies of media type ``mtype`` (None: no Content-Type) may be captured."""
        if self._allow_all:
            return True
        if mtype is None:
            return False
        return any(fnmatch.fnmatchcase(mtype, pat) for pat in self._allow)

    def body(self, data: bytes, mtype: str | None) -> BodyCapture:
        """What of a body (``mtype`` from :func:`media_type`) may be reported."""
        if not self.allowed(mtype):
            return BodyCapture(None, False, 0)
        masked = 0
        if self.enabled:
            if self._fields:
                if _is_json(mtype, data):
                    data, masked = redact_json_fields(data, self._fields, self._mask_b)
                elif mtype == "application/x-www-form-urlencoded" and self._form_b is not None:
                    mask_b = self._mask_b
                    data, k = self._form_b.subn(lambda m: m.group(1) + m.group(2) + mask_b, data)
                    masked += k
            for p in self._pats_b:
                data, k = p.subn(self._mask_b, data)
                masked += k
        limit = self.config.body_limit
        if len(data) > limit:
            return BodyCapture(_cut_utf8(data, limit), True, masked)
        return BodyCapture(data, False, masked)
