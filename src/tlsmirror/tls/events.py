"""What the tls stage emits.

Directions here are TLS roles: 0 = from the TLS client (the ClientHello sender), 1 = from the server.
Written-out slotted classes, treated as immutable (not ``@dataclass``: see ``http.events``); the ones once
``frozen`` keep their value ``__hash__``.
"""

from __future__ import annotations

from typing import Any

from ..tcp.events import Flow

# Outcomes of a TLS connection, worst last; a connection reports the worst thing that happened to it.
DECRYPTED = "decrypted"
GAP = "gap"
NO_HANDSHAKE = "no_handshake"
NO_KEY = "no_key"
UNSUPPORTED = "unsupported"
DECRYPT_FAILED = "decrypt_failed"
OUTCOMES = (DECRYPTED, GAP, NO_HANDSHAKE, NO_KEY, UNSUPPORTED, DECRYPT_FAILED)

# How a connection's wait for its keys ended (``TlsOutcome.held``; None: it never waited).
UNLOCKED = "unlocked"  # the keys came: everything held was decrypted
EXPIRED = "expired"  # some of it was given up: no key within the key wait (or before the input ended)
EVICTED = "evicted"  # some of it was given up to stay within a hold budget
HOLD_OUTCOMES = (UNLOCKED, EXPIRED, EVICTED)


class TlsHandshake:
    """Facts known once the ServerHello is parsed (ALPN may be updated later for TLS 1.3)."""

    __slots__ = ("alpn", "client_dir", "flow", "resumed", "sni", "suite", "ts", "version")

    flow: Flow
    ts: float
    client_dir: int  # the tcp direction that carries the TLS client's bytes
    version: str  # "TLS1.2", "TLS1.3", ...
    suite: str
    sni: str | None
    alpn: str | None
    resumed: bool

    def __init__(self, flow: Flow, ts: float, client_dir: int, version: str, suite: str, sni: str | None,
                 alpn: str | None, resumed: bool) -> None:
        self.flow = flow
        self.ts = ts
        self.client_dir = client_dir
        self.version = version
        self.suite = suite
        self.sni = sni
        self.alpn = alpn
        self.resumed = resumed

    def __repr__(self) -> str:
        return (f"TlsHandshake(flow={self.flow!r}, ts={self.ts!r}, client_dir={self.client_dir!r}, "
                f"version={self.version!r}, suite={self.suite!r}, sni={self.sni!r}, alpn={self.alpn!r}, "
                f"resumed={self.resumed!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not TlsHandshake:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[TlsHandshake], tuple[Any, ...]]:
        return TlsHandshake, (self.flow, self.ts, self.client_dir, self.version, self.suite, self.sni, self.alpn,
                              self.resumed)


class TlsPlaintext:
    """Decrypted application data (built per record: not frozen, see frames.events.TcpSegment)."""

    __slots__ = ("data", "direction", "flow", "ts")

    flow: Flow
    direction: int
    ts: float
    data: bytes

    # written out: mypyc compiles it (a generated __init__ stays interpreted): 5x cheaper per event
    def __init__(self, flow: Flow, direction: int, ts: float, data: bytes) -> None:
        self.flow = flow
        self.direction = direction
        self.ts = ts
        self.data = data

    def __repr__(self) -> str:
        return f"TlsPlaintext(flow={self.flow!r}, direction={self.direction!r}, ts={self.ts!r}, data={self.data!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not TlsPlaintext:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __reduce__(self) -> tuple[type[TlsPlaintext], tuple[Any, ...]]:
        return TlsPlaintext, (self.flow, self.direction, self.ts, self.data)


class TlsGap:
    """Plaintext of one direction was lost (TCP gap, dropped while waiting for a key, bad record)."""

    __slots__ = ("direction", "flow", "size", "ts")

    flow: Flow
    direction: int
    ts: float
    size: int  # ciphertext bytes lost; plaintext size is close to it

    def __init__(self, flow: Flow, direction: int, ts: float, size: int) -> None:
        self.flow = flow
        self.direction = direction
        self.ts = ts
        self.size = size

    def __repr__(self) -> str:
        return f"TlsGap(flow={self.flow!r}, direction={self.direction!r}, ts={self.ts!r}, size={self.size!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not TlsGap:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[TlsGap], tuple[Any, ...]]:
        return TlsGap, (self.flow, self.direction, self.ts, self.size)


class TlsOutcome:
    """The last word on one TLS connection, emitted when its flow closes."""

    __slots__ = ("alpn", "client_dir", "flow", "held", "held_dropped_bytes", "key_lag", "late_key", "outcome",
                 "picked_up", "reason", "records_decrypted", "records_failed", "resumed", "sni", "suite", "ts",
                 "version")

    flow: Flow
    ts: float
    client_dir: int
    outcome: str
    reason: str
    version: str | None
    suite: str | None
    sni: str | None
    alpn: str | None
    resumed: bool
    late_key: bool  # secrets arrived after encrypted records did, and the held records were used
    records_decrypted: int
    records_failed: int
    held_dropped_bytes: int
    held: str | None  # how its wait for keys ended (HOLD_OUTCOMES), None when it never waited
    key_lag: float | None  # seconds from the ClientHello to the secret that unlocked it (None: unknown)
    picked_up: bool  # decrypted from mid-stream: its handshake was not seen (see HandshakeFacts)

    def __init__(self, flow: Flow, ts: float, client_dir: int, outcome: str, reason: str, version: str | None,
                 suite: str | None, sni: str | None, alpn: str | None, resumed: bool, late_key: bool,
                 records_decrypted: int, records_failed: int, held_dropped_bytes: int, held: str | None = None,
                 key_lag: float | None = None, picked_up: bool = False) -> None:
        self.flow = flow
        self.ts = ts
        self.client_dir = client_dir
        self.outcome = outcome
        self.reason = reason
        self.version = version
        self.suite = suite
        self.sni = sni
        self.alpn = alpn
        self.resumed = resumed
        self.late_key = late_key
        self.records_decrypted = records_decrypted
        self.records_failed = records_failed
        self.held_dropped_bytes = held_dropped_bytes
        self.held = held
        self.key_lag = key_lag
        self.picked_up = picked_up

    def __repr__(self) -> str:
        return (f"TlsOutcome(flow={self.flow!r}, ts={self.ts!r}, client_dir={self.client_dir!r}, "
                f"outcome={self.outcome!r}, reason={self.reason!r}, version={self.version!r}, suite={self.suite!r}, "
                f"sni={self.sni!r}, alpn={self.alpn!r}, resumed={self.resumed!r}, late_key={self.late_key!r}, "
                f"records_decrypted={self.records_decrypted!r}, records_failed={self.records_failed!r}, "
                f"held_dropped_bytes={self.held_dropped_bytes!r}, held={self.held!r}, key_lag={self.key_lag!r}, "
                f"picked_up={self.picked_up!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not TlsOutcome:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[TlsOutcome], tuple[Any, ...]]:
        return TlsOutcome, (self.flow, self.ts, self.client_dir, self.outcome, self.reason, self.version, self.suite,
                            self.sni, self.alpn, self.resumed, self.late_key, self.records_decrypted,
                            self.records_failed, self.held_dropped_bytes, self.held, self.key_lag, self.picked_up)


class HandshakeFacts:
    """What a sensor that saw a connection's handshake knows of it, besides secrets: enough for a sensor
    that did not see it to decrypt the connection from mid-stream with the key log's secrets.

    Emitted by the tls stage once a ServerHello follows a ClientHello (TLS 1.2 needs all of it to derive
    the key block from the master secret; TLS 1.3 uses the 4-tuple and the suite), and accepted by the
    engine (``Engine.add_facts``), keyed by the 4-tuple and by the client random. No secret in here.
    Addresses are raw (4 or 16 bytes); ``version`` and ``suite`` are wire codes.
    """

    __slots__ = ("alpn", "client_addr", "client_port", "client_random", "encrypt_then_mac", "extended_master_secret",
                 "server_addr", "server_port", "server_random", "sni", "suite", "ts", "version")

    client_addr: bytes
    client_port: int
    server_addr: bytes
    server_port: int
    client_random: bytes
    server_random: bytes
    version: int  # 0x0303 TLS 1.2, 0x0304 TLS 1.3, ...
    suite: int  # the IANA cipher suite code
    extended_master_secret: bool
    encrypt_then_mac: bool
    alpn: str | None
    ts: float  # packet time of the ServerHello
    sni: str | None  # the ClientHello's server name (a picked-up connection's ``tls.sni``)

    def __init__(self, client_addr: bytes, client_port: int, server_addr: bytes, server_port: int, client_random: bytes,
                 server_random: bytes, version: int, suite: int, extended_master_secret: bool, encrypt_then_mac: bool,
                 alpn: str | None = None, ts: float = 0.0, sni: str | None = None) -> None:
        self.client_addr = client_addr
        self.client_port = client_port
        self.server_addr = server_addr
        self.server_port = server_port
        self.client_random = client_random
        self.server_random = server_random
        self.version = version
        self.suite = suite
        self.extended_master_secret = extended_master_secret
        self.encrypt_then_mac = encrypt_then_mac
        self.alpn = alpn
        self.ts = ts
        self.sni = sni

    @property
    def four_tuple(self) -> tuple[bytes, int, bytes, int]:
        return (self.client_addr, self.client_port, self.server_addr, self.server_port)

    def __repr__(self) -> str:
        return (f"HandshakeFacts(client_addr={self.client_addr!r}, client_port={self.client_port!r}, "
                f"server_addr={self.server_addr!r}, server_port={self.server_port!r}, "
                f"client_random={self.client_random!r}, server_random={self.server_random!r}, "
                f"version={self.version!r}, suite={self.suite!r}, "
                f"extended_master_secret={self.extended_master_secret!r}, encrypt_then_mac={self.encrypt_then_mac!r}, "
                f"alpn={self.alpn!r}, ts={self.ts!r}, sni={self.sni!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not HandshakeFacts:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[HandshakeFacts], tuple[Any, ...]]:
        return HandshakeFacts, (self.client_addr, self.client_port, self.server_addr, self.server_port,
                                self.client_random, self.server_random, self.version, self.suite,
                                self.extended_master_secret, self.encrypt_then_mac, self.alpn, self.ts, self.sni)


class ResumptionState:
    """A resumable TLS 1.2 (1.1, 1.0) session seen here: a session id or ticket -> the master secret, for a
    sensor that sees the abbreviated handshake resuming it but not the full one (and has no key log line
    for the resumed connection).

    Emitted by the tls stage (only when ``TlsContext.share_resumption`` is set) once a full handshake with a
    session id, or a NewSessionTicket, meets its master secret; accepted by ``Engine.add_resumption``.
    ``kind`` is "id" or "ticket"; ``digest`` is the SHA-256 of the session id or ticket (never the ticket
    itself). It holds a secret: never logged. ``version`` and ``suite`` are the wire codes of the session
    (informative: a resumed handshake's own ServerHello says which it uses).
    """

    __slots__ = ("digest", "extended_master_secret", "kind", "master", "suite", "ts", "version")

    def __init__(self, kind: str, digest: bytes, master: bytes, version: int, suite: int,
                 extended_master_secret: bool, ts: float = 0.0) -> None:
        self.kind = kind
        self.digest = digest
        self.master = master
        self.version = version
        self.suite = suite
        self.extended_master_secret = extended_master_secret
        self.ts = ts  # packet time it was learnt

    def __repr__(self) -> str:  # no master secret in here
        return (f"ResumptionState(kind={self.kind!r}, digest={self.digest.hex()[:16]}..., "
                f"version=0x{self.version:04x}, suite=0x{self.suite:04x}, "
                f"extended_master_secret={self.extended_master_secret}, ts={self.ts})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not ResumptionState:
            return NotImplemented
        return (self.kind == other.kind and self.digest == other.digest and self.master == other.master
                and self.version == other.version and self.suite == other.suite
                and self.extended_master_secret == other.extended_master_secret and self.ts == other.ts)

    __hash__ = None  # type: ignore[assignment]


TlsEvent = TlsHandshake | TlsPlaintext | TlsGap | TlsOutcome | HandshakeFacts | ResumptionState
