"""Real TLS sessions through the engine: the requests and responses they carry, a decryption run and its checks,
cipher suite lists."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.pcapwriter import (
    tcp_conversation,
)
from tests.support.tlspair import TlsTranscript, native_available, run_session, server_rsa_key_pem
from tlsmirror.frames.events import TcpSegment
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.keys.rsa import load_rsa_key
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.tls.events import TlsOutcome, TlsPlaintext
from tlsmirror.tls.suites import suite_for

NATIVE = native_available()

REQUESTS = [
    b"POST /v1/orders HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 11\r\n\r\n{\"id\": 42}\n",
    b"GET /v1/orders/42 HTTP/1.1\r\nHost: api.example.test\r\n\r\n",
]
RESPONSES = [
    b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n" + bytes(range(256)) * 156 + b"x" * 64,
]
VERSION_NAMES = {"TLSv1": "TLS1.0", "TLSv1.1": "TLS1.1", "TLSv1.2": "TLS1.2", "TLSv1.3": "TLS1.3"}


# ============================================================================ helpers (shared)


@dataclass
class Run:
    """One engine and every event it produced, with views per flow."""

    engine: Engine
    events: list[Any] = field(default_factory=list)

    @classmethod
    def new(cls, config: EngineConfig | None = None, rsa_pem: bytes | None = None) -> Run:
        keys = [load_rsa_key(rsa_pem)] if rsa_pem is not None else None
        return cls(Engine(config, rsa_keys=keys))

    def keys(self, keylog: str, ts: float = 0.0) -> Run:
        secrets, problems = parse_keylog(keylog)
        assert not problems, problems
        self.events += self.engine.add_secrets(secrets, ts)
        return self

    def segments(self, segs: Iterable[TcpSegment]) -> Run:
        for seg in segs:
            self.events += self.engine.feed_segment(seg)
        return self

    def frames(self, frames: Iterable[tuple[float, bytes]], linktype: int = 1) -> Run:
        for ts, frame in frames:
            self.events += self.engine.feed_frame(linktype, frame, ts)
        return self

    def finish(self) -> Run:
        self.events += self.engine.finish()
        return self

    # ---- views
    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if type(e) is cls]

    @property
    def outcomes(self) -> list[TlsOutcome]:
        return self.of(TlsOutcome)

    @property
    def outcome(self) -> TlsOutcome:
        outs = self.outcomes
        assert len(outs) == 1, outs
        return outs[0]

    def plaintext(self, flow_id: int | None = None) -> tuple[bytes, bytes]:
        """(client->server, server->client) decrypted bytes of one flow (the only one by default)."""
        if flow_id is None:
            flow_id = self.outcome.flow.id
        got = [bytearray(), bytearray()]
        for e in self.of(TlsPlaintext):
            if e.flow.id == flow_id:
                got[e.direction] += e.data
        return bytes(got[0]), bytes(got[1])

    def by_flow(self) -> dict[int, tuple[bytes, bytes]]:
        return {o.flow.id: self.plaintext(o.flow.id) for o in self.outcomes}


def session(tmp: Path, **kw: Any) -> TlsTranscript:
    kw.setdefault("requests", REQUESTS)
    kw.setdefault("responses", RESPONSES)
    t, _ = run_session(tmpdir=tmp, **kw)
    return t


def segments(t: TlsTranscript, **kw: Any) -> list[TcpSegment]:
    return tcp_conversation(t.flights, **kw)


def decrypt(t: TlsTranscript, keylog: str | None = None, *, config: EngineConfig | None = None,
            rsa_pem: bytes | None = None, **kw: Any) -> Run:
    """Keys first (``keylog``, default: the session's own), then every segment, then finish."""
    run = Run.new(config, rsa_pem)
    run.keys(t.keylog if keylog is None else keylog)
    return run.segments(segments(t, **kw)).finish()


def assert_decrypted(run: Run, t: TlsTranscript, *, outcome: str = "decrypted", late_key: bool = False,
                     resumed: bool | None = None, flow_id: int | None = None,
                     alpn: str | bool | None = True) -> TlsOutcome:
    o = run.outcome if flow_id is None else next(x for x in run.outcomes if x.flow.id == flow_id)
    assert (o.outcome, o.reason) == (outcome, "") if outcome == "decrypted" else o.outcome == outcome, o
    assert run.plaintext(o.flow.id) == (t.app_c2s, t.app_s2c)
    assert o.version == VERSION_NAMES[t.version]
    assert o.suite == (t.cipher if t.version == "TLSv1.3" else openssl_suite_name(t.cipher))
    assert o.sni == "api.example.test"
    assert o.alpn == (t.alpn if alpn is True else alpn)
    assert o.late_key is late_key
    assert o.resumed is (t.session_reused if resumed is None else resumed)
    assert o.records_failed == 0
    assert o.held_dropped_bytes == 0
    return o


def keylog_without(keylog: str, *labels: str) -> str:
    return "".join(line + "\n" for line in keylog.splitlines() if line.split(" ", 1)[0] not in labels)


def keylog_only(keylog: str, *labels: str) -> str:
    return "".join(line + "\n" for line in keylog.splitlines() if line.split(" ", 1)[0] in labels)


def records(stream: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, content type, fragment) of every whole TLS record of a stream."""
    out = []
    off = 0
    while off + 5 <= len(stream):
        n = int.from_bytes(stream[off + 3:off + 5], "big")
        out.append((off, stream[off], stream[off + 5:off + 5 + n]))
        off += 5 + n
    return out


def cleartext_handshake(stream: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of the handshake messages before the first ChangeCipherSpec."""
    buf = bytearray()
    for _, ctype, frag in records(stream):
        if ctype == 20:
            break
        if ctype == 22:
            buf += frag
    msgs = []
    off = 0
    while off + 4 <= len(buf):
        n = int.from_bytes(buf[off + 1:off + 4], "big")
        msgs.append((buf[off], bytes(buf[off + 4:off + 4 + n])))
        off += 4 + n
    return msgs


def rsa_premaster(t: TlsTranscript) -> tuple[bytes, bytes]:
    """(encrypted pre-master, pre-master) of a static-RSA session, decrypted with the server key."""
    cke = next(body for mtype, body in cleartext_handshake(t.stream_c2s) if mtype == 16)
    enc = cke[2:] if t.version != "SSLv3" else cke
    key = serialization.load_pem_private_key(server_rsa_key_pem(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return enc, key.decrypt(enc, padding.PKCS1v15())


def _openssl_codes() -> dict[str, int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return {c["name"]: c["id"] & 0xFFFF for c in ctx.get_ciphers()}


OPENSSL_CODES = _openssl_codes()


def openssl_suite_name(name: str) -> str:
    """The IANA name the engine reports for an OpenSSL cipher name."""
    return suite_for(OPENSSL_CODES[name]).name


def tls12_suites() -> list[str]:
    """Every TLS <= 1.2 suite the local OpenSSL offers that a CPython client can negotiate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return [c["name"] for c in ctx.get_ciphers()
            if c["protocol"] != "TLSv1.3" and c["auth"] in ("auth-rsa", "auth-ecdsa", "auth-null")
            and c["kea"] in ("kx-rsa", "kx-ecdhe", "kx-dhe")]


def tls13_suites() -> list[str]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"] + [
        "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256"]
