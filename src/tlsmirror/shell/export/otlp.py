"""OTLP exporter: API calls -> spans (``tlsmirror.spans``) -> OTLP/gRPC or OTLP/HTTP, losing none.

Threads and order of delivery::

    export(call) --> queue (bounded, in memory) --> batcher thread: redact, map, encode one
                     ExportTraceServiceRequest per batch (by count, bytes and time)
                 --> direct hand-off (while the receiver keeps up)  ---\\
                 --> spool (disk, or memory without spool_dir) ------+--> sender thread --> receiver
                                                                         (retries with backoff)

While the spool holds anything every new batch goes behind it, so batches leave in the order they
were made. The sender retries a batch until the receiver accepts it (or rejects it for good) and
honours the receiver's throttling hints. Design notes and guarantees: docs/otlp.md.

One module on purpose (about 650 lines): batching, both transports, retries and the spool hand-over are
one delivery state machine; the spool itself is :mod:`.spool`, the span mapping :mod:`tlsmirror.spans`.
"""

from __future__ import annotations

import collections
import gzip
import logging
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import grpc
import urllib3
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from ... import __version__
from ...calls import ApiCall
from ...http.graphql import DEFAULT_OPTIONS, GraphqlOptions
from ...inventory.sensitive import SensitiveRules
from ...redact import RedactionConfig, RedactionError, Redactor
from ...spans import PROFILES, SENSOR_NAME, AttrValue, SpanMapper, SpanRecord, resource_attributes
from ..errors import InputError, SpoolError
from .spool import DiskSpool, MemorySpool

log = logging.getLogger(__name__)

_SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"]
EXPORT_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Export'].name}"

_RETRY_GRPC = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
})
_RETRY_HTTP = frozenset({401, 403, 408, 429, 500, 502, 503, 504})
_MAX_HINT = 300.0
_DIRECT_BATCHES = 4  # batches handed straight to the sender before the spool takes over
STAT_KEYS = ("exported", "batches", "retries", "failed", "spooled", "dropped", "partial_rejected",
             "queue_depth")


@dataclass
class OtlpConfig:
    """Settings of :class:`OtlpExporter` (docs/otlp.md). ``token`` and ``headers`` never appear in
    ``repr``/``str`` or logs."""

    endpoint: str = "localhost:4317"
    protocol: str = "grpc"  # or "http" (OTLP/HTTP protobuf; endpoint like "localhost:4318" or a URL)
    insecure: bool = True  # no scheme in endpoint: plaintext when True, TLS otherwise
    ca: str | None = None  # PEM CA bundle for TLS (default: system trust store)
    cert: str | None = None  # client certificate (PEM) for mutual TLS
    key: str | None = None  # its private key (PEM)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    token: str | None = field(default=None, repr=False)
    token_header: str = "x-traceable-refresh-token"
    span_profile: str = "hypertrace"
    service_name: str = "tlsmirror"
    environment: str | None = None
    host_name: str | None = None  # default: socket.gethostname()
    spool_dir: str | None = None
    spool_max_bytes: int = 256 << 20
    spool_fsync: str = "interval"
    memory_max_bytes: int = 64 << 20  # the spool's size when there is no spool_dir
    batch_size: int = 512
    batch_max_bytes: int = 3 << 20  # stay under the common 4 MiB receive limit
    batch_timeout: float = 1.0
    flush_timeout: float = 60.0
    queue_size: int = 10_000
    timeout: float = 10.0  # per request
    compression: str = "gzip"  # or "none"
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    redaction: RedactionConfig = field(default_factory=RedactionConfig)
    sensitive: bool = True  # tlsmirror.sensitive.* attributes: types found in path, query, headers
    sensitive_bodies: bool = False  # and in bodies (costly)
    graphql: GraphqlOptions | None = None  # GraphQL paths and limits (None: the defaults)


@dataclass(slots=True)
class _Outcome:
    ok: bool  # the receiver took the batch (maybe partially)
    retry: bool = False
    hint: float | None = None
    rejected: int = 0
    message: str = ""


@dataclass(slots=True)
class _Batch:
    payload: bytes
    count: int
    moved: bool = False  # moved from the hand-off into the spool while being sent
    stored: bool = False  # ... and the spool took it


# ---------------------------------------------------------------------- encoding
def _set_value(target: common_pb2.AnyValue, value: AttrValue) -> None:
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        add = target.array_value.values.add
        for v in value:
            add().string_value = v


def key_values(attrs: tuple[tuple[str, AttrValue], ...]) -> list[common_pb2.KeyValue]:
    out = []
    for k, v in attrs:
        kv = common_pb2.KeyValue(key=k)
        _set_value(kv.value, v)
        out.append(kv)
    return out


def span_message(rec: SpanRecord) -> trace_pb2.Span:
    """A :class:`SpanRecord` as an OTLP ``Span`` message (filled in place: no message copies)."""
    span = trace_pb2.Span()
    span.trace_id = rec.trace_id
    span.span_id = rec.span_id
    if rec.parent_span_id:
        span.parent_span_id = rec.parent_span_id
    if rec.trace_state:
        span.trace_state = rec.trace_state
    span.flags = (rec.trace_flags & 0xFF) | 0x100 | (0x200 if rec.remote_parent else 0)
    span.name = rec.name
    span.kind = trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
    span.start_time_unix_nano = rec.start_ns
    span.end_time_unix_nano = rec.end_ns
    add = span.attributes.add
    for k, v in rec.attributes:
        kv = add()
        kv.key = k
        _set_value(kv.value, v)
    for e in rec.events:  # WebSocket messages (spans.websocket_events)
        ev = span.events.add()
        ev.name = e.name
        ev.time_unix_nano = e.time_ns
        for k, v in e.attributes:
            kv = ev.attributes.add()
            kv.key = k
            _set_value(kv.value, v)
    if rec.dropped_events:
        span.dropped_events_count = rec.dropped_events
    if rec.error:
        span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
        span.status.message = rec.status_message
    return span


def export_request(spans: list[trace_pb2.Span], resource: resource_pb2.Resource,
                   scope: common_pb2.InstrumentationScope) -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.CopyFrom(resource)
    ss = rs.scope_spans.add()
    ss.scope.CopyFrom(scope)
    ss.spans.extend(spans)
    return req


# ---------------------------------------------------------------------- transports
def _read_file(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"{path}: cannot read OTLP {what}: {exc.strerror or exc}") from None


def _split_endpoint(endpoint: str) -> tuple[str | None, str]:
    if "://" in endpoint:
        scheme, rest = endpoint.split("://", 1)
        return scheme.lower(), rest
    return None, endpoint


class GrpcTransport:
    """OTLP/gRPC: the TraceService/Export method, requests passed as already serialized bytes."""

    def __init__(self, cfg: OtlpConfig, metadata: list[tuple[str, str]]) -> None:
        scheme, rest = _split_endpoint(cfg.endpoint)
        self.target = rest.rstrip("/")
        self.secure = scheme == "https" if scheme else not cfg.insecure
        self.creds = None
        if self.secure:
            self.creds = grpc.ssl_channel_credentials(
                root_certificates=_read_file(cfg.ca, "CA bundle"),
                private_key=_read_file(cfg.key, "client key"),
                certificate_chain=_read_file(cfg.cert, "client certificate"))
        self.metadata = tuple((k.lower(), v) for k, v in metadata)
        self.timeout = cfg.timeout
        gz = cfg.compression == "gzip"
        self.compression = grpc.Compression.Gzip if gz else grpc.Compression.NoCompression
        self.channel: grpc.Channel | None = None
        self.call: Any = None
        self._connect()

    def _connect(self) -> None:
        if self.channel is not None:
            self.channel.close()
        options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 2000), ("grpc.max_send_message_length", 64 << 20),
                   ("grpc.enable_retries", 0)]
        if self.creds is not None:
            self.channel = grpc.secure_channel(self.target, self.creds, options=options,
                                               compression=self.compression)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options, compression=self.compression)
        self.call = self.channel.unary_unary(
            EXPORT_METHOD, request_serializer=None,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)

    def send(self, payload: bytes) -> _Outcome:
        try:
            resp = self.call(payload, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
            retry = code in _RETRY_GRPC
            hint = _grpc_retry_hint(err)
            if code == grpc.StatusCode.UNAVAILABLE:
                self._connect()  # start afresh: skips the channel's own reconnect backoff
            details = err.details() if hasattr(err, "details") else ""
            return _Outcome(False, retry, hint, message=f"{code.name}: {details}")
        ps = resp.partial_success
        return _Outcome(True, rejected=ps.rejected_spans, message=ps.error_message)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


def _grpc_retry_hint(err: grpc.RpcError) -> float | None:
    try:
        trailers = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
    except Exception:
        return None
    raw = trailers.get("google.rpc.retryinfo-bin")
    infos: list[error_details_pb2.RetryInfo] = []
    try:
        if raw:
            infos.append(error_details_pb2.RetryInfo.FromString(raw))
        details = trailers.get("grpc-status-details-bin")
        if details:
            st = status_pb2.Status.FromString(details)
            for anyd in st.details:
                if anyd.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    anyd.Unpack(info)
                    infos.append(info)
    except Exception:  # a malformed hint is no hint
        return None
    for info in infos:
        d = info.retry_delay
        return max(0.0, float(d.seconds) + float(d.nanos) / 1e9)
    return None


class HttpTransport:
    """OTLP/HTTP with protobuf bodies (POST .../v1/traces) on one kept-alive urllib3 connection.

    The pool holds one connection (one sender thread): batches after the first reuse it, with no new TCP
    or TLS handshake, until the receiver closes it. A request that fails on a connection the receiver
    dropped while it was idle is sent once more at once on a new one; every other failure goes back to
    the exporter's retry and backoff, as before.
    """

    def __init__(self, cfg: OtlpConfig, headers: list[tuple[str, str]]) -> None:
        scheme, rest = _split_endpoint(cfg.endpoint)
        if scheme is None:
            scheme = "http" if cfg.insecure else "https"
        host, slash, path = rest.partition("/")
        if not slash or not path:
            path = "v1/traces"
        self.url = f"{scheme}://{host}/{path}"
        self.path = f"/{path}"
        self.context: ssl.SSLContext | None = None
        if scheme == "https":
            ctx = ssl.create_default_context(cadata=None)
            ca = _read_file(cfg.ca, "CA bundle")
            if ca is not None:
                ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            if cfg.cert:
                _read_file(cfg.cert, "client certificate")
                try:
                    ctx.load_cert_chain(cfg.cert, cfg.key)
                except (OSError, ssl.SSLError) as exc:
                    raise InputError(f"{cfg.cert}: cannot load OTLP client certificate: {exc}") from None
            self.context = ctx
        self.gzip = cfg.compression == "gzip"
        base = {"Content-Type": "application/x-protobuf", "User-Agent": f"tlsmirror/{__version__}"}
        if self.gzip:
            base["Content-Encoding"] = "gzip"
        self.headers = dict([*base.items(), *headers])
        self.timeout = cfg.timeout
        pool_kw: dict[str, Any] = {"maxsize": 1, "block": False, "retries": False,
                                   "timeout": urllib3.Timeout(connect=cfg.timeout, read=cfg.timeout)}
        if self.context is not None:
            pool_kw["ssl_context"] = self.context  # verification (CA, hostname) and client certificate
        try:
            self.pool: urllib3.HTTPConnectionPool = urllib3.connection_from_url(self.url, **pool_kw)
        except (ValueError, urllib3.exceptions.LocationValueError) as exc:
            raise InputError(f"otlp.endpoint {cfg.endpoint!r}: not a usable URL ({exc})") from None

    def send(self, payload: bytes) -> _Outcome:
        body = gzip.compress(payload, compresslevel=5) if self.gzip else payload
        try:
            try:
                resp = self._post(body)
            except urllib3.exceptions.ProtocolError:
                resp = self._post(body)  # the kept connection was closed by the receiver: once more, anew
        except (urllib3.exceptions.HTTPError, OSError, ssl.SSLError) as exc:
            reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
            return _Outcome(False, True, None, message=f"{type(reason).__name__}: {reason}")
        if not 200 <= resp.status < 300:
            hint = _retry_after(resp.headers.get("Retry-After"))
            return _Outcome(False, resp.status in _RETRY_HTTP, hint, message=f"HTTP {resp.status}")
        rejected, message = 0, ""
        if resp.data:
            try:
                ps = trace_service_pb2.ExportTraceServiceResponse.FromString(resp.data).partial_success
                rejected, message = ps.rejected_spans, ps.error_message
            except Exception:  # a 2xx with a body we cannot read: the batch was taken
                pass
        return _Outcome(True, rejected=rejected, message=message)

    def _post(self, body: bytes) -> urllib3.BaseHTTPResponse:
        # preload_content (the default): the body is read whole and the connection goes back to the pool
        return self.pool.urlopen("POST", self.path, body=body, headers=self.headers, redirect=False,
                                 assert_same_host=False)

    def close(self) -> None:
        self.pool.close()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    return max(0.0, when.timestamp() - time.time())


# ---------------------------------------------------------------------- exporter
class OtlpExporter:
    """Exporter (see ``shell.export.Exporter``) that sends each API call as one span over OTLP.

    Raises :class:`InputError` for invalid settings (profile, protocol, unreadable TLS files, a spool
    directory in use or not writable, a redaction pattern that does not compile).
    """

    def __init__(self, config: OtlpConfig) -> None:
        cfg = self.config = config
        if cfg.span_profile not in PROFILES:
            raise InputError(f"span_profile must be one of {', '.join(PROFILES)}, not {cfg.span_profile!r}")
        if cfg.protocol not in ("grpc", "http"):
            raise InputError(f"OTLP protocol must be 'grpc' or 'http', not {cfg.protocol!r}")
        if cfg.compression not in ("gzip", "none"):
            raise InputError(f"OTLP compression must be 'gzip' or 'none', not {cfg.compression!r}")
        if cfg.batch_size < 1 or cfg.queue_size < 1:
            raise InputError("OTLP batch_size and queue_size must be at least 1")
        try:
            redactor = Redactor(cfg.redaction)
        except RedactionError as exc:
            raise InputError(str(exc)) from None
        self.mapper = SpanMapper(cfg.span_profile, redactor, sensitive=SensitiveRules() if cfg.sensitive else None,
                                 sensitive_bodies=cfg.sensitive_bodies,
                                 graphql=cfg.graphql if cfg.graphql is not None else DEFAULT_OPTIONS)
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.stats.update(map_errors=0, corrupt=0, spool_bytes=0)
        self.resource = resource_pb2.Resource(attributes=key_values(resource_attributes(
            service_name=cfg.service_name, environment=cfg.environment,
            host_name=cfg.host_name or socket.gethostname(), sensor_version=__version__)))
        self.scope = common_pb2.InstrumentationScope(name=SENSOR_NAME, version=__version__)
        headers = list(cfg.headers.items())
        if cfg.token:
            headers.append((cfg.token_header, cfg.token))
        self.transport: GrpcTransport | HttpTransport = (
            GrpcTransport(cfg, headers) if cfg.protocol == "grpc" else HttpTransport(cfg, headers))
        try:
            self.spool: DiskSpool | MemorySpool = (
                DiskSpool(cfg.spool_dir, cfg.spool_max_bytes, fsync=cfg.spool_fsync) if cfg.spool_dir
                else MemorySpool(cfg.memory_max_bytes))
        except SpoolError as exc:
            self.transport.close()
            raise InputError(str(exc)) from None
        if len(self.spool):
            log.info("OTLP spool %s holds %d batches (%d spans) from before; delivering them first",
                     cfg.spool_dir, len(self.spool), self.spool.spans)
        # the queue between export() and the batcher
        self._qcond = threading.Condition()
        self._queue: collections.deque[ApiCall] = collections.deque()
        self._queue_since = 0.0
        self._batching = 0  # calls taken from the queue, not yet handed on
        self._flush_wanted = False
        self._closing = False
        # the hand-off and spool between the batcher and the sender
        self._ocond = threading.Condition()
        self._direct: collections.deque[_Batch] = collections.deque()
        self._direct_mode = len(self.spool) == 0
        self._sending = False
        self._stop = threading.Event()
        self._closed = False
        self._batcher = threading.Thread(target=self._batch_loop, name="tlsmirror-otlp-batch", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="tlsmirror-otlp-send", daemon=True)
        self._batcher.start()
        self._sender.start()

    def __repr__(self) -> str:
        return f"OtlpExporter({self.config.protocol} {self.config.endpoint})"

    # ------------------------------------------------------------------ Exporter protocol
    def export(self, call: ApiCall) -> None:
        with self._qcond:
            if self._closing:
                self._count("dropped", 1)
                return
            q = self._queue
            if len(q) >= self.config.queue_size:
                # the batcher normally keeps up (it only maps and writes to the spool); give it a moment
                self._qcond.wait(0.05)
                if len(q) >= self.config.queue_size:
                    self._count("dropped", 1)
                    return
            if not q:
                self._queue_since = time.monotonic()
            q.append(call)
            self.stats["queue_depth"] = len(q)
            if len(q) == 1 or len(q) >= self.config.batch_size:
                self._qcond.notify_all()

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._qcond:
            self._flush_wanted = True
            self._qcond.notify_all()
        try:
            while True:
                if self._idle():
                    return True
                if time.monotonic() >= deadline or not self._sender.is_alive():
                    return self._idle()
                time.sleep(0.005)
        finally:
            with self._qcond:
                self._flush_wanted = False

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.flush(self.config.flush_timeout)
        with self._qcond:
            self._closing = True
            self._qcond.notify_all()
        self._batcher.join(max(5.0, self.config.timeout))
        self._stop.set()
        with self._ocond:
            self._ocond.notify_all()
        self._sender.join(self.config.timeout + 5.0)
        with self._ocond:
            left = list(self._direct)
            self._direct.clear()
            for b in left:
                if self.spool.persistent and self.spool.append(b.payload, b.count):
                    self._count("spooled", b.count)
                else:
                    self._count("dropped", b.count)
        pending = self.spool.spans
        if pending:
            if self.spool.persistent:
                log.warning("OTLP: %d spans not delivered to %s are kept in the spool %s",
                            pending, self.config.endpoint, self.config.spool_dir)
            else:
                log.warning("OTLP: %d spans not delivered to %s are lost (no spool_dir)",
                            pending, self.config.endpoint)
                self._count("dropped", pending)
        self.spool.close()
        self.transport.close()

    # ------------------------------------------------------------------ internals
    def _idle(self) -> bool:
        with self._qcond:
            if self._queue or self._batching:
                return False
        with self._ocond:
            return not self._direct and not len(self.spool) and not self._sending

    def _batch_loop(self) -> None:
        cfg = self.config
        cond = self._qcond
        while True:
            with cond:
                while not self._queue and not self._closing:
                    cond.wait()
                if not self._queue:
                    return  # closing and drained
                while (len(self._queue) < cfg.batch_size and not self._closing and not self._flush_wanted):
                    left = self._queue_since + cfg.batch_timeout - time.monotonic()
                    if left <= 0:
                        break
                    cond.wait(left)
                n = min(cfg.batch_size, len(self._queue))
                calls = [self._queue.popleft() for _ in range(n)]
                self._batching = n
                self._queue_since = time.monotonic()
                self.stats["queue_depth"] = len(self._queue)
                cond.notify_all()
            try:
                self._make_batches(calls)
            except Exception:  # a bug here must not stop the exporter
                log.exception("OTLP: could not encode a batch of %d spans", len(calls))
                self._count("failed", len(calls))
            finally:
                with cond:
                    self._batching = 0

    def _make_batches(self, calls: list[ApiCall]) -> None:
        spans: list[trace_pb2.Span] = []
        size = 0
        limit = self.config.batch_max_bytes
        span = self.mapper.span
        for call in calls:
            try:
                msg = span_message(span(call))
            except Exception:
                log.exception("OTLP: could not map an API call to a span")
                self._count("map_errors", 1)
                self._count("failed", 1)
                continue
            msize = msg.ByteSize()
            if spans and size + msize > limit:
                self._hand_on(spans)
                spans, size = [], 0
            spans.append(msg)
            size += msize + 8
        if spans:
            self._hand_on(spans)

    def _hand_on(self, spans: list[trace_pb2.Span]) -> None:
        payload = export_request(spans, self.resource, self.scope).SerializeToString()
        batch = _Batch(payload, len(spans))
        with self._ocond:
            if not self._direct_mode and not len(self.spool) and not self._direct:
                self._direct_mode = True
            if self._direct_mode and len(self._direct) < _DIRECT_BATCHES:
                self._direct.append(batch)
                self._ocond.notify_all()
                return
            if self._direct_mode:  # the sender falls behind: from now on everything goes via the spool
                self._to_spool_mode()
            self._spool_append(batch)
            self._ocond.notify_all()

    def _spool_append(self, batch: _Batch) -> bool:
        ok = self.spool.append(batch.payload, batch.count)
        if ok:
            self._count("spooled", batch.count)
        else:
            self._count("dropped", batch.count)
            log.warning("OTLP spool full (%d bytes): dropped a batch of %d spans", self.spool.size,
                        batch.count)
        self.stats["spool_bytes"] = self.spool.size
        return ok

    def _to_spool_mode(self) -> None:
        """Called with _ocond held: move the hand-off (in order) into the (empty) spool."""
        self._direct_mode = False
        while self._direct:
            b = self._direct.popleft()
            b.moved = True
            b.stored = self._spool_append(b)

    def _send_loop(self) -> None:
        attempt = 0
        cond = self._ocond
        while True:
            with cond:
                while not self._direct and not len(self.spool) and not self._stop.is_set():
                    cond.wait()
                if self._stop.is_set():
                    return
                batch: _Batch | None = self._direct[0] if self._direct else None
                if batch is not None:
                    payload, count = batch.payload, batch.count
                else:
                    rec = self.spool.peek()
                    self.stats["corrupt"] = self.spool.corrupt
                    if rec is None:
                        continue
                    payload, count = rec.payload, rec.count
                self._sending = True
            try:
                out = self.transport.send(payload)
            except Exception as exc:  # a transport bug: treat as a retryable failure
                out = _Outcome(False, True, None, message=f"internal error: {type(exc).__name__}")
            with cond:
                self._sending = False
                if out.ok or not out.retry:
                    self._done(batch)
                    if not len(self.spool) and not self._direct:
                        self._direct_mode = True
                elif batch is not None and self._direct_mode:
                    self._to_spool_mode()
                self.stats["spool_bytes"] = self.spool.size
            if out.ok:
                attempt = 0
                self._count("batches", 1)
                self._count("exported", count - out.rejected)
                if out.rejected:
                    self._count("partial_rejected", out.rejected)
                    log.warning("OTLP receiver %s rejected %d of %d spans: %s", self.config.endpoint,
                                out.rejected, count, out.message)
                continue
            if not out.retry:
                attempt = 0
                self._count("failed", count)
                log.error("OTLP export to %s failed for good (%s): dropped %d spans", self.config.endpoint,
                          out.message, count)
                continue
            self._count("retries", 1)
            delay = self._backoff(attempt, out.hint)
            attempt += 1
            log.warning("OTLP export to %s failed (%s); retrying in %.2fs", self.config.endpoint, out.message,
                        delay)
            if self._stop.wait(delay):
                return

    def _done(self, batch: _Batch | None) -> None:
        """With _ocond held: the head batch is finished (delivered or given up)."""
        if batch is None:
            self.spool.ack()
        elif self._direct and self._direct[0] is batch:
            self._direct.popleft()
        elif batch.moved and batch.stored:
            self.spool.ack()  # it was moved to the spool while in flight: it is the spool's head
        elif batch.moved:
            self._count("dropped", -batch.count)  # counted as dropped by a full spool, yet it went out

    def _count(self, key: str, n: int) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def _backoff(self, attempt: int, hint: float | None) -> float:
        if hint is not None:
            return min(hint, _MAX_HINT)
        base = min(self.config.backoff_max, self.config.backoff_initial * (2 ** min(attempt, 30)))
        return float(base * random.uniform(0.8, 1.2))
