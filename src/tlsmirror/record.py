"""The exchange record: one :class:`~tlsmirror.calls.ApiCall` as a JSON-able dict.

This is the format of ``tlsmirror replay`` (JSON lines) and of the daemon's file output; it is
documented field by field in ``docs/exchange-schema.md``. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

import orjson

from .calls import ApiCall, Connection
from .http.bodies import is_event_stream, is_text
from .http.events import Body, Exchange, Headers

if TYPE_CHECKING:  # the GraphQL reader is imported where used
    from .http.graphql import GraphqlOptions

BODY_MODES = ("auto", "base64", "none")
RECORD_VERSION = 1

# Content types whose bodies are binary even when their bytes happen to be valid UTF-8.
_BINARY_PREFIXES = ("image/", "audio/", "video/", "font/", "application/octet-stream", "application/zip",
                    "application/gzip", "application/pdf", "application/grpc", "application/protobuf",
                    "application/x-protobuf", "application/vnd.google.protobuf", "application/wasm",
                    "application/cbor", "application/msgpack", "application/x-msgpack")
# C0 controls other than TAB, LF, FF, CR, plus DEL: their presence means "not text"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


_second_cache: dict[int, str] = {}


class _IsoCache:
    """The last time formatted and the last second's text (read and replaced whole, as tuples: safe when
    exporters run in several threads). A native object compiled: cheaper than module globals."""

    __slots__ = ("head", "last")

    def __init__(self) -> None:
        self.last: tuple[int, str] = (-1, "")
        self.head: tuple[int, str] = (-1, "")


_ISO: Final = _IsoCache()
# "000" to "999": the microseconds as two of them (two list reads, cheaper than str() of an int and a slice)
_DIGITS3: Final[list[str]] = [str(n + 1000)[1:] for n in range(1000)]


def micros(ts: float) -> int:
    """Epoch seconds as whole microseconds, rounded half up (what the record shows)."""
    if ts >= 0.0:
        return int(ts * 1_000_000.0 + 0.5)
    return round(ts * 1_000_000.0)


def _iso_head(sec: int) -> str:
    head = _second_cache.get(sec)
    if head is None:
        if len(_second_cache) > 4096:
            _second_cache.clear()
        head = _second_cache[sec] = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return head


def iso_micros(us_total: int) -> str:
    """Epoch microseconds as ISO-8601 UTC, e.g. ``2024-05-01T12:00:00.123456Z``.

    The part up to the second is formatted once per second (a small cache): timestamps of one capture
    cluster in few seconds, and strftime is the costly part. No format spec: compiled, one is 3x slower.
    """
    cache = _ISO
    last = cache.last
    if last[0] == us_total:
        return last[1]  # a record's start and end times are often the same microsecond
    sec = us_total // 1_000_000
    frac = us_total - sec * 1_000_000
    head = cache.head
    if head[0] == sec:
        text = f"{head[1]}.{_DIGITS3[frac // 1000]}{_DIGITS3[frac % 1000]}Z"
    else:
        head_text = _iso_head(sec)
        cache.head = (sec, head_text)
        text = f"{head_text}.{_DIGITS3[frac // 1000]}{_DIGITS3[frac % 1000]}Z"
    cache.last = (us_total, text)
    return text


def iso_time(ts: float) -> str:
    """Epoch seconds as ISO-8601 UTC with microseconds, e.g. ``2024-05-01T12:00:00.123456Z``."""
    return iso_micros(micros(ts))


def to_json_line(record: dict[str, Any]) -> bytes:
    """One compact JSON line (UTF-8, trailing newline). orjson where it can, the json module otherwise
    (orjson refuses strings with lone surrogates)."""
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8",
                                                                                              "surrogatepass")


def header_value(headers: Headers, name: str) -> str | None:
    """The first value of header ``name`` (case-insensitive), or None."""
    name = name.lower()
    size = len(name)
    for n, v in headers:
        if len(n) == size and n.lower() == name:
            return v
    return None


def _content_type(headers: Headers) -> str | None:
    """``header_value(headers, "content-type")``: the usual spellings compared as they are, ``lower()`` only
    for a 12-character name of another case that starts with C (not for X-Request-Id and the like)."""
    for n, v in headers:
        if len(n) == 12:
            if n == "Content-Type" or n == "content-type":
                return v
            first = n[0]
            if (first == "C" or first == "c") and n.lower() == "content-type":
                return v
    return None


def split_target(target: str | None) -> tuple[str | None, str | None]:
    """A request target split at the first ``?`` into (path, query string or None)."""
    if target is None:
        return None, None
    path, sep, query = target.partition("?")
    if sep:
        return path, query
    return path, None


def query_params(query: str | None) -> list[list[str]]:
    """The query string as ``[name, value]`` pairs, in order, repeats kept, percent-decoded."""
    if not query:
        return []
    if "%" in query or "+" in query:
        return [[k, v] for k, v in parse_qsl(query, keep_blank_values=True)]
    # Nothing to decode: parse_qsl's result without its per-field unquoting.
    out: list[list[str]] = []
    for field in query.split("&"):
        if field:
            name, _, value = field.partition("=")
            out.append([name, value])
    return out


def scheme_of(call: ApiCall) -> str:
    """The exchange's scheme: what the stage saw, else "https" over TLS and "http" otherwise."""
    return call.exchange.scheme or ("https" if call.connection.tls else "http")


def url_of(call: ApiCall) -> str | None:
    """``scheme://authority/target`` (None without a request target; authority falls back to the
    server address)."""
    ex = call.exchange
    target = ex.path
    if target is None:
        return None
    if target.startswith(("http://", "https://")):
        return target
    authority = ex.authority or _server_authority(call.connection)
    if target == "*":  # OPTIONS *: the server itself
        target = ""
    elif not target.startswith("/"):
        target = "/" + target
    return f"{scheme_of(call)}://{authority}{target}"


def _server_authority(conn: Connection) -> str:
    host = f"[{conn.server_ip}]" if ":" in conn.server_ip else conn.server_ip
    default = 443 if conn.tls else 80
    return host if conn.server_port == default else f"{host}:{conn.server_port}"


def body_is_text(data: bytes, content_type: str | None) -> bool:
    """Whether ``data`` is shown as a UTF-8 string (``auto`` mode): valid UTF-8 and either a text
    content type, or no binary content type and no control characters."""
    return _as_text(data, content_type) is not None


_KIND_TEXT, _KIND_BINARY, _KIND_SNIFF = 0, 1, 2
_ct_kinds: dict[str, int] = {}  # content type -> kind (few distinct values: a small memo)


def _ct_kind(content_type: str | None) -> int:
    if not content_type:
        return _KIND_SNIFF
    kind = _ct_kinds.get(content_type)
    if kind is None:
        if is_text(content_type):
            kind = _KIND_TEXT
        elif content_type.strip().lower().startswith(_BINARY_PREFIXES):
            kind = _KIND_BINARY
        else:
            kind = _KIND_SNIFF
        if len(_ct_kinds) >= 256:
            _ct_kinds.clear()
        _ct_kinds[content_type] = kind
    return kind


def _as_text(data: bytes, content_type: str | None) -> str | None:
    """``data`` as the string the record shows in ``auto`` mode, or None when it goes as base64."""
    kind = _ct_kind(content_type)
    if kind == _KIND_BINARY:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if kind == _KIND_SNIFF and _CONTROL.search(text) is not None:
        return None
    return text


def body_dict(body: Body | None, content_type: str | None, mode: str = "auto") -> dict[str, Any] | None:
    """One body of the record (None when the message had none)."""
    if body is None:
        return None
    data = body.data
    # a copy of the mode's template (the key order, the usual flags; cheaper than a literal of 5-7 keys)
    if mode == "none":
        out = _BODY_NONE.copy()
    else:
        text = _as_text(data, content_type) if mode == "auto" else None
        if text is None:
            out = _BODY_BASE64.copy()
            out["text"] = base64.b64encode(data).decode("ascii")
        else:
            out = _BODY_UTF8.copy()
            out["text"] = text
    out["size"] = body.size
    out["wire_size"] = body.wire_size
    out["captured"] = len(data)
    if body.truncated is not False:
        out["truncated"] = body.truncated
    if body.decode_error is not None:
        out["decode_error"] = body.decode_error
    return out


_BODY_NONE: Final[dict[str, Any]] = {"size": 0, "wire_size": 0, "captured": 0, "truncated": False,
                                     "decode_error": None}
_BODY_BASE64: Final[dict[str, Any]] = {**_BODY_NONE, "encoding": "base64", "text": ""}
_BODY_UTF8: Final[dict[str, Any]] = {**_BODY_NONE, "encoding": "utf-8", "text": ""}


def _epoch(us: int | None) -> float | None:
    """The time to the microsecond: the double nearest to it, as round(ts, 6) gives, 15x cheaper."""
    return None if us is None else us / 1_000_000.0


def call_to_dict(call: ApiCall, *, body_mode: str = "auto", graphql: GraphqlOptions | None = None,
                 websocket_list: bool = True) -> dict[str, Any]:
    """The JSON record of one API call (``docs/exchange-schema.md``).

    ``body_mode``: ``auto`` (text bodies as UTF-8 strings, others base64), ``base64`` (every body
    base64) or ``none`` (sizes and flags only, no content). Headers and trailers are the exchange's
    tuples of (name, value) pairs, not copied: JSON encoders write them as arrays. ``graphql``: GraphQL
    paths and limits (default: ``/graphql``, 64 fields, 5 errors). ``websocket_list``: False leaves the
    session's messages out of ``websocket`` (they go as :func:`websocket_message_records` instead).
    """
    conn = call.connection
    rec: dict[str, Any] = _RECORD_TEMPLATE.copy()
    rec["connection_id"] = conn.id
    rec["client"] = {"ip": conn.client_ip, "port": conn.client_port}
    rec["server"] = {"ip": conn.server_ip, "port": conn.server_port}
    if conn.tls:
        rec["tls"] = {"version": conn.tls_version, "suite": conn.tls_suite, "sni": conn.sni, "alpn": conn.alpn}
    return _record(call, body_mode, graphql, websocket_list, rec)


def call_to_json_line(call: ApiCall, *, body_mode: str = "auto", graphql: GraphqlOptions | None = None,
                      websocket_list: bool = True) -> bytes:
    """``to_json_line(call_to_dict(call, ...))``, the same bytes, with the part of the record that is the
    connection's (client, server, TLS: the same for all its calls) serialised once per connection."""
    conn = call.connection
    try:
        parts = _conn_json.get(id(conn))
        if parts is None or parts[0] is not conn:
            parts = _connection_json(conn)
        # the connection's record head, copied (never filled in itself: shared by all the connection's calls)
        rec = _record(call, body_mode, graphql, websocket_list, parts[1].copy())
        return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # what orjson refuses (lone surrogates): the json module, without fragments
        return to_json_line(call_to_dict(call, body_mode=body_mode, graphql=graphql,
                                         websocket_list=websocket_list))


def call_to_json_lines(call: ApiCall, *, body_mode: str = "auto", graphql: GraphqlOptions | None = None,
                       per_message: bool = False) -> list[bytes]:
    """The JSON lines of one call: its record, or with ``per_message`` (``websocket_records: message``) and a
    WebSocket session, the session's record without its message list followed by one line per message."""
    if not per_message or call.exchange.websocket is None:
        return [call_to_json_line(call, body_mode=body_mode, graphql=graphql)]
    lines = [call_to_json_line(call, body_mode=body_mode, graphql=graphql, websocket_list=False)]
    lines += [to_json_line(rec) for rec in websocket_message_records(call, body_mode=body_mode)]
    return lines


# id(connection) -> (the connection, its record template for JSON); the connection is held, so its id is
# not reused while the entry lives. Calls of a connection come while it is open: few entries.
_conn_json: dict[int, tuple[Connection, dict[str, Any]]] = {}


def _connection_json(conn: Connection) -> tuple[Connection, dict[str, Any]]:
    """The connection's record template for :func:`call_to_json_line`: ``_JSON_TEMPLATE`` with the
    connection's part set. That part (``connection_id``, ``client``, ``server``, ``tls``: the same for all
    its calls) is serialised once, as one fragment in the place of ``connection_id``'s value that also
    writes the three keys after it (the template has no keys of theirs): the bytes of
    ``to_json_line(call_to_dict(call))``, four keys fewer to fill and to write per call."""
    if len(_conn_json) >= 1024:
        _conn_json.clear()
    tls = orjson.dumps({"version": conn.tls_version, "suite": conn.tls_suite, "sni": conn.sni,
                        "alpn": conn.alpn}) if conn.tls else b"null"
    client = orjson.dumps({"ip": conn.client_ip, "port": conn.client_port})
    server = orjson.dumps({"ip": conn.server_ip, "port": conn.server_port})
    head = b"".join((orjson.dumps(conn.id), b',"client":', client, b',"server":', server, b',"tls":', tls))
    template = _JSON_TEMPLATE.copy()
    template["connection_id"] = orjson.Fragment(head)
    parts = (conn, template)
    _conn_json[id(conn)] = parts
    return parts


# The record's keys in the documented order (docs/exchange-schema.md), the first value set.
_RECORD_TEMPLATE: Final[dict[str, Any]] = dict.fromkeys((
    "v", "request_start", "request_start_ts", "request_end", "request_end_ts", "response_start",
    "response_start_ts", "response_end", "response_end_ts", "duration_ms", "connection_id", "client", "server",
    "tls", "http_version", "stream_id", "method", "scheme", "authority", "target", "path", "route",
    "query_string", "query", "url", "status", "reason", "request", "response", "flags"))
_RECORD_TEMPLATE["v"] = RECORD_VERSION
# The same without the keys the connection's fragment writes (see _connection_json).
_JSON_TEMPLATE: Final[dict[str, Any]] = {k: v for k, v in _RECORD_TEMPLATE.items()
                                         if k not in ("client", "server", "tls")}
# A request's or response's part, and a body's in each mode: the values the usual message has preset.
_MESSAGE_TEMPLATE: Final[dict[str, Any]] = {"headers": (), "trailers": (), "content_type": None, "body": None}


def _record(call: ApiCall, body_mode: str, graphql: GraphqlOptions | None, websocket_list: bool,
            rec: dict[str, Any]) -> dict[str, Any]:
    """Fill ``rec`` (a fresh copy of a template: the documented key order, the connection's part set, every
    other value None; a copy of its table is cheaper than building the dict key by key) with the call's
    record. A value that is None stays the template's."""
    if body_mode not in BODY_MODES:
        raise ValueError(f"body_mode must be one of {', '.join(BODY_MODES)}: {body_mode!r}")
    ex: Exchange = call.exchange
    target = ex.path
    path, query = split_target(target)
    # times as whole microseconds: the record shows them, and the duration between them; each text
    # formatted once (neighbours are often the same microsecond)
    ts = ex.request_ts
    req_us = -1
    req_iso = ""
    if ts is not None:
        req_us = micros(ts)
        req_iso = iso_micros(req_us)
        rec["request_start"] = req_iso
        rec["request_start_ts"] = req_us / 1_000_000.0
    ts = ex.request_end_ts
    req_end_us = -1
    req_end_iso = ""
    if ts is not None:
        req_end_us = micros(ts)
        req_end_iso = req_iso if req_end_us == req_us and req_iso else iso_micros(req_end_us)
        rec["request_end"] = req_end_iso
        rec["request_end_ts"] = req_end_us / 1_000_000.0
    ts = ex.response_ts
    resp_us = -1
    resp_iso = ""
    if ts is not None:
        resp_us = micros(ts)
        resp_iso = req_end_iso if resp_us == req_end_us and req_end_iso else iso_micros(resp_us)
        rec["response_start"] = resp_iso
        rec["response_start_ts"] = resp_us / 1_000_000.0
    ts = ex.response_end_ts
    resp_end_us = -1
    if ts is not None:
        resp_end_us = micros(ts)
        rec["response_end"] = resp_iso if resp_end_us == resp_us and resp_iso else iso_micros(resp_end_us)
        rec["response_end_ts"] = resp_end_us / 1_000_000.0
    start = req_us if ex.request_ts is not None else resp_us if ex.response_ts is not None else None
    end = resp_end_us if ex.response_end_ts is not None else req_end_us if ex.request_end_ts is not None else None
    if start is not None and end is not None:
        rec["duration_ms"] = max(end - start, 0) / 1000.0
    req_ct = _content_type(ex.request_headers)
    resp_ct = _content_type(ex.response_headers)
    rec["http_version"] = ex.http_version
    if ex.stream_id is not None:
        rec["stream_id"] = ex.stream_id
    if ex.method is not None:
        rec["method"] = ex.method
    rec["scheme"] = scheme_of(call)
    if ex.authority is not None:
        rec["authority"] = ex.authority
    if target is not None:
        rec["target"] = target
        rec["path"] = path
        rec["url"] = url_of(call)
    if call.route is not None:
        rec["route"] = call.route  # the route template (http.route), from the engine's route table
    if query is not None:
        rec["query_string"] = query
    rec["query"] = query_params(query)
    if ex.status is not None:
        rec["status"] = ex.status
    if ex.reason is not None:
        rec["reason"] = ex.reason
    rec["request"] = _message(ex.request_headers, ex.request_trailers, req_ct, ex.request_body, body_mode)
    rec["response"] = _message(ex.response_headers, ex.response_trailers, resp_ct, ex.response_body, body_mode)
    rec["flags"] = sorted(ex.flags) if ex.flags else []
    # API protocols above HTTP: keys present only for the calls they describe
    # (their readers are imported where used: most calls are none of these, and start-up stays short)
    if ex.websocket is not None:
        from .http.websocket import session_dict

        rec["websocket"] = session_dict(ex.websocket, body_mode != "none")
        if not websocket_list:
            rec["websocket"]["list"] = []
    if (req_ct is not None and req_ct.startswith("application/grpc")) or \
            (resp_ct is not None and resp_ct.startswith("application/grpc")):
        from .http.grpc import DECODED_MESSAGES, grpc_info

        info = grpc_info(ex)
        if info is not None:
            rec["grpc"] = info.to_dict(0 if body_mode == "none" else DECODED_MESSAGES)
    elif resp_ct is not None and is_event_stream(resp_ct):
        from .http.sse import sse_info

        sse = sse_info(ex)
        if sse is not None:
            rec["sse"] = sse.to_dict(body_mode != "none")
    elif (ex.method == "POST" or ex.method == "GET") and maybe_graphql(ex, path, graphql):
        graphql_info = _graphql_reader()
        gql = graphql_info(ex, options=graphql) if graphql is not None else graphql_info(ex)  # None unless GraphQL
        if gql is not None:
            rec["graphql"] = gql.to_dict()
    return rec


def _message(headers: Headers, trailers: Headers, content_type: str | None, body: Body | None,
             body_mode: str) -> dict[str, Any]:
    """A request's or response's part of the record. Headers and trailers are the exchange's tuples of
    (name, value) pairs: JSON arrays as they are."""
    part: dict[str, Any] = _MESSAGE_TEMPLATE.copy()
    part["headers"] = headers
    if trailers:
        part["trailers"] = trailers
    if content_type is not None:
        part["content_type"] = content_type
    if body is not None:
        part["body"] = body_dict(body, content_type, body_mode)
    return part


GRAPHQL_PATHS = ("/graphql",)  # http.graphql.GRAPHQL_PATHS, the default (a test keeps them equal)


def maybe_graphql(ex: Exchange, path: str | None, graphql: GraphqlOptions | None = None) -> bool:
    """``http.graphql.maybe_graphql`` (the same answer, a test compares them) without importing the
    GraphQL reader: most calls are not GraphQL, and the reader is neither imported at start-up nor run
    for them. ``path``: the request target up to its ``?``."""
    if path is not None:
        if path in (GRAPHQL_PATHS if graphql is None else graphql.paths):
            return True
        target = ex.path
        if ex.method == "GET" and target is not None and "query=" in target:
            return True
    if ex.method != "POST":
        return False
    body = ex.request_body
    if body is None:
        return False
    data = body.data
    # one search rejects most bodies: both keys end in 'uery"'
    if not data or b'uery"' not in data or (b'"query"' not in data and b'"persistedQuery"' not in data):
        return False
    return data[:16].lstrip()[:1] in (b"{", b"[")


_GRAPHQL_INFO: list[Any] = []  # the GraphQL reader, imported on first use and kept


def _graphql_reader() -> Any:
    """``http.graphql.graphql_info``, imported once: most calls of a run are GET or POST and an import
    statement in a compiled function costs as much as the reader's own pre-check (measured 15k
    instructions per call)."""
    if not _GRAPHQL_INFO:
        from .http.graphql import graphql_info

        _GRAPHQL_INFO.append(graphql_info)
    return _GRAPHQL_INFO[0]


def websocket_message_records(call: ApiCall, *, body_mode: str = "auto") -> list[dict[str, Any]]:
    """One record per message of the call's WebSocket session (``output.websocket_records: message``;
    docs/exchange-schema.md ``websocket_message``), in the session's order; [] without a session."""
    ws = call.exchange.websocket
    if ws is None:
        return []
    from .http.websocket import message_dict

    conn = call.connection
    ex = call.exchange
    start = ex.request_ts if ex.request_ts is not None else ex.response_ts
    head = {"v": RECORD_VERSION, "kind": "websocket_message", "connection_id": conn.id,
            "stream_id": ex.stream_id, "session_start_ts": None if start is None else _epoch(micros(start)),
            "authority": ex.authority, "path": split_target(ex.path)[0], "route": call.route}
    out = []
    for i, m in enumerate(ws.messages):
        rec = dict(head)
        rec["index"] = i
        rec["time"] = iso_time(m.ts)
        rec.update(message_dict(m, body_mode != "none"))
        out.append(rec)
    return out
