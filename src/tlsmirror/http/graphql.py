"""GraphQL over HTTP: the operation of a request and the errors of its response (pure, bounded).

A request is GraphQL when its JSON body is an object with a string ``query`` (or a persisted-query
extension), or a GET has ``query=`` in its query string, and that query lexes as an executable
GraphQL document; or when its path is one of the GraphQL paths (``/graphql`` by default), then even a
malformed body is reported (flagged). A small lexer finds the operations (type, name), skipping
strings, block strings, comments, variable definitions, arguments, directives and fragments, and
lists the top-level fields of the selected operation (``operationName``, else the only one).

Bad input never raises out of :func:`graphql_info`: it gives a partial result with ``flags``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from .errors import HttpError
from .events import Body, Exchange, Headers

GRAPHQL_PATHS = ("/graphql",)
MAX_FIELDS = 64  # top-level fields listed
MAX_OPERATIONS = 16  # operations of one document listed
MAX_ERRORS = 5  # error messages listed
MAX_TOKENS = 100_000  # the lexer stops there (flag graphql_too_long)
MAX_TEXT = 256  # characters of one error message kept

OPERATION_TYPES = ("query", "mutation", "subscription")

_TOKEN = re.compile(r'''
    (?P<ws>[\s,\ufeff]+)
  | (?P<comment>\#[^\n\r]*)
  | (?P<block>"""(?:[^"\\]|\\.|"(?!""))*""")
  | (?P<string>"(?:\\.|[^"\\\n\r])*")
  | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<spread>\.\.\.)
  | (?P<punct>[!$&()\:=@\[\]{|}])
''', re.VERBOSE)


class GraphqlError(HttpError):
    """A GraphQL document or body that cannot be read (internal: turned into a flag)."""


def tokens(text: str) -> list[tuple[str, str]]:
    """``(kind, text)`` tokens of a GraphQL document: kinds ``name``, ``string``, ``number``, ``spread``,
    ``punct`` (whitespace, commas and comments dropped). Raises :class:`GraphqlError`."""
    out: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    match = _TOKEN.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            raise GraphqlError(f"unexpected character at {pos}")
        kind = m.lastgroup or ""
        pos = m.end()
        if kind in ("ws", "comment"):
            continue
        if kind == "block":
            kind = "string"
        out.append((kind, m.group()))
        if len(out) > MAX_TOKENS:
            raise GraphqlError("document too long")
    return out


@dataclass(slots=True)
class Operation:
    type: str
    name: str | None
    fields: list[str]


def _skip_group(toks: list[tuple[str, str]], i: int, open_: str, close: str) -> int:
    """The index after the group opened at ``toks[i]`` (which is ``open_``)."""
    depth = 0
    n = len(toks)
    while i < n:
        t = toks[i][1] if toks[i][0] == "punct" else ""
        if t == open_:
            depth += 1
        elif t == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise GraphqlError(f"unclosed {open_!r}")


def _is(toks: list[tuple[str, str]], i: int, kind: str, text: str | None = None) -> bool:
    return i < len(toks) and toks[i][0] == kind and (text is None or toks[i][1] == text)


def _directives(toks: list[tuple[str, str]], i: int) -> int:
    while _is(toks, i, "punct", "@"):
        i += 1
        if not _is(toks, i, "name"):
            raise GraphqlError("directive without a name")
        i += 1
        if _is(toks, i, "punct", "("):
            i = _skip_group(toks, i, "(", ")")
    return i


def _selection(toks: list[tuple[str, str]], i: int, fields: list[str], max_fields: int = MAX_FIELDS) -> int:
    """Reads the selection set at ``toks[i]`` (``{``), adding its fields' names; returns the index after it."""
    if not _is(toks, i, "punct", "{"):
        raise GraphqlError("selection set expected")
    i += 1
    while True:
        if i >= len(toks):
            raise GraphqlError("unclosed selection set")
        kind, text = toks[i]
        if kind == "punct" and text == "}":
            return i + 1
        if kind == "spread":
            i += 1
            if _is(toks, i, "name", "on"):  # inline fragment: its fields are this level's
                i += 2
            elif _is(toks, i, "name"):  # fragment spread
                i += 1
                i = _directives(toks, i)
                continue
            i = _directives(toks, i)
            i = _selection(toks, i, fields, max_fields)
            continue
        if kind != "name":
            raise GraphqlError(f"field expected, got {text!r}")
        name = text
        i += 1
        if _is(toks, i, "punct", ":"):  # alias: the field is the next name
            i += 1
            if not _is(toks, i, "name"):
                raise GraphqlError("field name expected after alias")
            name = toks[i][1]
            i += 1
        if len(fields) < max_fields:
            fields.append(name)
        if _is(toks, i, "punct", "("):
            i = _skip_group(toks, i, "(", ")")
        i = _directives(toks, i)
        if _is(toks, i, "punct", "{"):
            i = _skip_group(toks, i, "{", "}")


def operations(document: str, max_fields: int = MAX_FIELDS) -> list[Operation]:
    """The operations of an executable document, in order (at most ``max_fields`` top-level fields each).
    Raises :class:`GraphqlError`."""
    toks = tokens(document)
    ops: list[Operation] = []
    i, n = 0, len(toks)
    if n == 0:
        raise GraphqlError("empty document")
    while i < n:
        kind, text = toks[i]
        if kind == "punct" and text == "{":  # query shorthand
            fields: list[str] = []
            i = _selection(toks, i, fields, max_fields)
            ops.append(Operation("query", None, fields))
        elif kind == "name" and text in OPERATION_TYPES:
            i += 1
            name = None
            if _is(toks, i, "name"):
                name = toks[i][1]
                i += 1
            if _is(toks, i, "punct", "("):
                i = _skip_group(toks, i, "(", ")")
            i = _directives(toks, i)
            fields = []
            i = _selection(toks, i, fields, max_fields)
            ops.append(Operation(text, name, fields))
        elif kind == "name" and text == "fragment":
            i += 1
            if not (_is(toks, i, "name") and _is(toks, i + 1, "name", "on") and _is(toks, i + 2, "name")):
                raise GraphqlError("bad fragment definition")
            i = _directives(toks, i + 3)
            if not _is(toks, i, "punct", "{"):
                raise GraphqlError("fragment without a selection set")
            i = _skip_group(toks, i, "{", "}")
        else:
            raise GraphqlError(f"definition expected, got {text!r}")
    if not ops:
        raise GraphqlError("no operation")
    return ops


@dataclass(slots=True)
class GraphqlCall:
    operation_type: str | None
    operation_name: str | None
    fields: list[str]
    operations: list[Operation]
    persisted_hash: str | None = None
    errors: int | None = None  # response errors (None: no GraphQL response seen)
    error_messages: list[str] = field(default_factory=list)
    has_data: bool | None = None
    flags: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        """The record's ``graphql`` object (docs/exchange-schema.md)."""
        return {
            "operation_type": self.operation_type,
            "operation_name": self.operation_name,
            "fields": self.fields,
            "operations": [{"type": o.type, "name": o.name} for o in self.operations[:MAX_OPERATIONS]],
            "persisted_query_hash": self.persisted_hash,
            "errors": self.errors,
            "error_messages": self.error_messages,
            "data": self.has_data,
            "flags": sorted(self.flags),
        }

    @property
    def span_name(self) -> str:
        kind = self.operation_type or "query"
        return f"{kind} {self.operation_name}" if self.operation_name else kind


def _header(headers: Headers, name: str) -> str | None:
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def _json(body: Body) -> Any:
    try:
        return orjson.loads(body.data)
    except orjson.JSONDecodeError:
        return None


def _looks_like(body: Body | None) -> bool:
    if body is None or not body.data:
        return False
    data = body.data
    head = data[:16].lstrip()
    return head[:1] in (b"{", b"[") and (b'"query"' in data or b'"persistedQuery"' in data)


def _request(ex: Exchange) -> tuple[dict[str, Any] | None, bool]:
    """The GraphQL request parameters (query, operationName, extensions), and whether the body was cut."""
    body = ex.request_body
    if ex.method == "POST" or (body is not None and body.data):
        if body is None or not body.data:
            return None, False
        parsed = _json(body)
        if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
            parsed = parsed[0]  # a batch: the first operation
        if isinstance(parsed, dict):
            return parsed, body.truncated
        return None, body.truncated
    target = ex.path or ""
    _, sep, query = target.partition("?")
    if not sep or "query=" not in query:
        return None, False
    params: dict[str, Any] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        params.setdefault(k, v)
    if "extensions" in params:
        try:
            params["extensions"] = orjson.loads(params["extensions"])
        except orjson.JSONDecodeError:
            params.pop("extensions")
    return params, False


@dataclass(frozen=True, slots=True)
class GraphqlOptions:
    """What is read as GraphQL and how much of it is listed (``http.graphql_*`` configuration keys)."""

    paths: tuple[str, ...] = GRAPHQL_PATHS  # read as GraphQL even when the body does not look like it
    max_fields: int = MAX_FIELDS  # top-level fields listed
    max_errors: int = MAX_ERRORS  # error messages listed


DEFAULT_OPTIONS = GraphqlOptions()


def maybe_graphql(ex: Exchange, paths: tuple[str, ...] = GRAPHQL_PATHS) -> bool:
    """A cheap test before :func:`graphql_info`: could this exchange be a GraphQL call?"""
    path = ex.path
    if path is not None:
        p = path.partition("?")[0]
        if p in paths:
            return True
        if "query=" in path and ex.method == "GET":
            return True
    return ex.method == "POST" and _looks_like(ex.request_body)


def graphql_info(ex: Exchange, paths: tuple[str, ...] | None = None,
                 options: GraphqlOptions = DEFAULT_OPTIONS) -> GraphqlCall | None:
    """The exchange read as a GraphQL call, or None when it is not one (``paths``: ``options.paths``)."""
    if paths is None:
        paths = options.paths
    if not maybe_graphql(ex, paths):
        return None
    on_path = ex.path is not None and ex.path.partition("?")[0] in paths
    params, cut = _request(ex)
    flags: set[str] = set()
    if cut:
        flags.add("graphql_request_cut")
    query = params.get("query") if params is not None else None
    persisted: str | None = None
    if params is not None:
        ext = params.get("extensions")
        if isinstance(ext, dict):
            pq = ext.get("persistedQuery")
            if isinstance(pq, dict) and isinstance(pq.get("sha256Hash"), str):
                persisted = pq["sha256Hash"][:128]
    wanted = params.get("operationName") if params is not None else None
    if not isinstance(wanted, str):
        wanted = None
    ops: list[Operation] = []
    if isinstance(query, str):
        try:
            ops = operations(query, options.max_fields)
        except GraphqlError:
            if not on_path:
                return None
            flags.add("graphql_bad_query")
    elif persisted is None:
        if not on_path:
            return None
        flags.add("graphql_no_query")
    else:
        flags.add("graphql_persisted_query")
    op: Operation | None = None
    if ops:
        if wanted is not None:
            op = next((o for o in ops if o.name == wanted), None)
            if op is None:
                flags.add("graphql_operation_not_found")
        elif len(ops) == 1:
            op = ops[0]
        else:
            flags.add("graphql_operation_ambiguous")
    call = GraphqlCall(op.type if op is not None else None,
                       op.name if op is not None else wanted, op.fields if op is not None else [],
                       ops, persisted, flags=flags)
    _response(ex, call, options.max_errors)
    return call


def _response(ex: Exchange, call: GraphqlCall, max_errors: int = MAX_ERRORS) -> None:
    body = ex.response_body
    if body is None or not body.data:
        return
    ct = (_header(ex.response_headers, "content-type") or "").lower()
    if "json" not in ct and ct:
        return
    parsed = _json(body)
    if not isinstance(parsed, dict):
        call.flags.add("graphql_response_cut" if body.truncated else "graphql_bad_response")
        return
    errors = parsed.get("errors")
    call.has_data = parsed.get("data") is not None
    if isinstance(errors, list):
        call.errors = len(errors)
        for e in errors[:max_errors]:
            msg = e.get("message") if isinstance(e, dict) else None
            call.error_messages.append(msg[:MAX_TEXT] if isinstance(msg, str) else "")
    else:
        call.errors = 0
