"""Real OTLP receivers for tests: OTLP/gRPC (grpcio, the opentelemetry-proto TraceService) and
OTLP/HTTP (http.server), on 127.0.0.1.

Both record every request (headers and the exact request bytes after transport decompression), can
answer the next N requests with a retryable failure plus a throttling hint (gRPC UNAVAILABLE or
RESOURCE_EXHAUSTED with RetryInfo; HTTP 503 or 429 with Retry-After) or with a partial success, and
can be stopped and started again on the same port.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.support.paths import SAMPLES

_SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"]


def make_cert() -> tuple[bytes, bytes]:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otlp receiver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@dataclass
class Received:
    headers: dict[str, str]  # lowercase names
    body: bytes  # the serialized ExportTraceServiceRequest as received (decompressed)
    request: trace_service_pb2.ExportTraceServiceRequest
    client_port: int | None = None  # OTLP/HTTP: the TCP connection it came on

    def spans(self) -> list[trace_pb2.Span]:
        return [s for rs in self.request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def attr_value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(attr_value(x) for x in v.array_value.values)
    return getattr(v, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: attr_value(kv.value) for kv in kvs}


class _Receiver:
    def __init__(self, port: int = 0, tls: tuple[bytes, bytes] | None = None) -> None:
        self.port = port
        self.tls = tls
        self.requests: list[Received] = []
        self.attempts = 0  # requests seen, including those answered with a failure
        self.failures: list[tuple[str, float | None]] = []
        self.partials: list[tuple[int, str]] = []
        self.lock = threading.Condition()
        self.running = False
        self.connections: list[int] = []  # OTLP/HTTP: the client port of every TCP connection accepted
        self.open_connections: set[Any] = set()

    # ---- behaviour
    def fail_next(self, n: int, *, retry_after: float | None = None, code: str = "unavailable") -> None:
        """Answer the next ``n`` requests with a retryable failure ("unavailable": gRPC UNAVAILABLE /
        HTTP 503; "exhausted": RESOURCE_EXHAUSTED / 429; "invalid": INVALID_ARGUMENT / 400)."""
        with self.lock:
            self.failures.extend([(code, retry_after)] * n)

    def partial_next(self, rejected: int, message: str = "rejected by test") -> None:
        with self.lock:
            self.partials.append((rejected, message))

    def _decide(self) -> tuple[str, Any]:
        with self.lock:
            self.attempts += 1
            if self.failures:
                return "fail", self.failures.pop(0)
            if self.partials:
                return "partial", self.partials.pop(0)
            return "ok", None

    def _record(self, headers: dict[str, str], body: bytes, client_port: int | None = None) -> None:
        req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        with self.lock:
            self.requests.append(Received(headers, body, req, client_port))
            self.lock.notify_all()

    # ---- results
    def spans(self) -> list[trace_pb2.Span]:
        with self.lock:
            return [s for r in self.requests for s in r.spans()]

    def span_count(self) -> int:
        with self.lock:
            return sum(len(r.spans()) for r in self.requests)

    def wait_spans(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while sum(len(r.spans()) for r in self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
            return True

    def raw(self) -> Iterator[bytes]:
        with self.lock:
            yield from (r.body for r in list(self.requests))

    def __enter__(self) -> _Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class GrpcReceiver(_Receiver):
    """OTLP/gRPC TraceService/Export. Requests are taken as raw bytes (so tests see exactly what was
    sent) and parsed with the opentelemetry-proto messages."""

    protocol = "grpc"

    def __init__(self, port: int = 0, tls: tuple[bytes, bytes] | None = None) -> None:
        super().__init__(port, tls)
        self.server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        headers = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        what, arg = self._decide()
        if what == "fail":
            code, retry_after = arg
            status = {"unavailable": grpc.StatusCode.UNAVAILABLE,
                      "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
                      "invalid": grpc.StatusCode.INVALID_ARGUMENT}[code]
            if retry_after is not None:
                secs = int(retry_after)
                info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
                    seconds=secs, nanos=int((retry_after - secs) * 1e9)))
                context.set_trailing_metadata((("google.rpc.retryinfo-bin", info.SerializeToString()),))
            context.set_code(status)
            context.set_details("test receiver says no")
            return b""
        self._record(headers, request)
        resp = trace_service_pb2.ExportTraceServiceResponse()
        if what == "partial":
            resp.partial_success.rejected_spans, resp.partial_success.error_message = arg
        return resp.SerializeToString()

    def start(self) -> None:
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(self._export, request_deserializer=None,
                                                      response_serializer=None)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            _SERVICE.full_name, {"Export": handler}),))
        addr = f"127.0.0.1:{self.port}"
        if self.tls:
            cert, key = self.tls
            port = server.add_secure_port(addr, grpc.ssl_server_credentials([(key, cert)]))
        else:
            port = server.add_insecure_port(addr)
        assert port, f"cannot bind {addr}"
        self.port = port
        server.start()
        self.server = server
        self.running = True

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait(5)
            self.server = None
        self.running = False


class HttpReceiver(_Receiver):
    """OTLP/HTTP: POST /v1/traces with a protobuf body (gzip or not)."""

    protocol = "http"

    def __init__(self, port: int = 0, tls: tuple[bytes, bytes] | None = None) -> None:
        super().__init__(port, tls)
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with receiver.lock:
                    receiver.connections.append(self.client_address[1])
                    receiver.open_connections.add(self.connection)

            def finish(self) -> None:
                with receiver.lock:
                    receiver.open_connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if self.path != "/v1/traces":
                    self._reply(404, b"")
                    return
                if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                    body = gzip.decompress(body)
                what, arg = receiver._decide()
                if what == "fail":
                    code, retry_after = arg
                    status = {"unavailable": 503, "exhausted": 429, "invalid": 400}[code]
                    extra = {} if retry_after is None else {"Retry-After": str(int(retry_after))}
                    self._reply(status, b"", extra)
                    return
                receiver._record({k.lower(): v for k, v in self.headers.items()}, body, self.client_address[1])
                resp = trace_service_pb2.ExportTraceServiceResponse()
                if what == "partial":
                    resp.partial_success.rejected_spans, resp.partial_success.error_message = arg
                self._reply(200, resp.SerializeToString(), {"Content-Type": "application/x-protobuf"})

            def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls:
            import ssl
            import tempfile
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.NamedTemporaryFile() as c, tempfile.NamedTemporaryFile() as k:
                c.write(self.tls[0])
                c.flush()
                k.write(self.tls[1])
                k.flush()
                ctx.load_cert_chain(c.name, k.name)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.lock:  # kept-alive connections end too: a stopped receiver answers nobody
            for conn in list(self.open_connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self.thread is not None:
            self.thread.join(5)
            self.thread = None
        self.running = False


def receiver(protocol: str, port: int = 0, tls: tuple[bytes, bytes] | None = None) -> _Receiver:
    return GrpcReceiver(port, tls) if protocol == "grpc" else HttpReceiver(port, tls)


_SAMPLE_CALLS: list[Any] = []


def sample_api_calls() -> list[Any]:
    """The ApiCalls of samples/api-mixed.pcap (decrypted with samples/api-mixed.keylog), in order."""
    if not _SAMPLE_CALLS:

        from tlsmirror.calls import ApiCall
        from tlsmirror.keys.keylog import parse_keylog
        from tlsmirror.pipeline import Engine, EngineConfig
        from tlsmirror.shell.offline.pcapfile import CapturedFrame, read_capture

        root = SAMPLES
        engine = Engine(EngineConfig(http=True))
        secrets, _ = parse_keylog((root / "api-mixed.keylog").read_bytes())
        engine.add_secrets(secrets, 0.0)
        events: list[Any] = []
        for item in read_capture(str(root / "api-mixed.pcap")):
            if type(item) is CapturedFrame:
                events += engine.feed_frame(item.linktype, item.data, item.ts)
        events += engine.finish()
        _SAMPLE_CALLS.extend(e for e in events if isinstance(e, ApiCall))
    return list(_SAMPLE_CALLS)
