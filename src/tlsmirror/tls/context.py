"""State shared by all TLS sessions of one engine: secrets, server keys, resumption cache, budgets."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from ..keys.events import RsaKey
from ..keys.store import KeyStore
from .events import HandshakeFacts, ResumptionState

FourTuple = tuple[bytes, int, bytes, int]  # client address, client port, server address, server port

ID_PREFIX = b"id:"  # resumption by session id
TICKET_PREFIX = b"tk:"  # resumption by session ticket
_KIND_PREFIX = {"id": ID_PREFIX, "ticket": TICKET_PREFIX}


def resumption_key(ident: bytes) -> bytes:
    """A cache ident (``id:`` or ``tk:`` then the raw session id or ticket) -> its key: the prefix and the
    SHA-256 of the rest. The same key is what a session waits on for a state from another sensor."""
    return ident[:3] + hashlib.sha256(ident[3:]).digest()


def state_key(state: ResumptionState) -> bytes | None:
    """The cache key of a resumption state (None: a kind this version does not know)."""
    prefix = _KIND_PREFIX.get(state.kind)
    return None if prefix is None or len(state.digest) != 32 else prefix + state.digest


class SessionCache:
    """TLS 1.2 resumption: session id or ticket -> master secret of the session that made it.

    Bounded in entries and in age (``ttl`` seconds of packet time, measured from the engine's last
    :meth:`expire`): an F5 sends the secrets of resumed sessions too, so this is a fallback for senders
    that do not, and it must not grow with every connection ever seen. Idents are stored hashed
    (tickets can be kilobytes long): ``id:`` or ``tk:`` and the SHA-256 of the session id or ticket, the
    digest that resumption states from other sensors (:class:`ResumptionState`) carry.
    """

    def __init__(self, max_entries: int = 100_000, ttl: float = 900.0) -> None:
        self._entries: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = 0.0  # packet time of the last expire()

    def put(self, ident: bytes, master: bytes) -> bytes:
        """Store ``ident`` (``id:``/``tk:`` and the raw id or ticket) -> master; returns its key."""
        key = resumption_key(ident)
        self.put_key(key, master)
        return key

    def put_key(self, key: bytes, master: bytes) -> None:
        """Store by key (:func:`resumption_key`, :func:`state_key`)."""
        self._entries[key] = (master, self.clock)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, ident: bytes) -> bytes | None:
        hit = self._entries.get(resumption_key(ident))
        return None if hit is None else hit[0]

    def expire(self, now: float) -> None:
        """Drop entries older than ``ttl`` (packet time)."""
        if now > self.clock:
            self.clock = now
        limit = now - self.ttl
        entries = self._entries
        while entries:
            _, (_, stamp) = next(iter(entries.items()))
            if stamp >= limit:
                break
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class FactsIndex:
    """Handshake facts of connections (seen here or by another sensor), by client random, and the index
    4-tuple -> client random that a connection picked up mid-stream is looked up by.

    Bounded in entries, oldest first; a newer connection on the same 4-tuple replaces the older one.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._by_random: OrderedDict[bytes, HandshakeFacts] = OrderedDict()
        self._by_tuple: dict[FourTuple, bytes] = {}
        self.max_entries = max_entries
        self.added = 0

    def __len__(self) -> int:
        return len(self._by_random)

    def add(self, facts: HandshakeFacts) -> None:
        cr = facts.client_random
        old = self._by_random.pop(cr, None)
        if old is not None and self._by_tuple.get(old.four_tuple) == cr:
            del self._by_tuple[old.four_tuple]
        self._by_random[cr] = facts
        self._by_tuple[facts.four_tuple] = cr
        self.added += 1
        while len(self._by_random) > self.max_entries:
            _, gone = self._by_random.popitem(last=False)
            if self._by_tuple.get(gone.four_tuple) == gone.client_random:
                del self._by_tuple[gone.four_tuple]

    def get(self, client_random: bytes) -> HandshakeFacts | None:
        return self._by_random.get(client_random)

    def for_tuple(self, key: FourTuple) -> HandshakeFacts | None:
        """The facts of the newest connection known on this 4-tuple (client side first)."""
        cr = self._by_tuple.get(key)
        return None if cr is None else self._by_random.get(cr)


class TlsContext:
    """What sessions consult for keys, and the global budget for ciphertext held while keys are missing."""

    def __init__(self, store: KeyStore, rsa_keys: list[RsaKey] | None = None, *,
                 max_hold_bytes_per_session: int = 4 << 20, max_hold_bytes_total: int = 256 << 20,
                 cache_entries: int = 100_000) -> None:
        self.store = store
        self.rsa_keys = list(rsa_keys or ())
        self.cache = SessionCache(cache_entries)
        self.facts = FactsIndex(cache_entries)  # handshake facts, for connections picked up mid-stream
        self.picked_up = 0  # connections decrypted from mid-stream (their handshake not seen)
        # emit ResumptionState events for the resumable sessions seen, and wait for other sensors' states
        # (Engine.add_resumption): set when the secrets are shared between sensors (keys.fabric)
        self.share_resumption = False
        self.max_hold_bytes_per_session = max_hold_bytes_per_session
        self.max_hold_bytes_total = max_hold_bytes_total
        self.held_bytes = 0  # ciphertext held (and plaintext queued behind it) by all sessions now
        # what the hold budgets count: held_bytes plus the per-record and per-ended-session overheads
        # (tls.session.HELD_RECORD_OVERHEAD, ENDED_SESSION_OVERHEAD); the engine keeps it within
        # max_hold_bytes_total by giving up the oldest sessions' records
        self.charge = 0
        self.evicted_sessions = 0  # sessions whose held records the total budget gave up
        self.evicted_bytes = 0  # the ciphertext bytes they lost
