"""gRPC over HTTP/2: one exchange with ``content-type: application/grpc*`` read as one RPC (pure).

From the exchange alone: service and method from the ``:path`` (``/package.Service/Method``), the
length-prefixed messages of each body (count, sizes, compressed flag; ``grpc-encoding`` gzip, deflate
or zstd undone, bounded by the decode limit), the status (``grpc-status``, ``grpc-message``) from the
response trailers, or from the response headers of a trailers-only response, and the first messages of
each direction decoded as schemaless protobuf (``http.protobuf``).

The bodies are what the http stage captured (at most ``body_limit`` bytes each): when a body was cut,
the counts cover the captured messages and ``complete`` is false. Bad input never raises out of
:func:`grpc_info`: it gives a partial result with ``flags`` saying what was wrong.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import zstandard

from .errors import HttpError
from .events import Body, Exchange, Headers
from .protobuf import decode_message

DECODED_MESSAGES = 3  # messages of each direction decoded as protobuf
DECODE_LIMIT = 128 * 1024  # bytes of one message after decompression that are decoded
MAX_SIZES = 64  # message sizes listed per direction (the count goes on)

STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
                "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")

# statuses a server span reports as an error (OpenTelemetry gRPC conventions)
SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})


class GrpcError(HttpError):
    """A gRPC body or message that cannot be read (internal: turned into a flag)."""


def is_grpc(content_type: str | None) -> bool:
    """Whether a content type is gRPC's (``application/grpc``, ``application/grpc+proto``, ...)."""
    if not content_type:
        return False
    ct = content_type.strip().lower()
    return ct.startswith("application/grpc") and not ct.startswith("application/grpc-web")


@dataclass(slots=True)
class GrpcMessage:
    size: int  # the length prefix: bytes on the wire
    compressed: bool
    data: bytes | None  # the message after decompression (None when cut by the capture or undecodable)
    error: str | None = None


@dataclass(slots=True)
class GrpcStream:
    """The messages of one direction."""

    messages: list[GrpcMessage] = field(default_factory=list)
    complete: bool = True  # every byte of the body captured and the last message whole
    flags: set[str] = field(default_factory=set)

    def to_dict(self, decoded: int) -> dict[str, Any]:
        msgs = self.messages
        out: dict[str, Any] = {
            "messages": len(msgs),
            "bytes": sum(m.size for m in msgs),
            "compressed": sum(1 for m in msgs if m.compressed),
            "sizes": [m.size for m in msgs[:MAX_SIZES]],
            "complete": self.complete,
        }
        first: list[dict[str, Any]] = []
        for m in msgs[:decoded]:
            first.append(message_dict(m))
        out["first"] = first
        return out


def message_dict(m: GrpcMessage) -> dict[str, Any]:
    """One message as the record shows it: size, flag, and the protobuf fields (or base64 bytes)."""
    d: dict[str, Any] = {"size": m.size, "compressed": m.compressed}
    if m.error:
        d["error"] = m.error
    if m.data is not None:
        fields = decode_message(m.data)
        if fields is not None:
            d["fields"] = fields
        else:
            d["base64"] = base64.b64encode(m.data).decode("ascii")
    return d


def split_path(path: str | None) -> tuple[str | None, str | None]:
    """``/package.Service/Method`` -> ``("package.Service", "Method")``; ``(None, None)`` otherwise."""
    if not path or not path.startswith("/"):
        return None, None
    service, sep, method = path[1:].partition("/")
    if not sep or not service or not method or "/" in method:
        return None, None
    return service, method.partition("?")[0]


def _header(headers: Headers, name: str) -> str | None:
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def _decompress(data: bytes, encoding: str | None, limit: int) -> bytes:
    enc = (encoding or "identity").strip().lower()
    try:
        if enc == "gzip":
            d = zlib.decompressobj(wbits=31)
            return d.decompress(data, limit)
        if enc == "deflate":
            d = zlib.decompressobj(wbits=47)  # zlib or gzip header, as peers send either
            return d.decompress(data, limit)
        if enc == "zstd":
            with zstandard.ZstdDecompressor().stream_reader(data) as reader:
                return reader.read(limit)
    except (zlib.error, zstandard.ZstdError) as exc:
        raise GrpcError(f"{enc}: {exc}") from None
    raise GrpcError(f"unsupported grpc-encoding {enc!r}")


def parse_messages(body: Body | None, encoding: str | None, *, limit: int = DECODE_LIMIT,
                   decode: int = DECODED_MESSAGES) -> GrpcStream:
    """The length-prefixed messages of one body. Only the first ``decode`` messages keep their bytes
    (decompressed, at most ``limit`` each); the rest are counted and sized."""
    stream = GrpcStream()
    if body is None:
        return stream
    data = body.data
    if body.truncated or body.decode_error:
        stream.complete = False
        stream.flags.add("grpc_body_cut")
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 5:
            stream.complete = False
            stream.flags.add("grpc_message_cut")
            break
        flag = data[pos]
        size = int.from_bytes(data[pos + 1:pos + 5], "big")
        if flag > 1:
            stream.complete = False
            stream.flags.add("grpc_malformed")
            break
        start = pos + 5
        pos = start + size
        if pos > end:
            stream.complete = False
            stream.flags.add("grpc_message_cut")
            stream.messages.append(GrpcMessage(size, flag == 1, None, "cut"))
            break
        msg = GrpcMessage(size, flag == 1, None)
        if len(stream.messages) < decode:
            raw = data[start:pos]
            if flag == 1:
                try:
                    msg.data = _decompress(raw, encoding, limit)
                except GrpcError as exc:
                    msg.error = str(exc)
                    stream.flags.add("grpc_decompress_failed")
            else:
                msg.data = raw[:limit]
        stream.messages.append(msg)
    return stream


@dataclass(slots=True)
class GrpcCall:
    service: str | None
    method: str | None
    status_code: int | None
    status_message: str | None
    request: GrpcStream
    response: GrpcStream
    request_encoding: str | None
    response_encoding: str | None
    trailers_only: bool
    flags: set[str]

    @property
    def status_name(self) -> str | None:
        code = self.status_code
        if code is None:
            return None
        return STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else str(code)

    def to_dict(self, decoded: int = DECODED_MESSAGES) -> dict[str, Any]:
        """The record's ``grpc`` object (docs/exchange-schema.md)."""
        return {
            "service": self.service,
            "method": self.method,
            "status_code": self.status_code,
            "status_name": self.status_name,
            "status_message": self.status_message,
            "trailers_only": self.trailers_only,
            "request_encoding": self.request_encoding,
            "response_encoding": self.response_encoding,
            "request": self.request.to_dict(decoded),
            "response": self.response.to_dict(decoded),
            "flags": sorted(self.flags),
        }


def grpc_info(ex: Exchange, *, limit: int = DECODE_LIMIT, decode: int = DECODED_MESSAGES) -> GrpcCall | None:
    """The exchange read as a gRPC call, or None when it is not one (no gRPC content type)."""
    if not is_grpc(_header(ex.request_headers, "content-type")) and \
            not is_grpc(_header(ex.response_headers, "content-type")):
        return None
    service, method = split_path(ex.path)
    flags: set[str] = set()
    if service is None:
        flags.add("grpc_bad_path")
    req_enc = _header(ex.request_headers, "grpc-encoding")
    resp_enc = _header(ex.response_headers, "grpc-encoding")
    request = parse_messages(ex.request_body, req_enc, limit=limit, decode=decode)
    response = parse_messages(ex.response_body, resp_enc, limit=limit, decode=decode)
    flags |= request.flags | response.flags
    raw_status = _header(ex.response_trailers, "grpc-status")
    raw_message = _header(ex.response_trailers, "grpc-message")
    trailers_only = False
    if raw_status is None:
        raw_status = _header(ex.response_headers, "grpc-status")
        if raw_status is not None:
            trailers_only = True
            raw_message = _header(ex.response_headers, "grpc-message")
    status: int | None = None
    if raw_status is not None:
        text = raw_status.strip()
        if text.isascii() and text.isdigit() and len(text) < 10:
            status = int(text)
        else:
            flags.add("grpc_bad_status")
    elif ex.status is not None:
        flags.add("grpc_no_status")
    message = unquote(raw_message, errors="replace") if raw_message else None
    return GrpcCall(service, method, status, message, request, response, req_enc, resp_enc, trailers_only,
                    flags)
