"""State shared by all TLS sessions of one engine: secrets, server keys, resumption cache, budgets."""

from __future__ import annotations

from collections import OrderedDict

from ..keys.events import RsaKey
from ..keys.store import KeyStore


class SessionCache:
    """TLS 1.2 resumption: session id or ticket -> master secret of the session that made it. Bounded."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self.max_entries = max_entries

    def put(self, ident: bytes, master: bytes) -> None:
        self._entries[ident] = master
        self._entries.move_to_end(ident)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, ident: bytes) -> bytes | None:
        return self._entries.get(ident)

    def __len__(self) -> int:
        return len(self._entries)


class TlsContext:
    """What sessions consult for keys, and the global budget for ciphertext held while keys are missing."""

    def __init__(self, store: KeyStore, rsa_keys: list[RsaKey] | None = None, *,
                 max_hold_bytes_per_session: int = 4 << 20, max_hold_bytes_total: int = 256 << 20,
                 cache_entries: int = 100_000) -> None:
        self.store = store
        self.rsa_keys = list(rsa_keys or ())
        self.cache = SessionCache(cache_entries)
        self.max_hold_bytes_per_session = max_hold_bytes_per_session
        self.max_hold_bytes_total = max_hold_bytes_total
        self.held_bytes = 0  # ciphertext held by all sessions now
