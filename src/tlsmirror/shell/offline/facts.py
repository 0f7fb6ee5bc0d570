"""Handshake facts as files: JSON lines read for ``--facts`` and written by ``--facts-out``.

One object per connection whose handshake a run saw (see :class:`tlsmirror.tls.events.HandshakeFacts`):
a later run given these facts and the key log decrypts the same connections from mid-stream (a capture
that starts after their handshakes). Facts hold no secret, but they are keyed to secrets (the client
random names the key log line), so the file is written with mode 0600.

    {"client": {"ip": "10.0.0.1", "port": 40000}, "server": {"ip": "10.0.0.2", "port": 443},
     "client_random": "hex", "server_random": "hex", "version": "TLS1.2",
     "suite": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "extended_master_secret": true,
     "encrypt_then_mac": false, "alpn": "h2", "ts": 1714564800.123456, "sni": "api.example.com"}

``alpn`` and ``sni`` are null when the handshake had none; ``sni`` may be absent (facts of earlier versions).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import IO, Any

from ...frames.addresses import ip_text
from ...tls.events import HandshakeFacts
from ...tls.suites import suite_by_name, suite_for
from ..errors import InputError

MAX_FACTS_WARNINGS = 20  # bad lines reported one by one per file; the rest are counted

_VERSIONS = {"SSL3.0": 0x0300, "TLS1.0": 0x0301, "TLS1.1": 0x0302, "TLS1.2": 0x0303, "TLS1.3": 0x0304}
_NAMES = {v: k for k, v in _VERSIONS.items()}


def facts_to_dict(f: HandshakeFacts) -> dict[str, Any]:
    return {
        "client": {"ip": ip_text(f.client_addr), "port": f.client_port},
        "server": {"ip": ip_text(f.server_addr), "port": f.server_port},
        "client_random": f.client_random.hex(),
        "server_random": f.server_random.hex(),
        "version": _NAMES.get(f.version, f"0x{f.version:04x}"),
        "suite": suite_for(f.suite).name,
        "extended_master_secret": f.extended_master_secret,
        "encrypt_then_mac": f.encrypt_then_mac,
        "alpn": f.alpn,
        "ts": round(f.ts, 6),
        "sni": f.sni,
    }


def _end(obj: Any) -> tuple[bytes, int]:
    if not isinstance(obj, dict):
        raise ValueError("an endpoint is {\"ip\": ..., \"port\": ...}")
    port = obj.get("port")
    if type(port) is not int or not 0 < port < 65536:
        raise ValueError("bad port")
    ip = obj.get("ip")
    if not isinstance(ip, str):
        raise ValueError("bad ip")
    import ipaddress  # when a facts file is read: most runs have none (start-up)

    return ipaddress.ip_address(ip).packed, port


def _random(obj: Any, name: str) -> bytes:
    if not isinstance(obj, str):
        raise ValueError(f"{name} is not a hex string")
    raw = bytes.fromhex(obj)
    if len(raw) != 32:
        raise ValueError(f"{name} is not 32 bytes")
    return raw


def facts_from_dict(obj: Any) -> HandshakeFacts:
    """The facts of one JSON object; ValueError saying what is wrong (never echoing the values)."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    client, server = _end(obj.get("client")), _end(obj.get("server"))
    version = obj.get("version")
    code = _VERSIONS.get(version) if isinstance(version, str) else None
    if code is None:
        raise ValueError("unknown version")
    suite_name = obj.get("suite")
    suite = suite_by_name(suite_name) if isinstance(suite_name, str) else None
    if suite is None:
        raise ValueError("unknown cipher suite")
    alpn = obj.get("alpn")
    if alpn is not None and not isinstance(alpn, str):
        raise ValueError("alpn is not a string")
    sni = obj.get("sni")  # absent from the facts of earlier versions
    if sni is not None and not isinstance(sni, str):
        raise ValueError("sni is not a string")
    ts = obj.get("ts", 0.0)
    if type(ts) not in (int, float) or not -1e12 < ts < 1e12:
        raise ValueError("ts is not a time")
    client_random = _random(obj.get("client_random"), "client_random")
    server_random = _random(obj.get("server_random"), "server_random")
    return HandshakeFacts(client[0], client[1], server[0], server[1], client_random, server_random, code, suite.code,
                          bool(obj.get("extended_master_secret")), bool(obj.get("encrypt_then_mac")), alpn, float(ts),
                          sni)


def load_facts_files(paths: Iterable[str], warn: Callable[[str], None]) -> list[HandshakeFacts]:
    """Every well-formed line of the facts files at ``paths``; bad lines are reported through ``warn``
    and skipped. A file that cannot be read is an :class:`InputError`."""
    out: list[HandshakeFacts] = []
    for path in paths:
        import json  # here: a run without facts files (decrypt's usual) does not import the json package

        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                lines = fh.readlines()
        except OSError as exc:
            raise InputError(f"{path}: cannot read handshake facts: {exc.strerror or exc}") from None
        bad = 0
        for no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(facts_from_dict(json.loads(line)))
            except (ValueError, TypeError, RecursionError) as exc:
                bad += 1
                if bad <= MAX_FACTS_WARNINGS:
                    why = str(exc) if type(exc) is ValueError else "not JSON"
                    warn(f"{path}:{no}: skipped handshake facts line: {why}")
        if bad > MAX_FACTS_WARNINGS:
            warn(f"{path}: {bad - MAX_FACTS_WARNINGS} more handshake facts lines skipped")
    return out


class FactsWriter:
    """``--facts-out``: the handshake facts a run saw, one JSON line each, in a file of mode 0600."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: make it 0600
        except OSError as exc:
            raise InputError(f"{path}: cannot write handshake facts: {exc.strerror or exc}") from None
        self._fh: IO[str] = os.fdopen(fd, "w", encoding="utf-8")
        import json  # here, not at import: see load_facts_files

        self._dumps: Callable[[Any], str] = json.dumps

    def write(self, facts: HandshakeFacts) -> None:
        self._fh.write(self._dumps(facts_to_dict(facts)) + "\n")
        self.written += 1

    def close(self) -> None:
        self._fh.close()
