"""Secret events: the only way secrets reach the tls stage."""

from __future__ import annotations

from dataclasses import dataclass, field

# NSS key log labels and what their first field identifies.
CLIENT_RANDOM = "CLIENT_RANDOM"  # client_random -> TLS <= 1.2 master secret
PMS_CLIENT_RANDOM = "PMS_CLIENT_RANDOM"  # client_random -> pre-master secret
RSA = "RSA"  # first 8 bytes of the encrypted pre-master -> pre-master secret
RSA_SESSION = "RSA_SESSION"  # "RSA Session-ID:<sid> Master-Key:<ms>": session id -> master secret
CLIENT_HANDSHAKE_TRAFFIC_SECRET = "CLIENT_HANDSHAKE_TRAFFIC_SECRET"
SERVER_HANDSHAKE_TRAFFIC_SECRET = "SERVER_HANDSHAKE_TRAFFIC_SECRET"
CLIENT_TRAFFIC_SECRET_0 = "CLIENT_TRAFFIC_SECRET_0"
SERVER_TRAFFIC_SECRET_0 = "SERVER_TRAFFIC_SECRET_0"
CLIENT_EARLY_TRAFFIC_SECRET = "CLIENT_EARLY_TRAFFIC_SECRET"
EARLY_EXPORTER_SECRET = "EARLY_EXPORTER_SECRET"
EXPORTER_SECRET = "EXPORTER_SECRET"

LABELS = frozenset({
    CLIENT_RANDOM, PMS_CLIENT_RANDOM, RSA, RSA_SESSION,
    CLIENT_HANDSHAKE_TRAFFIC_SECRET, SERVER_HANDSHAKE_TRAFFIC_SECRET,
    CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0,
    CLIENT_EARLY_TRAFFIC_SECRET, EARLY_EXPORTER_SECRET, EXPORTER_SECRET,
})


@dataclass(frozen=True, slots=True)
class Secret:
    """One secret for one TLS session.

    ``ident`` is what the label is keyed by: the 32-byte client random for most labels, the
    session id for ``RSA_SESSION``, the first 8 bytes of the encrypted pre-master for ``RSA``.
    ``value`` never appears in repr, logs or errors.
    """

    label: str
    ident: bytes
    value: bytes = field(repr=False)

    def __repr__(self) -> str:  # explicit: dataclass repr of a frozen slotted class is fine, but be sure
        return f"Secret({self.label}, {self.ident[:4].hex()}...)"


@dataclass(frozen=True, slots=True)
class RsaKey:
    """A server's RSA private key for static-RSA key exchange (a cryptography key object)."""

    key: object = field(repr=False)

    def __repr__(self) -> str:
        return "RsaKey(<private>)"


