"""Two sensors' fabric links against a real redis-server: secrets and handshake facts cross, own ones are
ignored, bad entries are counted, and a Redis that goes away or hangs costs errors and a resynchronisation,
never a secret."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.redis import RedisServer
from tlsmirror.keys.events import CLIENT_RANDOM, Secret
from tlsmirror.shell.fabric.client import Fabric
from tlsmirror.shell.fabric.connect import FabricSettings
from tlsmirror.shell.fabric.entries import (
    CHANNEL,
    FACTS,
    SENSOR_PREFIX,
    encode_message,
    facts_key,
    facts_line,
    flow_key,
    secret_key,
    secret_line,
)
from tlsmirror.tls.events import HandshakeFacts


def _secrets(n: int) -> list[Secret]:
    return [Secret(CLIENT_RANDOM, os.urandom(32), os.urandom(48)) for _ in range(n)]


def _facts(n: int, port: int = 40000, ts: float = 1000.0) -> list[HandshakeFacts]:
    return [HandshakeFacts(bytes([10, 0, 0, 1]), port + i, bytes([10, 0, 0, 2]), 443, os.urandom(32), os.urandom(32),
                           0x0303 if i % 2 else 0x0304, 0xC02F if i % 2 else 0x1301, True, False, None, ts + i)
            for i in range(n)]


class Sink:
    def __init__(self) -> None:
        self.got: list[Secret] = []
        self.facts: list[HandshakeFacts] = []
        self.lock = threading.Lock()

    def __call__(self, secrets: list[Secret]) -> None:
        with self.lock:
            self.got.extend(secrets)

    def take_facts(self, facts: list[HandshakeFacts]) -> None:
        with self.lock:
            self.facts.extend(facts)

    def keys(self) -> set[bytes]:
        with self.lock:
            return {s.ident for s in self.got}


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fabrics(redis_server: RedisServer) -> Iterator[Callable[..., tuple[Fabric, Sink]]]:
    made: list[Fabric] = []

    def make(name: str, *, ttl: float = 60.0, timeout: float = 1.0, start: bool = True,
             password: str | None = None, facts: bool = False) -> tuple[Fabric, Sink]:
        sink = Sink()
        f = Fabric(FabricSettings(url=redis_server.url, sensor_id=name, key_ttl=ttl, timeout=timeout,
                                  password=password), sink, deliver_facts=sink.take_facts if facts else None,
                   log_every=0)
        made.append(f)
        if start:
            f.start(5.0)
        return f, sink

    yield make
    for f in made:
        f.stop(2.0)


def test_secrets_cross_to_the_other_sensor_only_and_sit_in_redis_with_their_ttl(
        redis_server: RedisServer, fabrics: Callable[..., tuple[Fabric, Sink]]) -> None:
    a, got_a = fabrics("sensor-a", ttl=120.0)
    b, got_b = fabrics("sensor-b")
    assert a.loaded and b.loaded and a.connected and b.connected
    sent = _secrets(700)  # more than one batch
    a.publish(sent)
    _wait(lambda: len(got_b.got) == 700, 20, "sensor b to receive 700 secrets")
    assert got_b.keys() == {s.ident for s in sent} and set(got_b.got) == set(sent)
    time.sleep(0.3)
    assert got_a.got == []  # its own publications are ignored
    r = redis_server.client()
    assert r.get(secret_key(sent[0])) == secret_line(sent[0]).encode()
    assert 110 <= r.ttl(secret_key(sent[0])) <= 120
    assert r.exists(SENSOR_PREFIX + "sensor-a") and r.exists(SENSOR_PREFIX + "sensor-b")
    sa, sb = a.snapshot(), b.snapshot()
    assert sa["secrets_out"] == 700 and sa["secrets_in"] == 0 and sa["errors"] == 0 and sa["connected"] == 1
    assert sb["secrets_in"] == 700 and sb["secrets_out"] == 0
    b.publish(sent[:5])  # known already everywhere: written again, delivered nowhere twice
    time.sleep(0.5)
    assert len(got_b.got) == 700 and got_a.got == []
    a.stop()
    assert not r.exists(SENSOR_PREFIX + "sensor-a")  # the presence entry is withdrawn


def test_the_snapshot_is_loaded_before_start_returns_and_bad_entries_are_counted(
        redis_server: RedisServer, fabrics: Callable[..., tuple[Fabric, Sink]]) -> None:
    old = _secrets(2500)  # several SCAN pages
    r = redis_server.client()
    pipe = r.pipeline()
    for s in old:
        pipe.set(secret_key(s), secret_line(s), ex=60)
    other = _secrets(1)[0]
    pipe.set(secret_key(old[0]).replace(old[0].ident.hex(), other.ident.hex()), secret_line(old[1]))  # mismatch
    pipe.set("tlsmirror:secret:CLIENT_RANDOM:00", "not a key log line")
    pipe.set("unrelated", "x")
    pipe.execute()
    b, got_b = fabrics("sensor-b")
    assert b.loaded
    assert got_b.keys() == {s.ident for s in old}  # all there when start() returned
    st = b.snapshot()
    assert st["bad_entries"] == 2 and st["snapshot_entries"] == 2500 and st["secrets_in"] == 2500
    r.publish(CHANNEL, b"garbage")
    r.publish(CHANNEL, encode_message("secrets", "sensor-x", ["NOT A LINE", secret_line(other)]))
    r.publish(CHANNEL, encode_message("facts", "sensor-x", ["planned"]))  # a later kind: ignored
    _wait(lambda: other.ident in got_b.keys() | set(), 10, "the good line of the message")
    assert b.snapshot()["bad_entries"] == 4


def test_redis_down_at_start_then_up_publishes_what_was_queued(
        redis_server: RedisServer, fabrics: Callable[..., tuple[Fabric, Sink]]) -> None:
    redis_server.stop()
    a, _ = fabrics("sensor-a", start=False)
    early = _secrets(10)
    a.publish(early)
    t0 = time.monotonic()
    assert a.start(5.0) is False  # refused at once: no need to wait the whole timeout
    assert time.monotonic() - t0 < 3.0
    assert a.snapshot()["errors"] >= 1 and a.snapshot()["connected"] == 0
    redis_server.start()
    r = redis_server.client()
    _wait(lambda: all(r.exists(secret_key(s)) for s in early), 20, "the queued secrets in Redis")
    assert a.snapshot()["connected"] == 1 and a.snapshot()["secrets_out"] == 10


def test_redis_restarted_empty_meanwhile_resynchronises_both_ways(
        redis_server: RedisServer, fabrics: Callable[..., tuple[Fabric, Sink]],
        caplog: pytest.LogCaptureFixture) -> None:
    a, _ = fabrics("sensor-a")
    b, got_b = fabrics("sensor-b")
    before = _secrets(20)
    a.publish(before)
    _wait(lambda: len(got_b.got) == 20, 10, "the first secrets")
    with caplog.at_level(logging.WARNING, logger="tlsmirror.fabric"):
        redis_server.stop()  # no persistence: everything in it is lost
        during = _secrets(30)
        a.publish(during)  # while Redis is down
        _wait(lambda: a.snapshot()["errors"] >= 1 and b.snapshot()["errors"] >= 1, 15, "errors counted")
        assert not a.connected and a.snapshot()["pending"] >= 1
        time.sleep(1.0)
        redis_server.start()
        _wait(lambda: a.snapshot()["reconnects"] >= 1 and b.snapshot()["reconnects"] >= 1, 30, "reconnections")
        _wait(lambda: len(got_b.got) == 50, 20, "the secrets published while Redis was down")
    r = redis_server.client()
    assert all(r.exists(secret_key(s)) for s in before + during)  # written again after the restart
    assert len(got_b.got) == len(set(got_b.got)) == 50
    text = caplog.text
    assert "reconnecting" in text
    assert not any(s.value.hex() in text for s in before + during)


def test_a_hung_redis_counts_errors_and_the_link_comes_back(
        redis_server: RedisServer, fabrics: Callable[..., tuple[Fabric, Sink]]) -> None:
    a, _ = fabrics("sensor-a", timeout=0.5)
    _b, got_b = fabrics("sensor-b", timeout=0.5)
    redis_server.pause()
    try:
        a.publish(_secrets(3))
        _wait(lambda: a.snapshot()["errors"] >= 1, 20, "a timeout counted")
    finally:
        redis_server.resume()
    _wait(lambda: len(got_b.got) == 3, 40, "the secrets after Redis answers again")
    _wait(lambda: a.connected and a.snapshot()["pending"] == 0, 40, "sensor a connected again, queue empty")
    assert len(got_b.got) == 3  # the batch written twice (timed out, then again) is delivered once


def test_password_from_settings_and_a_wrong_one_is_an_error_without_the_password(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "redis", password="pw-7f3a-secret").start()
    try:
        sink = Sink()
        good = Fabric(FabricSettings(url=server.url, sensor_id="a", password="pw-7f3a-secret", timeout=1.0), sink)
        bad = Fabric(FabricSettings(url=server.url, sensor_id="b", password="wrong-pw-91", timeout=1.0), sink,
                     log_every=0)
        with caplog.at_level(logging.WARNING, logger="tlsmirror.fabric"):
            assert good.start(5.0) and not bad.start(5.0)
            assert bad.snapshot()["errors"] >= 1
        good.stop()
        bad.stop()
        assert "wrong-pw-91" not in caplog.text and "pw-7f3a-secret" not in caplog.text
        assert "connection" in caplog.text
        assert "password=" not in repr(good.settings)
    finally:
        server.stop()


def test_handshake_facts_cross_with_their_index_entries_and_ttl(
        redis_server: RedisServer, fabrics: Callable[..., tuple[Fabric, Sink]]) -> None:
    a, got_a = fabrics("sensor-a", ttl=120.0, facts=True)
    b, got_b = fabrics("sensor-b", facts=True)
    old, _ = fabrics("sensor-v1")  # a sensor that takes no facts: ignores them, counts nothing
    facts = _facts(600)  # more than one batch
    secrets = _secrets(3)
    a.publish_facts(facts)
    a.publish(secrets)
    _wait(lambda: len(got_b.facts) == 600 and len(got_b.got) == 3, 20, "sensor b to receive the facts")
    assert set(got_b.facts) == set(facts) and got_b.got == secrets
    time.sleep(0.3)
    assert got_a.facts == [] and got_a.got == []  # its own publications are ignored
    r = redis_server.client()
    f = facts[0]
    assert r.get(facts_key(f)) == facts_line(f).encode()
    assert r.get(flow_key(f)) == f.client_random.hex().encode()
    assert 110 <= r.ttl(facts_key(f)) <= 120 and 110 <= r.ttl(flow_key(f)) <= 120
    sa, sb = a.snapshot(), b.snapshot()
    assert (sa["facts_out"], sa["secrets_out"], sa["facts_in"]) == (600, 3, 0)
    assert (sb["facts_in"], sb["facts_out"], sb["bad_entries"]) == (600, 0, 0)
    assert old.snapshot()["bad_entries"] == 0 and old.snapshot()["facts_in"] == 0
    b.publish_facts(facts[:5])  # known already everywhere: delivered nowhere twice
    time.sleep(0.5)
    assert len(got_b.facts) == 600 and got_a.facts == []
    r.publish(CHANNEL, encode_message(FACTS, "sensor-x", ["{not json", facts_line(_facts(1, port=50000)[0])]))
    _wait(lambda: len(got_b.facts) == 601, 10, "the good line of the message")
    assert b.snapshot()["bad_entries"] == 1 and old.snapshot()["bad_entries"] == 0


def test_a_standby_loads_the_facts_before_start_returns_newest_connection_of_a_4_tuple_last(
        redis_server: RedisServer, fabrics: Callable[..., tuple[Fabric, Sink]]) -> None:
    a, _ = fabrics("sensor-a", facts=True)
    facts = _facts(1500)  # several SCAN pages
    # the same 4-tuple again, a newer connection (its ts says it is older: the index entry decides)
    again = HandshakeFacts(facts[7].client_addr, facts[7].client_port, facts[7].server_addr, facts[7].server_port,
                           os.urandom(32), os.urandom(32), 0x0303, 0xC02F, True, False, None, 1.0)
    a.publish_facts(facts)
    a.publish_facts([again])
    r = redis_server.client()
    _wait(lambda: a.snapshot()["facts_out"] == 1501, 20, "the facts in Redis")
    assert r.get(flow_key(again)) == again.client_random.hex().encode()
    pipe = r.pipeline()
    pipe.set("tlsmirror:facts:" + "00" * 32, facts_line(facts[0]))  # key of another client random
    pipe.set("tlsmirror:facts:" + "11" * 32, "{}")
    pipe.set("tlsmirror:flow:junk", "zz")  # an index entry that names nothing: harmless
    pipe.execute()
    a.stop()
    b, got_b = fabrics("sensor-b", facts=True)
    assert b.loaded
    assert len(got_b.facts) == 1501 and set(got_b.facts) == set(facts) | {again}  # there when start() returned
    order = {f.client_random: i for i, f in enumerate(got_b.facts)}
    assert order[again.client_random] > order[facts[7].client_random]
    st = b.snapshot()
    assert st["bad_entries"] == 2 and st["snapshot_facts"] == 1501 and st["facts_in"] == 1501


def test_facts_queued_while_redis_is_down_are_published_when_it_is_back(
        redis_server: RedisServer, fabrics: Callable[..., tuple[Fabric, Sink]]) -> None:
    a, _ = fabrics("sensor-a", facts=True)
    _b, got_b = fabrics("sensor-b", facts=True)
    before = _facts(4)
    a.publish_facts(before)
    _wait(lambda: len(got_b.facts) == 4, 10, "the first facts")
    redis_server.stop()
    during = _facts(6, port=41000)
    a.publish_facts(during)
    _wait(lambda: a.snapshot()["errors"] >= 1, 15, "errors counted")
    redis_server.start()
    _wait(lambda: len(got_b.facts) == 10, 30, "the facts published while Redis was down")
    r = redis_server.client()
    assert all(r.exists(facts_key(f)) and r.exists(flow_key(f)) for f in before + during)  # written again
