"""Secret events: the only way secrets reach the tls stage."""

from __future__ import annotations

from typing import Any

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


class Secret:
    """One secret for one TLS session.

    ``ident`` is what the label is keyed by: the 32-byte client random for most labels, the
    session id for ``RSA_SESSION``, the first 8 bytes of the encrypted pre-master for ``RSA``.
    ``value`` never appears in repr, logs or errors.
    """

    __slots__ = ("ident", "label", "value")

    label: str
    ident: bytes
    value: bytes

    def __init__(self, label: str, ident: bytes, value: bytes) -> None:
        self.label = label
        self.ident = ident
        self.value = value

    def __repr__(self) -> str:  # never the value
        return f"Secret({self.label}, {self.ident[:4].hex()}...)"

    def __eq__(self, other: object) -> bool:
        if type(other) is not Secret:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[Secret], tuple[Any, ...]]:
        return Secret, (self.label, self.ident, self.value)


class RsaKey:
    """A server's RSA private key for static-RSA key exchange (a cryptography key object)."""

    __slots__ = ("key",)

    key: object

    def __init__(self, key: object) -> None:
        self.key = key

    def __repr__(self) -> str:
        return "RsaKey(<private>)"

    def __eq__(self, other: object) -> bool:
        if type(other) is not RsaKey:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[RsaKey], tuple[Any, ...]]:
        return RsaKey, (self.key,)
