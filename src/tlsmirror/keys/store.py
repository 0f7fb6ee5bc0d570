"""Bounded secret store keyed by (label, ident), with age limits taken from packet/arrival time."""

from __future__ import annotations

from collections import OrderedDict

from . import events as kl
from .events import Secret

# TLS 1.3 application secrets: the ones a connection picked up mid-stream can be tried against
_APP13 = (kl.CLIENT_TRAFFIC_SECRET_0, kl.SERVER_TRAFFIC_SECRET_0)


class KeyStore:
    """Secrets waiting for (or already matched to) TLS sessions.

    Bounded in entries (oldest evicted first) and, when ``ttl`` is set, in age: entries older than
    ``ttl`` seconds at :meth:`expire` time are dropped. Both are counted in ``stats``. Pinned secrets
    (key log files given at start) are kept regardless of age, still within ``max_entries``.
    """

    def __init__(self, *, max_entries: int = 1_000_000, ttl: float | None = None) -> None:
        # (label, ident) -> (value, time added; None = before packet time began: set at the next expire)
        self._entries: OrderedDict[tuple[str, bytes], tuple[bytes, float | None]] = OrderedDict()
        self.max_entries = max_entries
        self.ttl = ttl
        self.stats: dict[str, int] = {"added": 0, "duplicates": 0, "evicted": 0, "expired": 0, "matched": 0}
        self._matched: set[tuple[str, bytes]] = set()
        self._undated = False
        self._pinned: dict[tuple[str, bytes], bytes] = {}
        # client randoms with TLS 1.3 application secrets no session has used yet, oldest first
        self._unbound: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries) + len(self._pinned)

    def add(self, secret: Secret, ts: float | None, *, pinned: bool = False) -> None:
        if secret.label in _APP13 and (secret.label, secret.ident) not in self._matched:
            self._unbound[secret.ident] = None
            if len(self._unbound) > self.max_entries:
                self._unbound.popitem(last=False)
        if pinned:
            key = (secret.label, secret.ident)
            self.stats["duplicates" if key in self._pinned else "added"] += 1
            self._pinned[key] = secret.value
            if len(self._pinned) > self.max_entries:
                del self._pinned[next(iter(self._pinned))]
                self.stats["evicted"] += 1
            return
        if ts is None:
            self._undated = True
        key = (secret.label, secret.ident)
        if key in self._entries:
            self.stats["duplicates"] += 1
            self._entries.move_to_end(key)
        else:
            self.stats["added"] += 1
        self._entries[key] = (secret.value, ts)
        while len(self._entries) > self.max_entries:
            old, _ = self._entries.popitem(last=False)
            self._matched.discard(old)
            if old[0] in _APP13:
                self._unbound.pop(old[1], None)
            self.stats["evicted"] += 1

    def get(self, label: str, ident: bytes) -> bytes | None:
        hit = self._entries.get((label, ident))
        if hit is None:
            value = self._pinned.get((label, ident))
            if value is None:
                return None
        else:
            value = hit[0]
        if (label, ident) not in self._matched:
            self._matched.add((label, ident))
            self.stats["matched"] += 1
            if label in _APP13:
                self._unbound.pop(ident, None)
        return value

    def unbound13(self, limit: int) -> list[bytes] | None:
        """Client randoms whose TLS 1.3 application secrets no session has used yet (the newest first),
        or None when there are more than ``limit`` of them (too many to try)."""
        unbound = self._unbound
        if len(unbound) > limit:
            return None
        return [cr for cr in reversed(unbound)
                if self.has(_APP13[0], cr) or self.has(_APP13[1], cr)]

    def peek(self, label: str, ident: bytes) -> bytes | None:
        """A secret, if known, without counting it as matched (a trial that may not use it)."""
        hit = self._entries.get((label, ident))
        return self._pinned.get((label, ident)) if hit is None else hit[0]

    def stamp(self, label: str, ident: bytes) -> float | None:
        """When a secret was added (its time as given to :meth:`add`); None when unknown or pinned."""
        hit = self._entries.get((label, ident))
        return None if hit is None else hit[1]

    def has(self, label: str, ident: bytes) -> bool:
        """Is a secret known (without counting it as matched)?"""
        return (label, ident) in self._entries or (label, ident) in self._pinned

    def expire(self, now: float) -> int:
        """Drop entries older than ``ttl``; returns how many were dropped."""
        if self.ttl is None:
            return 0
        entries = self._entries
        if self._undated:
            # Entries added before packet time began are dated now (they sit at the front).
            for key, (value, ts) in list(entries.items()):
                if ts is not None:
                    break
                entries[key] = (value, now)
            self._undated = False
        limit = now - self.ttl
        dropped = 0
        while entries:
            key, (_, ts) = next(iter(entries.items()))
            if ts is not None and ts >= limit:
                break
            self._entries.popitem(last=False)
            self._matched.discard(key)
            if key[0] in _APP13:
                self._unbound.pop(key[1], None)
            dropped += 1
        self.stats["expired"] += dropped
        return dropped
