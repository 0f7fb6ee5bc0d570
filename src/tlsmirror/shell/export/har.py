"""HAR 1.2 exporter: an HTTP Archive that browser dev tools and HAR viewers open.

Streamed: the document head is written when the file is opened, each entry as its call comes, and
the closing brackets at :meth:`HarExporter.close` (a file from a run that was killed is therefore
not valid JSON until closed; entries are never held in memory).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from http import HTTPStatus
from typing import IO, Any

from ... import __version__
from ...calls import ApiCall
from ...http.events import Body, Headers
from ...record import body_is_text, header_value, iso_time, query_params, split_target, url_of
from ..errors import InputError
from . import FileSink

_HEAD = ('{"log":{"version":"1.2","creator":{"name":"tlsmirror","version":%s},'
         '"pages":[],"entries":[')
_TAIL = "\n]}}\n"


def _ms(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return 0.0
    return round(max(b - a, 0.0) * 1000.0, 3)


def _har_time(ts: float) -> str:
    # milliseconds are what every HAR reader parses; keep microseconds anyway (valid ISO 8601)
    return iso_time(ts)


def _headers(headers: Headers) -> list[dict[str, str]]:
    return [{"name": n, "value": v} for n, v in headers]


def _request_cookies(headers: Headers) -> list[dict[str, str]]:
    out = []
    for n, v in headers:
        if n.lower() != "cookie":
            continue
        for part in v.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name:
                out.append({"name": name, "value": value})
    return out


def _response_cookies(headers: Headers) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n, v in headers:
        if n.lower() != "set-cookie":
            continue
        first, *attrs = v.split(";")
        name, sep, value = first.strip().partition("=")
        if not (sep and name):
            continue
        c: dict[str, Any] = {"name": name, "value": value}
        for a in attrs:
            key, _, val = a.strip().partition("=")
            k = key.lower()
            if k == "path":
                c["path"] = val
            elif k == "domain":
                c["domain"] = val
            elif k == "expires":
                c["expires"] = val
            elif k == "httponly":
                c["httpOnly"] = True
            elif k == "secure":
                c["secure"] = True
        out.append(c)
    return out


def _text_or_base64(data: bytes, content_type: str | None) -> tuple[str, str | None]:
    if body_is_text(data, content_type):
        return data.decode("utf-8"), None
    return base64.b64encode(data).decode("ascii"), "base64"


def _http_version(v: str) -> str:
    return "HTTP/2.0" if v == "2" else f"HTTP/{v}"


def _body_size(body: Body | None) -> int:
    return body.wire_size if body is not None else 0


def har_entry(call: ApiCall) -> dict[str, Any]:
    """One HAR 1.2 ``log.entries[]`` item for ``call`` (custom fields start with ``_``)."""
    ex = call.exchange
    conn = call.connection
    version = _http_version(ex.http_version)
    start = ex.request_ts if ex.request_ts is not None else ex.response_ts
    _, query = split_target(ex.path)
    req_ct = header_value(ex.request_headers, "content-type")
    resp_ct = header_value(ex.response_headers, "content-type")

    request: dict[str, Any] = {
        "method": ex.method or "",
        "url": url_of(call) or "",
        "httpVersion": version,
        "cookies": _request_cookies(ex.request_headers),
        "headers": _headers(ex.request_headers),
        "queryString": [{"name": k, "value": v} for k, v in query_params(query)],
        "headersSize": -1,
        "bodySize": _body_size(ex.request_body) if ex.method is not None else -1,
    }
    if ex.request_body is not None:
        text, enc = _text_or_base64(ex.request_body.data, req_ct)
        post: dict[str, Any] = {"mimeType": req_ct or "", "params": [], "text": text}
        if enc:
            post["encoding"] = enc
        request["postData"] = post

    body = ex.response_body
    content: dict[str, Any] = {"size": body.size if body is not None else 0, "mimeType": resp_ct or ""}
    if body is not None:
        text, enc = _text_or_base64(body.data, resp_ct)
        content["text"] = text
        if enc:
            content["encoding"] = enc
        if body.wire_size != body.size and body.decode_error is None:
            content["compression"] = body.size - body.wire_size
        if body.truncated:
            content["_truncated"] = True
        if body.decode_error:
            content["_decodeError"] = body.decode_error
    status = ex.status or 0
    reason = ex.reason
    if reason is None and status:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    response: dict[str, Any] = {
        "status": status,
        "statusText": reason or "",
        "httpVersion": version,
        "cookies": _response_cookies(ex.response_headers),
        "headers": _headers(ex.response_headers),
        "content": content,
        "redirectURL": header_value(ex.response_headers, "location") or "",
        "headersSize": -1,
        "bodySize": _body_size(body) if ex.status is not None else -1,
    }
    send = _ms(ex.request_ts, ex.request_end_ts)
    wait = _ms(ex.request_end_ts, ex.response_ts)
    receive = _ms(ex.response_ts, ex.response_end_ts)
    entry: dict[str, Any] = {
        "startedDateTime": _har_time(start if start is not None else 0.0),
        "time": round(send + wait + receive, 3),
        "request": request,
        "response": response,
        "cache": {},
        "timings": {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1,
                    "send": send, "wait": wait, "receive": receive},
        "serverIPAddress": conn.server_ip,
        "connection": str(conn.id),
        "_client": {"ip": conn.client_ip, "port": conn.client_port},
        "_serverPort": conn.server_port,
        "_flags": sorted(ex.flags),
    }
    if conn.tls:
        entry["_tls"] = {"version": conn.tls_version, "suite": conn.tls_suite, "sni": conn.sni,
                         "alpn": conn.alpn}
    if ex.stream_id is not None:
        entry["_streamId"] = ex.stream_id
    if ex.request_body is not None:
        entry["_requestBody"] = {"size": ex.request_body.size, "truncated": ex.request_body.truncated,
                                 "decodeError": ex.request_body.decode_error}
    return entry


class HarExporter(FileSink):
    """Streams a HAR 1.2 document to ``path`` (``-`` = stdout).

    :meth:`reopen` (SIGHUP): when ``path`` was moved away (log rotation), the current document is
    closed properly and a new one started at ``path``; otherwise it only flushes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.stats: dict[str, int] = {"exported": 0, "bytes": 0, "errors": 0, "dropped": 0, "documents": 0}
        self.last_error: str | None = None
        self._fh: IO[str] | None = None
        self._entries = 0
        self._closed = False
        self._start()

    def _start(self) -> None:
        if self.path == "-":
            self._fh = sys.stdout
        else:
            try:
                self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115  (closed by close())
            except OSError as exc:
                raise InputError(f"{self.path}: cannot write output: {exc.strerror or exc}") from None
        self._entries = 0
        self._write(_HEAD % json.dumps(__version__))
        self.stats["documents"] += 1

    def _write(self, text: str) -> bool:
        fh = self._fh
        if fh is None:
            return False
        try:
            fh.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            self.stats["errors"] += 1
            self.last_error = str(exc.strerror or exc)
            return False
        self.stats["bytes"] += len(text)
        return True

    def _finish(self) -> None:
        fh = self._fh
        if fh is None:
            return
        self._write(_TAIL)
        self._fh = None
        try:
            if fh is sys.stdout:
                fh.flush()
            else:
                fh.close()
        except OSError as exc:
            self.stats["errors"] += 1
            self.last_error = str(exc.strerror or exc)

    def export(self, call: ApiCall) -> None:
        if self._closed or self._fh is None:
            self.stats["dropped"] += 1
            return
        text = json.dumps(har_entry(call), ensure_ascii=False, separators=(",", ":"))
        if self._write(("\n" if self._entries == 0 else ",\n") + text):
            self._entries += 1
            self.stats["exported"] += 1
        else:
            self.stats["dropped"] += 1

    def reopen(self) -> None:
        if self._closed or self.path == "-" or self._fh is None:
            self.flush()
            return
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._fh.fileno()).st_ino
        except OSError:
            same = False
        if same:
            self.flush()
            return
        self._finish()
        try:
            self._start()
        except InputError as exc:
            self.stats["errors"] += 1
            self.last_error = str(exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finish()
