"""Handshake message parsing: only the fields a passive decryptor needs."""

from __future__ import annotations

from typing import Any

from .errors import TlsParseError

# Handshake message types.
HELLO_REQUEST = 0
CLIENT_HELLO = 1
SERVER_HELLO = 2
NEW_SESSION_TICKET = 4
END_OF_EARLY_DATA = 5
ENCRYPTED_EXTENSIONS = 8
CERTIFICATE = 11
SERVER_KEY_EXCHANGE = 12
CLIENT_KEY_EXCHANGE = 16
FINISHED = 20
KEY_UPDATE = 24

# Extensions.
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_ENCRYPT_THEN_MAC = 22
EXT_EXTENDED_MASTER_SECRET = 23
EXT_SESSION_TICKET = 35
EXT_PRE_SHARED_KEY = 41
EXT_EARLY_DATA = 42
EXT_SUPPORTED_VERSIONS = 43

HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")

VERSION_NAMES = {0x0300: "SSL3.0", 0x0301: "TLS1.0", 0x0302: "TLS1.1", 0x0303: "TLS1.2", 0x0304: "TLS1.3"}


def version_name(version: int) -> str:
    return VERSION_NAMES.get(version, f"0x{version:04x}")


class ClientHello:
    __slots__ = ("alpn", "early_data", "ems", "etm", "psk", "random", "session_id", "sni", "suites", "ticket",
                 "version", "versions")

    version: int
    random: bytes
    session_id: bytes
    suites: tuple[int, ...]
    sni: str | None
    alpn: tuple[str, ...]
    ticket: bytes  # TLS 1.2 session_ticket extension content (non-empty: resumption attempt)
    ems: bool
    etm: bool
    early_data: bool
    psk: bool
    versions: tuple[int, ...]

    def __init__(self, version: int, random: bytes, session_id: bytes, suites: tuple[int, ...], sni: str | None = None,
                 alpn: tuple[str, ...] = (), ticket: bytes = b"", ems: bool = False, etm: bool = False,
                 early_data: bool = False, psk: bool = False, versions: tuple[int, ...] = ()) -> None:
        self.version = version
        self.random = random
        self.session_id = session_id
        self.suites = suites
        self.sni = sni
        self.alpn = alpn
        self.ticket = ticket
        self.ems = ems
        self.etm = etm
        self.early_data = early_data
        self.psk = psk
        self.versions = versions

    def __repr__(self) -> str:
        return (f"ClientHello(version={self.version!r}, random={self.random!r}, session_id={self.session_id!r}, "
                f"suites={self.suites!r}, sni={self.sni!r}, alpn={self.alpn!r}, ticket={self.ticket!r}, "
                f"ems={self.ems!r}, etm={self.etm!r}, early_data={self.early_data!r}, psk={self.psk!r}, "
                f"versions={self.versions!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not ClientHello:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __reduce__(self) -> tuple[type[ClientHello], tuple[Any, ...]]:
        return ClientHello, (self.version, self.random, self.session_id, self.suites, self.sni, self.alpn, self.ticket,
                             self.ems, self.etm, self.early_data, self.psk, self.versions)


class ServerHello:
    __slots__ = ("alpn", "compression", "ems", "etm", "extensions", "is_hrr", "psk", "random", "session_id", "suite",
                 "ticket_ack", "version")

    version: int  # negotiated: supported_versions if present, else legacy version
    random: bytes
    session_id: bytes
    suite: int
    alpn: str | None
    ems: bool
    etm: bool
    ticket_ack: bool
    psk: bool
    is_hrr: bool
    compression: int  # 1 = DEFLATE (RFC 3749)
    extensions: list[int]

    def __init__(self, version: int, random: bytes, session_id: bytes, suite: int, alpn: str | None = None,
                 ems: bool = False, etm: bool = False, ticket_ack: bool = False, psk: bool = False,
                 is_hrr: bool = False, compression: int = 0, extensions: list[int] | None = None) -> None:
        self.version = version
        self.random = random
        self.session_id = session_id
        self.suite = suite
        self.alpn = alpn
        self.ems = ems
        self.etm = etm
        self.ticket_ack = ticket_ack
        self.psk = psk
        self.is_hrr = is_hrr
        self.compression = compression
        self.extensions = [] if extensions is None else extensions

    def __repr__(self) -> str:
        return (f"ServerHello(version={self.version!r}, random={self.random!r}, session_id={self.session_id!r}, "
                f"suite={self.suite!r}, alpn={self.alpn!r}, ems={self.ems!r}, etm={self.etm!r}, "
                f"ticket_ack={self.ticket_ack!r}, psk={self.psk!r}, is_hrr={self.is_hrr!r}, "
                f"compression={self.compression!r}, extensions={self.extensions!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not ServerHello:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __reduce__(self) -> tuple[type[ServerHello], tuple[Any, ...]]:
        return ServerHello, (self.version, self.random, self.session_id, self.suite, self.alpn, self.ems, self.etm,
                             self.ticket_ack, self.psk, self.is_hrr, self.compression, self.extensions)


def _vec(body: bytes, off: int, width: int) -> tuple[bytes, int]:
    if off + width > len(body):
        raise TlsParseError("truncated handshake message")
    n = int.from_bytes(body[off:off + width], "big")
    end = off + width + n
    if end > len(body):
        raise TlsParseError("truncated handshake vector")
    return body[off + width:end], end


def _extensions(body: bytes, off: int) -> list[tuple[int, bytes]]:
    if off >= len(body):
        return []
    raw, _ = _vec(body, off, 2)
    out = []
    i = 0
    while i + 4 <= len(raw):
        etype = int.from_bytes(raw[i:i + 2], "big")
        data, i = _vec(raw, i + 2, 2)
        out.append((etype, data))
    if i != len(raw):
        raise TlsParseError("malformed extensions block")
    return out


def _alpn_list(data: bytes) -> tuple[str, ...]:
    raw, _ = _vec(data, 0, 2)
    out = []
    i = 0
    while i < len(raw):
        name, i = _vec(raw, i, 1)
        out.append(name.decode("ascii", "replace"))
    return tuple(out)


def parse_client_hello(body: bytes) -> ClientHello:
    if len(body) < 38:
        raise TlsParseError("ClientHello too short")
    version = int.from_bytes(body[0:2], "big")
    random = bytes(body[2:34])
    session_id, off = _vec(body, 34, 1)
    suites_raw, off = _vec(body, off, 2)
    suites = tuple(int.from_bytes(suites_raw[i:i + 2], "big") for i in range(0, len(suites_raw) - 1, 2))
    _, off = _vec(body, off, 1)  # compression methods
    ch = ClientHello(version, random, bytes(session_id), suites)
    for etype, data in _extensions(body, off):
        if etype == EXT_SERVER_NAME:
            names, _ = _vec(data, 0, 2)
            i = 0
            while i + 3 <= len(names):
                ntype = names[i]
                name, i = _vec(names, i + 1, 2)
                if ntype == 0:
                    ch.sni = name.decode("utf-8", "replace")
                    break
        elif etype == EXT_ALPN:
            ch.alpn = _alpn_list(data)
        elif etype == EXT_SESSION_TICKET:
            ch.ticket = bytes(data)
        elif etype == EXT_EXTENDED_MASTER_SECRET:
            ch.ems = True
        elif etype == EXT_ENCRYPT_THEN_MAC:
            ch.etm = True
        elif etype == EXT_EARLY_DATA:
            ch.early_data = True
        elif etype == EXT_PRE_SHARED_KEY:
            ch.psk = True
        elif etype == EXT_SUPPORTED_VERSIONS:
            raw, _ = _vec(data, 0, 1)
            ch.versions = tuple(int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw) - 1, 2))
    return ch


def parse_sslv2_client_hello(msg: bytes) -> ClientHello:
    """An SSL 2.0-compatible ClientHello (message after the 2-byte record header) offering SSL 3.0+.

    The client random is the challenge, right-aligned in 32 bytes (RFC 5246 appendix E.2).
    """
    if len(msg) < 9 or msg[0] != CLIENT_HELLO:
        raise TlsParseError("not an SSLv2 ClientHello")
    version = int.from_bytes(msg[1:3], "big")
    spec_len = int.from_bytes(msg[3:5], "big")
    sid_len = int.from_bytes(msg[5:7], "big")
    chal_len = int.from_bytes(msg[7:9], "big")
    if 9 + spec_len + sid_len + chal_len > len(msg) or not 16 <= chal_len <= 32:
        raise TlsParseError("malformed SSLv2 ClientHello")
    specs = msg[9:9 + spec_len]
    suites = tuple(int.from_bytes(specs[i + 1:i + 3], "big") for i in range(0, len(specs) - 2, 3)
                   if specs[i] == 0)
    sid = msg[9 + spec_len:9 + spec_len + sid_len]
    challenge = msg[9 + spec_len + sid_len:9 + spec_len + sid_len + chal_len]
    return ClientHello(version, bytes(32 - chal_len) + bytes(challenge), bytes(sid), suites)


def parse_server_hello(body: bytes) -> ServerHello:
    if len(body) < 38:
        raise TlsParseError("ServerHello too short")
    version = int.from_bytes(body[0:2], "big")
    random = bytes(body[2:34])
    session_id, off = _vec(body, 34, 1)
    if off + 3 > len(body):
        raise TlsParseError("ServerHello truncated")
    suite = int.from_bytes(body[off:off + 2], "big")
    compression = body[off + 2]
    off += 3  # suite + compression method
    sh = ServerHello(version, random, bytes(session_id), suite, is_hrr=random == HRR_RANDOM,
                     compression=compression)
    for etype, data in _extensions(body, off):
        sh.extensions.append(etype)
        if etype == EXT_SUPPORTED_VERSIONS and len(data) >= 2:
            sh.version = int.from_bytes(data[0:2], "big")
        elif etype == EXT_ALPN:
            names = _alpn_list(data)
            sh.alpn = names[0] if names else None
        elif etype == EXT_EXTENDED_MASTER_SECRET:
            sh.ems = True
        elif etype == EXT_ENCRYPT_THEN_MAC:
            sh.etm = True
        elif etype == EXT_SESSION_TICKET:
            sh.ticket_ack = True
        elif etype == EXT_PRE_SHARED_KEY:
            sh.psk = True
    return sh


def parse_encrypted_extensions_alpn(body: bytes) -> str | None:
    """ALPN from a TLS 1.3 EncryptedExtensions message."""
    for etype, data in _extensions(body, 0):
        if etype == EXT_ALPN:
            names = _alpn_list(data)
            return names[0] if names else None
    return None


def parse_new_session_ticket_12(body: bytes) -> bytes:
    """The ticket of a TLS 1.2 NewSessionTicket (lifetime hint(4) + ticket<2>)."""
    ticket, _ = _vec(body, 4, 2)
    return bytes(ticket)


def parse_rsa_client_key_exchange(body: bytes, version: int) -> bytes:
    """The encrypted pre-master secret of an RSA ClientKeyExchange (SSL 3.0 has no length prefix)."""
    if version == 0x0300:
        return bytes(body)
    enc, _ = _vec(body, 0, 2)
    return bytes(enc)
