"""The exporter: can the OTLP collector be reached with the token, and are spans leaving."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..config import Config, read_token
from ..errors import InputError
from .metrics import Scrape
from .result import FAIL, OK, WARN, Result, num, percent, see, size_text


def otlp_address(endpoint: str, protocol: str, insecure: bool) -> tuple[str, int] | None:
    if protocol == "http":
        url = endpoint if "://" in endpoint else f"{'http' if insecure else 'https'}://{endpoint}"
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        return (parts.hostname, port) if parts.hostname else None
    rest = endpoint.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port_text = rest.rpartition(":")
    if not sep or not port_text.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port_text)


def probe_otlp(cfg: Config, timeout: float) -> Result:
    """TCP connect to the collector, then an empty export request with the configured headers/token."""
    o = cfg.otlp
    label = "exporter"
    assert o.endpoint is not None
    data: dict[str, Any] = {"endpoint": o.endpoint, "protocol": o.protocol}
    addr = otlp_address(o.endpoint, o.protocol, o.insecure)
    name = f"OTLP/{o.protocol} {o.endpoint}"
    if addr is not None:
        try:
            socket.create_connection(addr, timeout=timeout).close()
        except ConnectionRefusedError:
            return Result(label, FAIL, f"{name}: connection refused", [
                "the collector / platform agent is not running there, or otlp.endpoint has the wrong port "
                "(OTLP: 4317 gRPC, 4318 HTTP); spans wait in the spool meanwhile",
                see("exporter-errors-and-authentication")], data)
        except TimeoutError:
            return Result(label, FAIL, f"{name}: no answer within {timeout:g} s", [
                "a firewall drops the connection or the address is wrong (otlp.endpoint)",
                see("exporter-errors-and-authentication")], data)
        except OSError as exc:
            return Result(label, FAIL, f"{name}: cannot connect: {exc.strerror or exc}", [
                "check otlp.endpoint (host name resolvable? route?)",
                see("exporter-errors-and-authentication")], data)
    token: str | None = None
    token_note = ""
    try:
        token = read_token(cfg)
    except InputError:
        token_note = "otlp.token_file is not readable as this user (run doctor with sudo to test the token)"
    try:
        from ..export.otlp import GrpcTransport, HttpTransport, OtlpConfig
    except ImportError:
        return Result(label, OK, f"{name} accepts connections (the OTLP exporter is not in this build)",
                      data=data)
    headers = list(o.headers.items())
    if token:
        headers.append((o.token_header, token))
    ocfg = OtlpConfig(endpoint=o.endpoint, protocol=o.protocol, insecure=o.insecure, ca=o.ca, cert=o.cert,
                      key=o.key, timeout=timeout, compression=o.compression)
    transport: Any = None
    try:
        transport = GrpcTransport(ocfg, headers) if o.protocol == "grpc" else HttpTransport(ocfg, headers)
        outcome = transport.send(b"")  # an empty ExportTraceServiceRequest: no spans
    except InputError as exc:
        return Result(label, FAIL, f"{name}: {exc}", ["fix the TLS files of the otlp section"], data)
    except Exception as exc:  # a transport problem must not stop the other checks
        return Result(label, WARN, f"{name}: the empty export request could not be made ({type(exc).__name__})",
                      data=data)
    finally:
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
    message = str(getattr(outcome, "message", "") or "")
    if token:
        message = message.replace(token, "***")
    message = message[:160]
    data["probe"] = "ok" if outcome.ok else message
    if outcome.ok:
        res = Result(label, OK, f"{name}: an empty export was accepted" + (" (token sent)" if token else ""),
                     data=data)
        if token_note:
            res.status = WARN
            res.advice.append(token_note)
        return res
    code = message.split(":", 1)[0].strip()
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "HTTP 401", "HTTP 403"):
        if token_note or not token:
            return Result(label, FAIL, f"{name}: authentication required ({code}) and no token was sent", [
                token_note or "set otlp.token_file (install.sh -t / --token-file) to the platform's agent token",
                see("exporter-errors-and-authentication")], data)
        return Result(label, FAIL, f"{name}: token rejected ({code})", [
            "the collector refuses otlp.token / otlp.token_file: put a valid (not expired) agent token there, "
            f"check otlp.token_header ({o.token_header}), then `systemctl restart tlsmirror`",
            see("exporter-errors-and-authentication")], data)
    if code in ("UNIMPLEMENTED", "HTTP 404", "HTTP 405"):
        return Result(label, FAIL, f"{name}: not an OTLP trace receiver ({code})", [
            "wrong port or protocol: OTLP/gRPC is usually 4317 (otlp.protocol: grpc), OTLP/HTTP 4318 with "
            "path /v1/traces (otlp.protocol: http)", see("exporter-errors-and-authentication")], data)
    if code == "UNAVAILABLE" and addr is not None:
        return Result(label, FAIL, f"{name}: accepts TCP but not OTLP/gRPC ({message})", [
            "TLS mismatch (otlp.insecure / https:// vs a plaintext collector, or the reverse), a wrong CA "
            "(otlp.ca), or an HTTP port given to the gRPC exporter", see("exporter-errors-and-authentication")],
            data)
    return Result(label, WARN, f"{name}: the empty export request failed: {message}", [
        "the collector answered with an error; its log says why", see("exporter-errors-and-authentication")],
        data)


def check_exporter(cfg: Config, probe: Result | None, s0: Scrape | None, s1: Scrape | None,
                   wait: float) -> Result:
    """The probe result, plus the exporters' failure/drop counters and the OTLP spool."""
    label = "exporter"
    if probe is None:
        out = (next(iter(s0.by("output_info", "jsonl")), None) if s0 is not None else None) or cfg.output.jsonl
        res = Result(label, OK, "OTLP export is off (otlp.endpoint not set); API calls go to "
                                + ("stdout" if out in (None, "-") else out))
        if out not in (None, "-"):
            directory = os.path.dirname(os.path.abspath(out))
            if not os.path.isdir(directory):
                res.status, res.message = FAIL, f"output.jsonl {out}: the directory {directory} does not exist"
                res.advice.append("create it (writable by the service user) or fix output.jsonl")
    else:
        res = dataclasses.replace(probe, advice=list(probe.advice), data=dict(probe.data))
    if s0 is None:
        return res
    last = s1 or s0
    exporters = last.exporters()
    before = s0.exporters()
    res.data["exporters"] = exporters
    problems: list[str] = []
    for ex, c in sorted(exporters.items()):
        prev = before.get(ex, {})
        failed = c.get("failed", 0) + c.get("errors", 0)
        dropped = c.get("dropped", 0)
        retries_now = c.get("retries", 0) - prev.get("retries", 0) if s1 is not None else 0
        if failed:
            problems.append(f"{ex}: {num(failed)} failed")
        if dropped:
            problems.append(f"{ex}: {num(dropped)} dropped")
        if c.get("partial_rejected"):
            problems.append(f"{ex}: {num(c['partial_rejected'])} rejected by the receiver")
        if retries_now > 0:
            problems.append(f"{ex}: retrying now ({num(retries_now)} retries in {wait:g} s)")
        spool = c.get("spool_bytes", 0)
        if spool:
            limit = cfg.otlp.spool_max_bytes if cfg.otlp.spool_dir else 64 << 20
            res.data["spool_bytes"] = spool
            res.message += f"; spool {size_text(spool)} of {size_text(limit)}"
            if limit and spool / limit > 0.5:
                problems.append(f"{ex}: spool {percent(spool, limit)} full")
        if "exported" in c:
            res.message += f"; {ex} exported {num(c['exported'])}"
    queue_drops = last.value("dropped", where="export_queue")
    if queue_drops:
        problems.append(f"export queue: {num(queue_drops)} API calls dropped (exporters too slow)")
    if cfg.otlp.spool_dir and os.path.isdir(cfg.otlp.spool_dir):
        with contextlib.suppress(OSError):
            st = os.statvfs(cfg.otlp.spool_dir)
            free = st.f_bavail * st.f_frsize
            res.data["spool_disk_free"] = free
            if free < cfg.otlp.spool_max_bytes:
                problems.append(f"only {size_text(free)} free on the spool's file system (otlp.spool_max_bytes "
                                f"{size_text(cfg.otlp.spool_max_bytes)})")
    if problems:
        if res.status == OK:
            res.status = WARN
        res.message += "; " + "; ".join(problems)
        res.advice += [
            "the exporter cannot deliver fast enough or at all: check the collector (the probe above), the "
            "network, and the sensor's log for `OTLP export ... failed` lines",
            "a spool that grows means the collector is unreachable or slower than the traffic; at "
            "otlp.spool_max_bytes new batches are dropped (counted as dropped)", see("spool-filling")]
    return res
