"""Sensitive data: which types occur where (path, query, header, body field path), never the values.

Pure. Each rule is a type name and a regular expression, with an optional validator (Luhn for card
numbers, mod-97 for IBANs, check letters for national ids) that must accept the match. Findings are
``(type, location)`` pairs; locations are ``path``, ``query:<name>``, ``header:<name>``,
``request.body:<field path>`` / ``response.body:<field path>`` (``$`` for a non-JSON body).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

SCAN_LIMIT = 64 * 1024  # characters of one text scanned
MAX_FINDINGS = 256  # per scan
MAX_DEPTH = 8


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|6(?:011|5|4[4-9]|22)|35|3(?:0[0-5]|[68])")


def _card(m: str) -> bool:
    digits = re.sub(r"[ -]", "", m)
    if not 13 <= len(digits) <= 19 or len(set(digits)) < 3:
        return False
    return bool(_CARD_PREFIX.match(digits)) and luhn_ok(digits)


_IBAN_LEN = {"AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20,
             "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IS": 26, "IT": 27,
             "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25,
             "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26, "AE": 23, "SA": 24, "IL": 23, "BR": 29}


def _iban(m: str) -> bool:
    s = re.sub(r"\s", "", m).upper()
    want = _IBAN_LEN.get(s[:2])
    if want is None or len(s) != want:
        return False
    moved = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in moved)
    return int(num) % 97 == 1


def _phone(m: str) -> bool:
    n = sum(c.isdigit() for c in m)
    return 8 <= n <= 15


def _ssn(m: str) -> bool:
    a, b, c = m.split("-")
    return a not in ("000", "666") and a[0] != "9" and b != "00" and c != "0000"


_NINO_BAD = {"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"}


def _nino(m: str) -> bool:
    return m[:2].upper() not in _NINO_BAD


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def _dni(m: str) -> bool:
    num = m[:-1]
    if num[0] in "XYZ":  # NIE
        num = str("XYZ".index(num[0])) + num[1:]
    return _DNI_LETTERS[int(num) % 23] == m[-1].upper()


@dataclass(slots=True)
class Rule:
    type: str
    pattern: re.Pattern[str]
    validate: Callable[[str], bool] | None = None

    # parts travel pickled from the workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[Any, ...]:  # (the field "type" hides the builtin here)
        return Rule, (self.type, self.pattern, self.validate)


def _r(t: str, p: str, v: Callable[[str], bool] | None = None, flags: int = 0) -> Rule:
    return Rule(t, re.compile(p, flags), v)


DEFAULT_RULES: tuple[Rule, ...] = (
    _r("email", r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b"),
    _r("card_number", r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])", _card),
    _r("iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", _iban),
    _r("phone_number", r"(?<![\w+])\+[1-9][\d \-().]{6,18}\d\b", _phone),
    _r("jwt", r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}"),
    _r("aws_access_key", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),
    _r("aws_secret_key", r"(?i)aws.{0,20}secret.{0,20}[\"'=: ]{1,4}[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),
    _r("gcp_api_key", r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
    _r("gcp_oauth_token", r"\bya29\.[0-9A-Za-z_-]{20,}"),
    _r("gcp_service_account", r"\"type\"\s*:\s*\"service_account\""),
    _r("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})\b"),
    _r("slack_token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    _r("stripe_key", r"\b[sr]k_live_[0-9A-Za-z]{20,}"),
    _r("private_key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
    _r("us_ssn", r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])", _ssn),
    _r("uk_nino", r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b", _nino),
    _r("es_dni", r"\b[XYZ0-9]\d{7}[A-Za-z]\b", _dni),
)
TYPES = tuple(r.type for r in DEFAULT_RULES)

# Every match of a default rule holds one of these characters (a digit: card, iban, gcp_oauth_token, the
# national ids; "@" email; "+" phone; "." jwt; "_" github, stripe; "-" slack, private key; a quote, "=",
# ":" or space aws_secret_key, gcp_service_account) or one of these prefixes (aws_access_key,
# gcp_api_key): a string with none of them holds no default type. tests/core/inventory keeps this true.
DEFAULT_NEEDS_CHAR = re.compile(r"""[\d@+._\-"'=: ]""")
DEFAULT_NEEDS_PREFIX = re.compile(r"A(?:KIA|SIA|GPA|IDA|ROA|NPA|NVA|IPA|Iza)")


@dataclass(slots=True)
class SensitiveRules:
    """The rules in force: the defaults minus ``disabled`` plus ``extra`` (type, regex) rules."""

    rules: tuple[Rule, ...] = DEFAULT_RULES

    # parts travel pickled from the workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[SensitiveRules], tuple[Any, ...]]:
        return type(self), (self.rules,)  # QuickRules too: its alternation is made again

    @classmethod
    def configured(cls, disabled: Iterable[str] = (), extra: Mapping[str, str] | None = None) -> SensitiveRules:
        off = set(disabled)
        rules = [r for r in DEFAULT_RULES if r.type not in off]
        for t, p in (extra or {}).items():
            rules.append(Rule(t, re.compile(p)))
        return cls(tuple(rules))

    def types_in(self, text: str) -> AbstractSet[str]:
        """The types found in one string (never the matches)."""
        return self.scan(text)

    def scan(self, text: str) -> set[str]:
        """:meth:`types_in`, rule by rule."""
        text = text[:SCAN_LIMIT]
        found: set[str] = set()
        for r in self.rules:
            if r.type in found:
                continue
            for m in r.pattern.finditer(text):
                if r.validate is None or r.validate(m.group(0)):
                    found.add(r.type)
                    break
        return found


CACHE_TEXT = 256  # strings up to this length have their types remembered (header values, ids, fields)
CACHE_SIZE = 16384  # remembered strings; then the memory starts again
LONG_CACHE_CHARS = 1 << 20  # longer strings (up to SCAN_LIMIT) remembered, at most this many characters


@dataclass(slots=True)
class QuickRules(SensitiveRules):
    """The same rules, the same answers (:meth:`types_in`), for less CPU: almost every string a call
    carries holds no sensitive data, and one search for all the rules' patterns at once (an
    alternation) says so where the rules one by one take a search each; only a string where some
    pattern matches is scanned rule by rule (with its validators). Short strings' answers are
    remembered: header values and body fields repeat from call to call; so are longer ones (up to
    :data:`SCAN_LIMIT`, keyed by their content, at most :data:`LONG_CACHE_CHARS` characters, then that
    memory starts again): a long request field repeated at every call is searched once. An answer depends
    on the string only, so what is remembered never changes an inventory. Patterns with groups of their
    own are left out of the alternation and always searched alone. With the default rules only (some
    maybe disabled), a string without any character or prefix some default rule needs
    (:data:`DEFAULT_NEEDS_CHAR`, :data:`DEFAULT_NEEDS_PREFIX`) is answered before the alternation."""

    _any: re.Pattern[str] | None = None
    _alone: tuple[Rule, ...] = ()
    _cache: dict[str, frozenset[str]] = field(default_factory=dict)
    _long: dict[str, frozenset[str]] = field(default_factory=dict)
    _long_chars: int = 0
    _defaults_only: bool = False

    def __post_init__(self) -> None:
        parts = []
        alone = []
        self._defaults_only = all(r in DEFAULT_RULES for r in self.rules)
        for r in self.rules:
            p = r.pattern
            if p.groups:
                alone.append(r)
                continue
            src = p.pattern
            if src.startswith("(?i)"):
                src = src[4:]
            flags = "i" if p.flags & re.IGNORECASE else ""
            flags += "m" if p.flags & re.MULTILINE else ""
            flags += "s" if p.flags & re.DOTALL else ""
            flags += "x" if p.flags & re.VERBOSE else ""
            parts.append(f"(?{flags}:{src})" if flags else f"(?:{src})")
        try:
            self._any = re.compile("|".join(parts)) if parts else None
            self._alone = tuple(alone)
        except re.error:  # a pattern that does not combine: every rule alone, as SensitiveRules does
            self._any, self._alone = None, tuple(self.rules)

    def types_in(self, text: str) -> AbstractSet[str]:
        n = len(text)
        if n <= CACHE_TEXT:
            known = self._cache.get(text)
            if known is not None:
                return known
            found = frozenset(self.scan(text)) if self._may_match(text) else _NONE
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[text] = found
            return found
        if n > SCAN_LIMIT:
            return frozenset(self.scan(text)) if self._may_match(text[:SCAN_LIMIT]) else _NONE
        known = self._long.get(text)
        if known is not None:
            return known
        found = frozenset(self.scan(text)) if self._may_match(text) else _NONE
        if self._long_chars + n > LONG_CACHE_CHARS:
            self._long.clear()
            self._long_chars = 0
        self._long[text] = found
        self._long_chars += n
        return found

    def _may_match(self, scan: str) -> bool:
        if (self._defaults_only and DEFAULT_NEEDS_CHAR.search(scan) is None
                and DEFAULT_NEEDS_PREFIX.search(scan) is None):
            return False  # two searches in C for what every default rule needs, instead of all the rules
        if self._any is None or self._any.search(scan) is not None:
            return True
        return any(r.pattern.search(scan) is not None for r in self._alone)


_NONE: frozenset[str] = frozenset()


@dataclass(slots=True)
class Findings:
    """(type, location) pairs of one scan, bounded."""

    items: set[tuple[str, str]] = field(default_factory=set)

    def add(self, types: AbstractSet[str], location: str) -> None:
        for t in types:
            if len(self.items) < MAX_FINDINGS:
                self.items.add((t, location))


Hits = tuple[tuple[AbstractSet[str], str], ...]  # (types, location) of one part of a call, in scan order
NO_HITS: Hits = ()


def _walk(rules: SensitiveRules, v: Any, path: str, out: list[tuple[AbstractSet[str], str]], depth: int = 0) -> None:
    if isinstance(v, str):
        found = rules.types_in(v)
        if found:
            out.append((found, path or "$"))
    elif isinstance(v, bool) or v is None:
        return
    elif isinstance(v, int):
        if v > 10**12:
            found = rules.types_in(str(v))
            if found:
                out.append((found, path or "$"))
    elif depth >= MAX_DEPTH:
        return
    elif isinstance(v, dict):
        for k, sub in list(v.items())[:256]:
            _walk(rules, sub, f"{path}.{k}" if path else str(k), out, depth + 1)
    elif isinstance(v, list):
        for sub in v[:256]:
            _walk(rules, sub, path + "[]", out, depth + 1)


def body_hits(rules: SensitiveRules, body: Any) -> Hits:
    """What a body's values (parsed JSON or a form) hold: (types, field path or ``$``) in scan order. The
    answer depends on the body and the rules only: a body that repeats can be answered from memory."""
    out: list[tuple[AbstractSet[str], str]] = []
    _walk(rules, body, "", out)
    return tuple(out) if out else NO_HITS


def path_hits(rules: SensitiveRules, path_segments: Sequence[str]) -> tuple[AbstractSet[str], ...]:
    """The types each path segment holds (segments with none left out), in order."""
    out = []
    for seg in path_segments:
        found = rules.types_in(unquote(seg) if "%" in seg else seg)
        if found:
            out.append(found)
    return tuple(out)


def scan_request(rules: SensitiveRules, path_segments: Sequence[str], query: Sequence[Sequence[str]],
                 headers: Sequence[Sequence[str]], response_headers: Sequence[Sequence[str]] = (),
                 request_body: Any = None, response_body: Any = None,
                 request_text: str | None = None, response_text: str | None = None, *,
                 path_found: Sequence[AbstractSet[str]] | None = None, request_hits: Hits | None = None,
                 response_hits: Hits | None = None) -> set[tuple[str, str]]:
    """Findings of one API call. Bodies: parsed JSON (``*_body``) or raw text (``*_text``), or what a
    body holds already known (``*_hits``, :func:`body_hits`); ``path_found``: :func:`path_hits` of the
    segments, already known. The same findings either way."""
    out = Findings()
    for found in (path_found if path_found is not None else path_hits(rules, path_segments)):
        out.add(found, "path")
    for q in query:
        found = rules.types_in(q[1])
        if found:
            out.add(found, f"query:{q[0][:64]}")
    for h in headers:
        found = rules.types_in(h[1])
        if found:
            out.add(found, f"header:{h[0].lower()[:64]}")
    for h in response_headers:
        found = rules.types_in(h[1])
        if found:
            out.add(found, f"response.header:{h[0].lower()[:64]}")
    _scan_body(rules, request_body, request_text, request_hits, "request.body", out)
    _scan_body(rules, response_body, response_text, response_hits, "response.body", out)
    return out.items


def _scan_body(rules: SensitiveRules, body: Any, text: str | None, hits: Hits | None, where: str,
               out: Findings) -> None:
    """A body's values (*body*: parsed JSON or a form; or *hits*, what they hold) or, not parsed, its
    *text* as one value."""
    if hits is None and body is not None:
        hits = body_hits(rules, body)
    if hits is not None:
        for found, path in hits:
            out.add(found, f"{where}:{path}")
    elif text:
        found = rules.types_in(text)
        if found:
            out.add(found, where + ":$")
