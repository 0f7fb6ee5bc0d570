"""API call -> span description (pure: no I/O, no clock; randomness only through ``random_bytes``).

One :class:`~tlsmirror.calls.ApiCall` becomes one SERVER :class:`SpanRecord`: start at the packet that
carried the first request byte, end at the one that carried the last response byte, trace and parent
ids from a W3C ``traceparent`` request header when valid (random otherwise), status ERROR for 5xx and
for exchanges cut short (gap, reset, truncated, no response). Attributes follow one of two profiles
(:data:`PROFILES`, tables in docs/otlp.md); everything passes through a :class:`~tlsmirror.redact.Redactor`
first. The shell exporter turns records into OTLP protobuf (``shell/export/otlp.py``).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .calls import ApiCall, Connection
from .http.bodies import is_event_stream
from .http.events import Body, Exchange, WebSocketSession
from .http.graphql import DEFAULT_OPTIONS, GraphqlCall, GraphqlOptions, graphql_info, maybe_graphql
from .http.grpc import SERVER_ERRORS, GrpcCall, grpc_info
from .http.sse import sse_info
from .inventory.sensitive import SensitiveRules, scan_request
from .record import query_params, split_target
from .redact import Redactor, media_type

AttrValue = str | bool | int | float | tuple[str, ...]
Attributes = tuple[tuple[str, AttrValue], ...]

PROFILES = ("hypertrace", "semconv")
SENSOR_NAME = "tlsmirror"

# flags of an exchange that was cut short: the span status is ERROR
CUT_FLAGS = frozenset({"gap", "reset", "truncated", "no_response"})

KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
                           "QUERY"})

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


MAX_SPAN_EVENTS = 128  # WebSocket messages sent as span events per session span (the first ones)
_WS_SIDES = ("client", "server")
_WS_OPCODES = {0: "continuation", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """One event of a span: a name, its time (ns since the epoch, capture time) and attributes."""

    name: str
    time_ns: int
    attributes: Attributes


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span, ready to encode. Ids are raw bytes (16 / 8 / 8 or empty when there is no parent);
    ``trace_flags`` are the W3C flags (bit 0 = sampled); ``remote_parent`` tells that the parent came
    from a ``traceparent`` header."""

    name: str
    kind: str
    start_ns: int
    end_ns: int
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    trace_state: str
    trace_flags: int
    remote_parent: bool
    error: bool
    status_message: str
    attributes: Attributes
    events: tuple[SpanEvent, ...] = ()
    dropped_events: int = 0


def parse_traceparent(value: str) -> tuple[bytes, bytes, int] | None:
    """``(trace_id, parent_span_id, flags)`` of a valid W3C traceparent header value, else None."""
    m = _TRACEPARENT.match(value.strip())
    if m is None:
        return None
    version, trace, parent, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id = bytes.fromhex(trace)
    parent_id = bytes.fromhex(parent)
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, int(flags, 16)


def to_ns(ts: float) -> int:
    return round(ts * 1e9)


def split_authority(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) -> (host without brackets, port or None)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end > 0:
            host = authority[1:end]
            rest = authority[end + 1:]
            if rest.startswith(":") and rest[1:].isdigit():
                return host, int(rest[1:])
            return host, None
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return authority, None


def _tls_version(name: str | None) -> tuple[str, str] | None:
    """'TLS1.3' -> ('tls', '1.3'); 'SSL3.0' -> ('ssl', '3.0')."""
    if not name:
        return None
    for prefix in ("TLS", "SSL"):
        if name.upper().startswith(prefix):
            return prefix.lower(), name[len(prefix):].lstrip("v ")
    return None


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


class _Facts:
    """Values both profiles derive from one call (after redaction)."""

    __slots__ = ("authority", "host", "method", "port", "query", "scheme", "target", "url", "url_path")

    def __init__(self, conn: Connection, ex: Exchange, redactor: Redactor) -> None:
        scheme = ex.scheme or ("https" if conn.tls else "http")
        self.scheme = scheme
        authority = ex.authority
        if not authority:
            host = conn.sni or (f"[{conn.server_ip}]" if ":" in conn.server_ip else conn.server_ip)
            authority = host if conn.server_port == _default_port(scheme) else f"{host}:{conn.server_port}"
        self.authority = authority
        host, port = split_authority(authority)
        self.host = host
        self.port = port if port is not None else conn.server_port
        self.method = ex.method
        path = ex.path
        if path is None or (ex.method == "CONNECT" and ex.websocket is None):  # RFC 8441 CONNECT has a path
            target = path or authority
            self.url = f"{scheme}://{authority}"
            self.url_path = ""
            self.query = None
        else:
            if path.startswith(("http://", "https://")):  # absolute-form
                rest = path.split("://", 1)[1]
                slash = rest.find("/")
                path = rest[slash:] if slash >= 0 else "/"
            target = redactor.url(path)
            sep_ = "" if target.startswith("/") or not target else "/"
            self.url = f"{scheme}://{authority}{sep_}{target}"
            p, sep, q = target.partition("?")
            self.url_path = p
            self.query = q if sep else None
        self.target = target


def _body_attrs(out: list[tuple[str, AttrValue]], side: str, body: Body | None,
                headers: Iterable[tuple[str, str]], redactor: Redactor) -> None:
    if body is None:
        return
    out.append((f"http.{side}.body.size", body.wire_size))
    if body.decode_error:
        out.append((f"{SENSOR_NAME}.{side}.body.decode_error", body.decode_error))
    if body.decode_error and body.data:
        mtype: str | None = "application/octet-stream"  # raw encoded bytes: never text
    else:
        mtype = media_type(headers)
    cap = redactor.body(body.data, mtype)
    if cap.data is None:
        out.append((f"{SENSOR_NAME}.{side}.body.dropped", True))
        return
    data = cap.data
    try:
        out.append((f"http.{side}.body", data.decode("utf-8")))
    except UnicodeDecodeError:
        out.append((f"http.{side}.body.base64", base64.b64encode(data).decode("ascii")))
    if cap.truncated or body.truncated:
        out.append((f"http.{side}.body.truncated", True))


def _grouped(headers: Iterable[tuple[str, str]], redactor: Redactor) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name, value in headers:
        key = name.lower()
        groups.setdefault(key, []).append(redactor.header_value(key, value))
    return groups


def _hypertrace_headers(out: list[tuple[str, AttrValue]], prefix: str, headers: Iterable[tuple[str, str]],
                        redactor: Redactor) -> None:
    for key, values in _grouped(headers, redactor).items():
        if len(values) == 1:
            out.append((f"{prefix}.{key}", values[0]))
        else:
            out.extend((f"{prefix}.{key}[{i}]", v) for i, v in enumerate(values))


def _semconv_headers(out: list[tuple[str, AttrValue]], prefix: str, headers: Iterable[tuple[str, str]],
                     redactor: Redactor) -> None:
    for key, values in _grouped(headers, redactor).items():
        out.append((f"{prefix}.{key}", tuple(values)))


def grpc_of(ex: Exchange) -> GrpcCall | None:
    """The exchange as a gRPC call (counts and status only), or None."""
    for name, value in ex.request_headers:
        if name.lower() == "content-type":
            if value.startswith("application/grpc"):
                return grpc_info(ex, decode=0)
            break
    return None


def _grpc_attrs(out: list[tuple[str, AttrValue]], info: GrpcCall | None, redactor: Redactor) -> None:
    if info is None:
        return
    out.append(("rpc.system", "grpc"))
    if info.service is not None:
        out.append(("rpc.service", info.service))
    if info.method is not None:
        out.append(("rpc.method", info.method))
    if info.status_code is not None:
        out.append(("rpc.grpc.status_code", info.status_code))
    if info.status_message:
        out.append((f"{SENSOR_NAME}.rpc.grpc.status_message",
                    redactor.header_value("grpc-message", info.status_message)))
    out += [(f"{SENSOR_NAME}.rpc.request.messages", len(info.request.messages)),
            (f"{SENSOR_NAME}.rpc.response.messages", len(info.response.messages))]
    if info.flags:
        out.append((f"{SENSOR_NAME}.rpc.flags", tuple(sorted(info.flags))))


def graphql_of(ex: Exchange, options: GraphqlOptions = DEFAULT_OPTIONS) -> GraphqlCall | None:
    return graphql_info(ex, options=options) if maybe_graphql(ex, options.paths) else None


def _graphql_attrs(out: list[tuple[str, AttrValue]], info: GraphqlCall | None) -> None:
    if info is None:
        return
    if info.operation_type is not None:
        out.append(("graphql.operation.type", info.operation_type))
    if info.operation_name is not None:
        out.append(("graphql.operation.name", info.operation_name))
    if info.fields:
        out.append((f"{SENSOR_NAME}.graphql.fields", tuple(info.fields)))
    if info.errors:
        out.append((f"{SENSOR_NAME}.graphql.errors", info.errors))
    if info.flags:
        out.append((f"{SENSOR_NAME}.graphql.flags", tuple(sorted(info.flags))))


def _sse_attrs(out: list[tuple[str, AttrValue]], ex: Exchange) -> None:
    for name, value in ex.response_headers:
        if name.lower() == "content-type":
            if is_event_stream(value):
                info = sse_info(ex)
                if info is not None:
                    out.append((f"{SENSOR_NAME}.sse.events", info.count))
                    if info.last_id is not None:
                        out.append((f"{SENSOR_NAME}.sse.last_id", info.last_id))
            return


def _websocket_attrs(out: list[tuple[str, AttrValue]], ex: Exchange) -> None:
    ws = ex.websocket
    if ws is None:
        return
    out += [(f"{SENSOR_NAME}.websocket.client.messages", ws.counts[0]),
            (f"{SENSOR_NAME}.websocket.server.messages", ws.counts[1])]
    if ws.close_code is not None:
        out.append((f"{SENSOR_NAME}.websocket.close_code", ws.close_code))
    if ws.subprotocol:
        out.append((f"{SENSOR_NAME}.websocket.subprotocol", ws.subprotocol))
    if ws.flags:
        out.append((f"{SENSOR_NAME}.websocket.flags", tuple(sorted(ws.flags))))


def _sensor_attrs(out: list[tuple[str, AttrValue]], conn: Connection, ex: Exchange) -> None:
    out.append((f"{SENSOR_NAME}.connection.id", conn.id))
    if ex.stream_id is not None:
        out.append((f"{SENSOR_NAME}.http.stream_id", ex.stream_id))
    if ex.flags:
        out.append((f"{SENSOR_NAME}.flags", tuple(sorted(ex.flags))))


def websocket_events(ws: WebSocketSession, limit: int = MAX_SPAN_EVENTS) -> tuple[tuple[SpanEvent, ...], int]:
    """One ``websocket.message`` event per message of the session (at most ``limit``: the first ones),
    and how many were left out (messages past the session's own bound included). Never the content."""
    events = []
    seq = [0, 0]
    for m in ws.messages[:limit]:
        seq[m.direction] += 1
        attrs: list[tuple[str, AttrValue]] = [
            # the OpenTelemetry message event's names: the span is the server's, so the client's are received
            ("message.type", "RECEIVED" if m.direction == 0 else "SENT"), ("message.id", seq[m.direction]),
            ("message.uncompressed_size", m.size),
            (f"{SENSOR_NAME}.websocket.direction", _WS_SIDES[m.direction]),
            (f"{SENSOR_NAME}.websocket.opcode", _WS_OPCODES.get(m.opcode, str(m.opcode))),
            (f"{SENSOR_NAME}.websocket.wire_size", m.wire_size)]
        if m.compressed:
            attrs.append(("message.compressed_size", m.wire_size))
        if m.cut:
            attrs.append((f"{SENSOR_NAME}.websocket.cut", True))
        events.append(SpanEvent("websocket.message", to_ns(m.ts), tuple(attrs)))
    return tuple(events), sum(ws.counts) - len(events)


def hypertrace_attributes(call: ApiCall, redactor: Redactor,
                          graphql: GraphqlOptions = DEFAULT_OPTIONS) -> Attributes:
    conn, ex = call.connection, call.exchange
    f = _Facts(conn, ex, redactor)
    out: list[tuple[str, AttrValue]] = []
    if ex.method is not None:
        out.append(("http.method", ex.method))
    out += [("http.url", f.url), ("http.target", f.target), ("http.scheme", f.scheme),
            ("http.host", f.authority), ("http.flavor", ex.http_version)]
    if call.route is not None:
        out.append(("http.route", _route(call.route, redactor)))
    if ex.status is not None:
        out.append(("http.status_code", ex.status))
    out += [("net.peer.ip", conn.client_ip), ("net.peer.port", conn.client_port),
            ("net.host.ip", conn.server_ip), ("net.host.port", conn.server_port)]
    _hypertrace_headers(out, "http.request.header", ex.request_headers, redactor)
    _hypertrace_headers(out, "http.response.header", ex.response_headers, redactor)
    _hypertrace_headers(out, "http.request.trailer", ex.request_trailers, redactor)
    _hypertrace_headers(out, "http.response.trailer", ex.response_trailers, redactor)
    _body_attrs(out, "request", ex.request_body, ex.request_headers, redactor)
    _body_attrs(out, "response", ex.response_body, ex.response_headers, redactor)
    if conn.tls:
        tv = _tls_version(conn.tls_version)
        if tv is not None:
            out.append(("tls.protocol.version", tv[1]))
        if conn.tls_suite:
            out.append(("tls.cipher", conn.tls_suite))
        if conn.sni:
            out.append(("tls.server_name", conn.sni))
        if conn.alpn:
            out.append(("tls.next_protocol", conn.alpn))
    _grpc_attrs(out, grpc_of(ex), redactor)
    _graphql_attrs(out, graphql_of(ex, graphql))
    _sse_attrs(out, ex)
    _websocket_attrs(out, ex)
    _sensor_attrs(out, conn, ex)
    return tuple(out)


def semconv_attributes(call: ApiCall, redactor: Redactor, graphql: GraphqlOptions = DEFAULT_OPTIONS) -> Attributes:
    conn, ex = call.connection, call.exchange
    f = _Facts(conn, ex, redactor)
    out: list[tuple[str, AttrValue]] = []
    if ex.method is not None:
        if ex.method in KNOWN_METHODS:
            out.append(("http.request.method", ex.method))
        else:
            out += [("http.request.method", "_OTHER"), ("http.request.method_original", ex.method)]
    out += [("url.full", f.url), ("url.scheme", f.scheme)]
    if f.url_path:
        out.append(("url.path", f.url_path))
    if f.query is not None:
        out.append(("url.query", f.query))
    if call.route is not None:
        out.append(("http.route", _route(call.route, redactor)))
    if ex.status is not None:
        out.append(("http.response.status_code", ex.status))
    out += [("server.address", f.host), ("server.port", f.port),
            ("client.address", conn.client_ip), ("client.port", conn.client_port),
            ("network.peer.address", conn.client_ip), ("network.peer.port", conn.client_port),
            ("network.local.address", conn.server_ip), ("network.local.port", conn.server_port),
            ("network.transport", "tcp"), ("network.protocol.name", "http"),
            ("network.protocol.version", ex.http_version)]
    for name, value in ex.request_headers:
        if name.lower() == "user-agent":
            out.append(("user_agent.original", redactor.header_value(name, value)))
            break
    _semconv_headers(out, "http.request.header", ex.request_headers, redactor)
    _semconv_headers(out, "http.response.header", ex.response_headers, redactor)
    _semconv_headers(out, "http.request.trailer", ex.request_trailers, redactor)
    _semconv_headers(out, "http.response.trailer", ex.response_trailers, redactor)
    _body_attrs(out, "request", ex.request_body, ex.request_headers, redactor)
    _body_attrs(out, "response", ex.response_body, ex.response_headers, redactor)
    error = _error_type(ex)
    if error is not None:
        out.append(("error.type", error))
    if conn.tls:
        tv = _tls_version(conn.tls_version)
        if tv is not None:
            out += [("tls.protocol.name", tv[0]), ("tls.protocol.version", tv[1])]
        if conn.tls_suite:
            out.append(("tls.cipher", conn.tls_suite))
        if conn.sni:
            out.append(("tls.client.server_name", conn.sni))
        if conn.alpn:
            out.append(("tls.next_protocol", conn.alpn))
    _grpc_attrs(out, grpc_of(ex), redactor)
    _graphql_attrs(out, graphql_of(ex, graphql))
    _sse_attrs(out, ex)
    _websocket_attrs(out, ex)
    _sensor_attrs(out, conn, ex)
    return tuple(out)


def _error_type(ex: Exchange) -> str | None:
    if ex.status is not None and ex.status >= 500:
        return str(ex.status)
    cut = sorted(ex.flags & CUT_FLAGS)
    return cut[0] if cut else None


def _route(route: str, redactor: Redactor) -> str:
    return redactor.text(route) if redactor.enabled else route


def _span_name(ex: Exchange, profile: str, target_path: str, route: str | None) -> str:
    """``GET /users/{user_id}`` with a route (both profiles); without one, hypertrace names the span by
    the raw path and semconv by the method only."""
    method = ex.method
    if profile == "semconv":
        head = method if method in KNOWN_METHODS else "HTTP"
        return f"{head} {route}" if route is not None else head  # type: ignore[return-value]
    if method is None:
        return f"HTTP {route}" if route is not None else "HTTP"
    if route is not None:
        return f"{method} {route}"
    return f"{method} {target_path}" if target_path else method


def sensitive_attrs(out: list[tuple[str, AttrValue]], call: ApiCall, rules: SensitiveRules,
                    bodies: bool) -> None:
    """The types of sensitive data the call carries and where (never the values): path, query, headers,
    and with ``bodies`` the request and response bodies (docs/otlp.md)."""
    ex = call.exchange
    path, query = split_target(ex.path)
    segs = [s for s in (path or "").split("/") if s][:32]
    texts: list[str | None] = [None, None]
    if bodies:
        for i, body in enumerate((ex.request_body, ex.response_body)):
            if body is not None and body.data and not body.decode_error:
                texts[i] = body.data.decode("utf-8", "replace")
    found = scan_request(rules, segs, query_params(query), ex.request_headers, ex.response_headers,
                         request_text=texts[0], response_text=texts[1])
    if found:
        out.append((f"{SENSOR_NAME}.sensitive.types", tuple(sorted({t for t, _ in found}))))
        out.append((f"{SENSOR_NAME}.sensitive.locations", tuple(sorted(f"{t}@{loc}" for t, loc in found))))


def _times(ex: Exchange) -> tuple[int, int]:
    start = ex.request_ts if ex.request_ts is not None else ex.response_ts
    end = next((t for t in (ex.response_end_ts, ex.response_ts, ex.request_end_ts) if t is not None), start)
    if ex.websocket is not None and ex.websocket.end_ts is not None:
        end = ex.websocket.end_ts  # the span covers the session, not only its handshake
    if start is None:
        return 0, 0
    s, e = to_ns(start), to_ns(end if end is not None else start)
    return s, max(s, e)


class SpanMapper:
    """Maps API calls to :class:`SpanRecord` under one profile and one redactor."""

    __slots__ = ("_attrs", "graphql", "max_events", "profile", "random_bytes", "redactor", "sensitive",
                 "sensitive_bodies")

    def __init__(self, profile: str = "hypertrace", redactor: Redactor | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom, *, sensitive: SensitiveRules | None = None,
                 sensitive_bodies: bool = False, graphql: GraphqlOptions = DEFAULT_OPTIONS,
                 max_events: int = MAX_SPAN_EVENTS) -> None:
        """``sensitive``: rules whose types found in the call become span attributes (None: no scan);
        ``sensitive_bodies``: scan the bodies too (costly: off unless asked); ``graphql``: GraphQL paths
        and limits; ``max_events``: WebSocket messages sent as events of the session's span."""
        self.graphql = graphql
        self.max_events = max_events
        if profile not in PROFILES:
            raise ValueError(f"unknown span profile {profile!r} (choose from {', '.join(PROFILES)})")
        self.profile = profile
        self.redactor = redactor or Redactor()
        self.random_bytes = random_bytes
        self.sensitive = sensitive
        self.sensitive_bodies = sensitive_bodies
        self._attrs = hypertrace_attributes if profile == "hypertrace" else semconv_attributes

    def span(self, call: ApiCall) -> SpanRecord:
        ex = call.exchange
        parent = None
        states: list[str] = []
        for name, value in ex.request_headers:
            low = name.lower()
            if low == "traceparent" and parent is None:
                parent = parse_traceparent(value)
            elif low == "tracestate":
                states.append(value.strip())
        rnd = self.random_bytes
        if parent is not None:
            trace_id, parent_id, flags = parent
            remote = True
            trace_state = ",".join(s for s in states if s)
        else:
            trace_id, parent_id, flags, remote, trace_state = rnd(16), b"", 1, False, ""
            if trace_id == _ZERO_TRACE:
                trace_id = b"\x00" * 15 + b"\x01"
        span_id = rnd(8)
        if span_id == _ZERO_SPAN:
            span_id = b"\x00" * 7 + b"\x01"
        attrs = self._attrs(call, self.redactor, self.graphql)
        if self.sensitive is not None:
            extra: list[tuple[str, AttrValue]] = []
            sensitive_attrs(extra, call, self.sensitive, self.sensitive_bodies)
            attrs += tuple(extra)
        start, end = _times(ex)
        path = ""
        if ex.path is not None:
            path = ex.path.partition("?")[0]
            if self.redactor.enabled:
                path = self.redactor.text(path)
        error = _error_type(ex)
        if ex.status is not None and ex.status >= 500:
            message = f"HTTP {ex.status}"
        elif error is not None:
            message = "exchange cut short: " + ", ".join(sorted(ex.flags & CUT_FLAGS))
        else:
            message = ""
        route = None if call.route is None else _route(call.route, self.redactor)
        name = _span_name(ex, self.profile, path, route)
        rpc = grpc_of(ex)
        if rpc is not None:
            if rpc.service is not None and rpc.method is not None:
                name = f"{rpc.service}/{rpc.method}"
            if rpc.status_code is not None and rpc.status_code in SERVER_ERRORS:
                error = error or rpc.status_name
                message = message or f"gRPC {rpc.status_name}"
        else:
            gql = graphql_of(ex, self.graphql)
            if gql is not None:
                name = gql.span_name
                if gql.errors and not gql.has_data:
                    error = error or "graphql"
                    message = message or f"GraphQL errors: {gql.errors}"
        events: tuple[SpanEvent, ...] = ()
        dropped = 0
        if ex.websocket is not None:
            events, dropped = websocket_events(ex.websocket, self.max_events)
        return SpanRecord(name, "server", start, end, trace_id, span_id,
                          parent_id, trace_state, flags & 0xFF, remote, error is not None, message, attrs,
                          events, dropped)


def call_to_span(call: ApiCall, *, profile: str = "hypertrace", redactor: Redactor | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> SpanRecord:
    """Convenience: :meth:`SpanMapper.span` for one call."""
    return SpanMapper(profile, redactor, random_bytes).span(call)


def resource_attributes(*, service_name: str, environment: str | None, host_name: str | None,
                        sensor_version: str, extra: Iterable[tuple[str, AttrValue]] = ()) -> Attributes:
    """The OTLP resource of every span this sensor sends."""
    out: list[tuple[str, AttrValue]] = [("service.name", service_name)]
    if environment:
        out.append(("deployment.environment", environment))
        out.append(("deployment.environment.name", environment))
    if host_name:
        out.append(("host.name", host_name))
    out += [("telemetry.sdk.name", SENSOR_NAME), ("telemetry.sdk.language", "python"),
            ("telemetry.sdk.version", sensor_version),
            (f"{SENSOR_NAME}.sensor.name", SENSOR_NAME), (f"{SENSOR_NAME}.sensor.version", sensor_version)]
    out.extend(extra)
    return tuple(out)
