"""The key store: bounded in entries and in age, with key log files loaded before packet time begins."""

from __future__ import annotations

from tlsmirror.keys.events import CLIENT_RANDOM, Secret
from tlsmirror.keys.store import KeyStore


def _secret(i: int) -> Secret:
    return Secret(CLIENT_RANDOM, i.to_bytes(32, "big"), bytes(48))


def test_entries_are_bounded_oldest_first() -> None:
    store = KeyStore(max_entries=3)
    for i in range(5):
        store.add(_secret(i), float(i))
    assert len(store) == 3 and store.stats["evicted"] == 2
    assert store.get(CLIENT_RANDOM, (0).to_bytes(32, "big")) is None
    assert store.get(CLIENT_RANDOM, (4).to_bytes(32, "big")) == bytes(48)


def test_ttl_counts_from_arrival() -> None:
    store = KeyStore(ttl=10.0)
    store.add(_secret(1), 100.0)
    store.add(_secret(2), 105.0)
    assert store.expire(109.0) == 0
    assert store.expire(112.0) == 1
    assert store.get(CLIENT_RANDOM, (1).to_bytes(32, "big")) is None
    assert store.has(CLIENT_RANDOM, (2).to_bytes(32, "big"))
    assert store.expire(116.0) == 1 and len(store) == 0 and store.stats["expired"] == 2


def test_undated_secrets_start_their_ttl_at_the_first_expiry() -> None:
    """Key log files are loaded before any packet: they must not expire at the first packet."""
    store = KeyStore(ttl=10.0)
    store.add(_secret(1), None)
    store.add(_secret(2), None)
    assert store.expire(1_700_000_000.0) == 0
    assert len(store) == 2
    store.add(_secret(3), 1_700_000_005.0)
    assert store.expire(1_700_000_011.0) == 2
    assert len(store) == 1


def test_duplicates_are_counted_not_stored_twice() -> None:
    store = KeyStore()
    store.add(_secret(1), 1.0)
    store.add(_secret(1), 2.0)
    assert len(store) == 1 and store.stats["duplicates"] == 1


def test_pinned_secrets_do_not_age() -> None:
    store = KeyStore(ttl=10.0)
    store.add(_secret(1), None, pinned=True)
    store.add(_secret(2), 100.0)
    assert store.expire(1000.0) == 1
    assert store.get(CLIENT_RANDOM, (1).to_bytes(32, "big")) == bytes(48)
    assert store.has(CLIENT_RANDOM, (1).to_bytes(32, "big")) and len(store) == 1


def test_resumption_cache_is_bounded_in_age_and_entries() -> None:
    from tlsmirror.tls.context import SessionCache

    cache = SessionCache(max_entries=2, ttl=100.0)
    cache.expire(1000.0)
    cache.put(b"tk:" + b"t" * 2000, b"m1")  # a long ticket is stored by its digest
    assert cache.get(b"tk:" + b"t" * 2000) == b"m1"
    cache.expire(1050.0)
    cache.put(b"id:2", b"m2")
    cache.put(b"id:3", b"m3")
    assert len(cache) == 2 and cache.get(b"tk:" + b"t" * 2000) is None  # oldest evicted by count
    cache.expire(1151.0)
    assert len(cache) == 0  # both dated 1050: older than 100 s at 1151
