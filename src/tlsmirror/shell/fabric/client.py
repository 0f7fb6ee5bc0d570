"""The sensor's side of the fabric: publish the secrets and handshake facts it is given, take in the
others', keep going.

A :class:`Fabric` runs an asyncio loop in a thread of the daemon's parent process. It

- writes each secret it is given (key listener, key log files) as an entry with a TTL of
  ``engine.key_ttl`` and publishes it on the channel, in batches; the same for the handshake facts of
  the connections its workers saw (an entry per client random, the 4-tuple index entry), so a sensor
  that takes over decrypts those connections from mid-stream, and for the resumption states they learnt
  (an entry per session id or ticket digest), so it decrypts the abbreviated handshakes resuming them;
- subscribes to the channel and, once subscribed, reads every entry already there (the snapshot), so no
  secret published meanwhile is missed; the daemon reports ready only after that first snapshot (or after
  ``keys.fabric_timeout`` when the fabric cannot be reached);
- hands every secret it has not seen yet to ``deliver`` (the daemon's path to its workers), and every
  connection's facts to ``deliver_facts``, every TLS 1.2 session's resumption state (session id or
  ticket digest -> master secret) to ``deliver_resumption``, ignoring its own publications (by sensor id) and skipping
  and counting entries that do not parse;
- when Redis goes away or stops answering within ``keys.fabric_timeout``: counts the error, logs it
  (rate-limited), keeps what it was given to publish (bounded: the oldest are dropped and counted),
  reconnects with exponential backoff and then resynchronises: the snapshot again, its own recent secrets
  written again (a Redis restarted without persistence has lost them), the queued ones published.

The sensor never waits for the fabric to decrypt: its workers have what they were given already.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from ...keys.events import Secret
from ...tls.events import HandshakeFacts, ResumptionState
from ..config import Config
from ..errors import FabricEntryError
from ..logs import RateLimit, get_logger
from .connect import FabricSettings, make_client
from .entries import (
    CHANNEL,
    FACTS,
    FACTS_PATTERN,
    FLOW_PATTERN,
    RESUME,
    RESUME_PATTERN,
    SECRET_PATTERN,
    SECRETS,
    SENSOR_PREFIX,
    decode_message,
    encode_message,
    facts_key,
    facts_line,
    flow_key,
    parse_entry,
    parse_facts_entry,
    parse_facts_lines,
    parse_resumption_entry,
    parse_resumption_lines,
    parse_secret_lines,
    resumption_key,
    resumption_line,
    secret_key,
    secret_line,
)

T = TypeVar("T")
log = get_logger("fabric")

STATS = ("secrets_out", "secrets_in", "snapshot_entries", "bad_entries", "errors", "reconnects", "dropped",
         "messages_in", "facts_out", "facts_in", "snapshot_facts", "resume_out", "resume_in", "snapshot_resume")
BATCH = 512  # secrets or facts per write (one pipeline: SET each, one PUBLISH per kind)
SCAN_COUNT = 1000
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
BEAT = 5.0  # seconds between presence refreshes (they also find a Redis that stopped answering)
PRESENCE_TTL = 30

# what the fabric carries: a secret, a connection's handshake facts, a TLS 1.2 session's resumption state
Item = Secret | HandshakeFacts | ResumptionState
_OUT = {Secret: ("secrets_out", SECRETS), HandshakeFacts: ("facts_out", FACTS),
        ResumptionState: ("resume_out", RESUME)}


def _seen_key(item: Item) -> int:
    if type(item) is Secret:
        return hash((item.label, item.ident))
    if type(item) is ResumptionState:
        return hash((RESUME, item.kind, item.digest))
    assert type(item) is HandshakeFacts
    return hash((FACTS, item.client_random, item.alpn))  # TLS 1.3: sent again once its ALPN is known


def _entries(item: Item) -> list[tuple[str, str]]:
    """The Redis entries (key, value) of an item: one for a secret, the facts and the 4-tuple's index."""
    if type(item) is Secret:
        return [(secret_key(item), secret_line(item))]
    if type(item) is ResumptionState:
        return [(resumption_key(item), resumption_line(item))]
    assert type(item) is HandshakeFacts
    return [(facts_key(item), facts_line(item)), (flow_key(item), item.client_random.hex())]


class Fabric:
    """One sensor's link to the fabric. :meth:`publish` and :meth:`snapshot` are thread-safe."""

    def __init__(self, settings: FabricSettings, deliver: Callable[[list[Secret]], None], *,
                 deliver_facts: Callable[[list[HandshakeFacts]], None] | None = None,
                 deliver_resumption: Callable[[list[ResumptionState]], None] | None = None,
                 max_pending: int = 100_000, max_seen: int = 200_000, log_every: float = 10.0) -> None:
        self.settings = settings
        self.deliver = deliver
        self.deliver_facts = deliver_facts  # None: facts from the fabric are not read (nor counted)
        self.deliver_resumption = deliver_resumption  # None: nor resumption states
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)
        self.connected = False
        self.max_pending = max_pending
        self.max_seen = max_seen
        self._pending: collections.deque[Item] = collections.deque()
        self._recent: collections.deque[tuple[float, Item]] = collections.deque(maxlen=max_pending)
        # hash of (label, ident) or ("facts", client random) -> when it expires (monotonic): the secrets and
        # facts delivered or published (a hash keeps 200,000 of them in ~20 MB; a collision, about 1e-9 at
        # that size, would only skip one)
        self._seen: dict[int, float] = {}
        self._lock = threading.Lock()
        self._limit = RateLimit(1.0 / log_every if log_every > 0 else 0.0, 1.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._first = threading.Event()  # the first attempt is over: snapshot loaded, or failed
        self.loaded = False

    @classmethod
    def from_config(cls, cfg: Config, deliver: Callable[[list[Secret]], None],
                    deliver_facts: Callable[[list[HandshakeFacts]], None] | None = None,
                    deliver_resumption: Callable[[list[ResumptionState]], None] | None = None) -> Fabric:
        return cls(FabricSettings.from_config(cfg), deliver, deliver_facts=deliver_facts,
                   deliver_resumption=deliver_resumption, max_pending=max(1000, cfg.keys.replay or 0))

    # ------------------------------------------------------------------ any thread
    def start(self, wait: float | None = None) -> bool:
        """Start the loop (once); wait (default ``timeout``) for the first snapshot. True once it was loaded."""
        if self._thread is None:
            # imported here, before the wait: the wait is for Redis (on a loaded host, importing the client
            # library alone took 2.6 s of wall clock, 0.6 s of CPU)
            import redis.asyncio  # noqa: F401

            self._thread = threading.Thread(target=self._thread_main, name="fabric", daemon=True)
            self._thread.start()
        self._first.wait(self.settings.timeout if wait is None else wait)
        return self.loaded

    def publish(self, secrets: list[Secret]) -> None:
        """Queue *secrets* to be written and published (the oldest queued are dropped beyond the bound)."""
        self._queue(secrets)

    def publish_facts(self, facts: list[HandshakeFacts]) -> None:
        """Queue the handshake facts of connections seen here, like :meth:`publish`."""
        self._queue(facts)

    def publish_resumption(self, states: list[ResumptionState]) -> None:
        """Queue the resumption states of sessions seen here, like :meth:`publish`."""
        self._queue(states)

    def _queue(self, items: list[Secret] | list[HandshakeFacts] | list[ResumptionState]) -> None:
        if not items:
            return
        expiry = time.monotonic() + self.settings.key_ttl
        with self._lock:
            for s in items:
                self._seen[_seen_key(s)] = expiry
            self._pending.extend(items)
            over = len(self._pending) - self.max_pending
            for _ in range(max(0, over)):
                self._pending.popleft()
            if over > 0:
                self.stats["dropped"] += over
            self._trim_seen()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(wake.set)
        if over > 0:
            self._warn("queue", "%d secrets or facts not published: the fabric is unreachable and the queue "
                       "is full", over)

    def snapshot(self) -> dict[str, int]:
        """Counters and the ``connected`` gauge (for /metrics)."""
        with self._lock:
            out = dict(self.stats)
            out["pending"] = len(self._pending)
        out["connected"] = int(self.connected)
        return out

    def stop(self, timeout: float = 3.0) -> None:
        """Publish what is queued (within *timeout*), withdraw the presence entry, stop the loop."""
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout + self.settings.timeout)

    # ------------------------------------------------------------------ helpers
    def _trim_seen(self) -> None:
        """Under the lock: forget expired keys, then the oldest, so at most ``max_seen`` are remembered."""
        if len(self._seen) <= self.max_seen:
            return
        now = time.monotonic()
        self._seen = {k: t for k, t in self._seen.items() if t > now}
        extra = len(self._seen) - self.max_seen * 9 // 10
        if extra > 0:
            for k in list(self._seen)[:extra]:
                del self._seen[k]

    def _warn(self, kind: str, msg: str, *args: object) -> None:
        skipped = self._limit.admit(kind)
        if skipped < 0:
            return
        if skipped:
            log.warning("fabric: " + msg + " (%d similar messages suppressed)", *args, skipped)
        else:
            log.warning("fabric: " + msg, *args)

    def _error(self, where: str, exc: BaseException) -> None:
        with self._lock:
            self.stats["errors"] += 1
        text = str(exc) or type(exc).__name__
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            text = f"no answer within {self.settings.timeout:g} s"
        self._warn("error", "%s: %s (%s); decrypting with the secrets held, reconnecting", where, text,
                   self.settings.where)

    def _take_new(self, items: list[Any]) -> list[Any]:
        """The secrets (or facts) not delivered nor published yet (and remember them)."""
        now = time.monotonic()
        expiry = now + self.settings.key_ttl
        new = []
        with self._lock:
            for s in items:
                k = _seen_key(s)
                t = self._seen.get(k)
                if t is not None and t > now:
                    continue
                self._seen[k] = expiry
                new.append(s)
            self._trim_seen()
        return new

    def _give(self, secrets: list[Secret]) -> None:
        self._hand_on(self.deliver, secrets, "secrets_in", "%d secrets")

    def _give_facts(self, facts: list[HandshakeFacts]) -> None:
        self._hand_on(self.deliver_facts, facts, "facts_in", "the facts of %d connections")

    def _give_resumption(self, states: list[ResumptionState]) -> None:
        self._hand_on(self.deliver_resumption, states, "resume_in", "%d resumption states")

    def _hand_on(self, deliver: Callable[[list[T]], object] | None, items: list[T], stat: str, what: str) -> None:
        """What the fabric gave that is new here, counted under *stat*, to the daemon's side (*deliver*)."""
        if deliver is None:
            return
        new = self._take_new(items)
        if not new:
            return
        with self._lock:
            self.stats[stat] += len(new)
        try:
            deliver(new)
        except Exception as exc:  # the daemon's side must not stop the fabric
            self._warn("deliver", f"handing {what} on failed: %s", len(new), exc)

    def _bad(self, n: int, why: str) -> None:
        if n <= 0:
            return
        with self._lock:
            self.stats["bad_entries"] += n
        self._warn("bad", "%d entries skipped: %s", n, why)

    # ------------------------------------------------------------------ the loop (its own thread)
    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            self._first.set()
            self._loop = None
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _with_timeout(self, aw: Any) -> Any:
        return await asyncio.wait_for(aw, self.settings.timeout)

    async def _main(self) -> None:
        backoff = BACKOFF_MIN
        first = True
        while not self._stopping:
            client: Any = None
            pubsub: Any = None
            try:
                client = make_client(self.settings)
                await self._with_timeout(client.ping())
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await self._with_timeout(pubsub.subscribe(CHANNEL))
                self.connected = True
                if first:
                    log.info("fabric: connected to %s as %s", self.settings.where, self.settings.sensor_id)
                else:
                    with self._lock:
                        self.stats["reconnects"] += 1
                    log.warning("fabric: connected again to %s; resynchronising", self.settings.where)
                await self._sync(client, resend=not first)
                if first:
                    self.loaded = True
                    self._first.set()
                first = False
                backoff = BACKOFF_MIN
                await self._serve(client, pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RedisError, OSError, timeouts: the fabric is unusable for now
                self._error("connection", exc)
            finally:
                self.connected = False
                if first:
                    self._first.set()  # the daemon need not wait longer for a fabric that cannot be reached
                for closing in (pubsub, client):
                    if closing is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(closing.aclose(), 1.0)
            if self._stopping:
                break
            assert self._stop is not None
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _sync(self, client: Any, *, resend: bool) -> None:
        """After (re)connecting: write our recent secrets again (when reconnecting), read the snapshot."""
        if resend:
            now = time.monotonic()
            with self._lock:
                recent = [(t - now, s) for t, s in self._recent if t - now >= 1.0]
            for i in range(0, len(recent), BATCH):
                pipe = client.pipeline(transaction=False)
                for left, s in recent[i:i + BATCH]:
                    for key, value in _entries(s):
                        pipe.set(key, value, px=int(left * 1000))
                await self._with_timeout(pipe.execute())
        await self._load_secrets(client)
        if self.deliver_facts is not None:
            await self._load_facts(client)
        if self.deliver_resumption is not None:
            await self._load_resumption(client)

    async def _scan(self, client: Any, pattern: str) -> AsyncIterator[tuple[list[Any], list[Any]]]:
        """(keys, values) of every entry matching *pattern*, a SCAN page at a time."""
        cursor = 0
        while True:
            cursor, keys = await self._with_timeout(client.scan(cursor, match=pattern, count=SCAN_COUNT))
            if keys:
                yield keys, await self._with_timeout(client.mget(keys))
            if not cursor:
                return

    async def _load_facts(self, client: Any) -> None:
        """The facts entries, handed on oldest first; where two connections' facts share a 4-tuple, the
        one its index entry names last (it is the newer connection)."""
        current: set[bytes] = set()
        async for _keys, values in self._scan(client, FLOW_PATTERN):
            for v in values:
                if v is not None:
                    with contextlib.suppress(ValueError, TypeError):
                        current.add(bytes.fromhex(v.decode("ascii") if isinstance(v, bytes) else v))
        found: list[HandshakeFacts] = []
        bad = 0
        async for keys, values in self._scan(client, FACTS_PATTERN):
            bad += _parse_entries(keys, values, parse_facts_entry, found)
        found.sort(key=lambda f: (f.client_random in current, f.ts))
        with self._lock:
            self.stats["snapshot_facts"] += len(found)
        self._bad(bad, "facts entries in the fabric that do not parse or do not match their key")
        for i in range(0, len(found), BATCH * 8):
            self._give_facts(found[i:i + BATCH * 8])

    async def _load_resumption(self, client: Any) -> None:
        async for keys, values in self._scan(client, RESUME_PATTERN):
            found: list[ResumptionState] = []
            bad = _parse_entries(keys, values, parse_resumption_entry, found)
            with self._lock:
                self.stats["snapshot_resume"] += len(found)
            self._bad(bad, "resumption entries in the fabric that do not parse or do not match their key")
            self._give_resumption(found)

    async def _load_secrets(self, client: Any) -> None:
        cursor = 0
        while True:
            cursor, keys = await self._with_timeout(client.scan(cursor, match=SECRET_PATTERN, count=SCAN_COUNT))
            if keys:
                values = await self._with_timeout(client.mget(keys))
                found: list[Secret] = []
                bad = _parse_entries(keys, values, parse_entry, found)
                with self._lock:
                    self.stats["snapshot_entries"] += len(found)
                self._bad(bad, "entries in the fabric that are not key log lines of their key")
                self._give(found)
            if not cursor:
                return

    async def _serve(self, client: Any, pubsub: Any) -> None:
        tasks = [asyncio.ensure_future(self._listen(pubsub)), asyncio.ensure_future(self._pump(client)),
                 asyncio.ensure_future(self._beat(client))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc
        # stopping: publish what is left, withdraw our presence
        with contextlib.suppress(Exception):
            await self._flush(client)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.delete(SENSOR_PREFIX + self.settings.sensor_id), 1.0)

    async def _listen(self, pubsub: Any) -> None:
        while not self._stopping:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None or msg.get("type") != "message":
                continue
            self._on_message(msg["data"])

    def _on_message(self, data: bytes) -> None:
        try:
            m = decode_message(data)
        except FabricEntryError as exc:
            self._bad(1, f"a message on {CHANNEL}: {exc}")
            return
        if m.sender == self.settings.sensor_id:
            return  # our own
        if m.kind == FACTS and self.deliver_facts is not None:
            with self._lock:
                self.stats["messages_in"] += 1
            facts, bad = parse_facts_lines(m.body)
            self._bad(bad, f"lines of a message from {m.sender} are not handshake facts")
            self._give_facts(facts)
            return
        if m.kind == RESUME and self.deliver_resumption is not None:
            with self._lock:
                self.stats["messages_in"] += 1
            states, bad = parse_resumption_lines(m.body)
            self._bad(bad, f"lines of a message from {m.sender} are not resumption states")
            self._give_resumption(states)
            return
        if m.kind != SECRETS:
            return  # a kind this version does not use (docs/fabric.md)
        with self._lock:
            self.stats["messages_in"] += 1
        secrets, bad = parse_secret_lines(m.body)
        self._bad(bad, f"lines of a message from {m.sender} are not key log lines")
        self._give(secrets)

    def _take_batch(self) -> list[Item]:
        with self._lock:
            n = min(BATCH, len(self._pending))
            return [self._pending.popleft() for _ in range(n)]

    async def _write(self, client: Any, batch: list[Item]) -> None:
        ex = max(1, int(self.settings.key_ttl + 0.5))
        lines: dict[str, list[str]] = {SECRETS: [], FACTS: [], RESUME: []}
        pipe = client.pipeline(transaction=False)
        for s in batch:
            entries = _entries(s)
            for key, value in entries:
                pipe.set(key, value, ex=ex)
            lines[_OUT[type(s)][1]].append(entries[0][1])
        for kind, body in lines.items():
            if body:
                pipe.publish(CHANNEL, encode_message(kind, self.settings.sensor_id, body))
        try:
            await self._with_timeout(pipe.execute())
        except BaseException:
            with self._lock:  # back at the front, in order: published after the reconnection
                self._pending.extendleft(reversed(batch))
            raise
        expiry = time.monotonic() + self.settings.key_ttl
        with self._lock:
            for stat, kind in _OUT.values():
                self.stats[stat] += len(lines[kind])
            self._recent.extend((expiry, s) for s in batch)

    async def _pump(self, client: Any) -> None:
        assert self._wake is not None
        while not self._stopping:
            batch = self._take_batch()
            if batch:
                await self._write(client, batch)
                continue
            self._wake.clear()
            if self._pending:
                continue
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    async def _flush(self, client: Any) -> None:
        end = time.monotonic() + self.settings.timeout
        while self._pending and time.monotonic() < end:
            await self._write(client, self._take_batch())

    async def _beat(self, client: Any) -> None:
        """Refresh the presence entry every BEAT seconds; a Redis that does not answer ends the session."""
        assert self._stop is not None
        presence = json.dumps({"sensor": self.settings.sensor_id, "since": int(time.time())})
        key = SENSOR_PREFIX + self.settings.sensor_id
        while not self._stopping:
            await self._with_timeout(client.set(key, presence, ex=PRESENCE_TTL))
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._stop.wait(), BEAT)


def join_fabric(cfg: Config, deliver: Callable[[list[Secret]], None], preload: list[Secret],
                deliver_facts: Callable[[list[HandshakeFacts]], None] | None = None,
                deliver_resumption: Callable[[list[ResumptionState]], None] | None = None) -> Fabric:
    """The daemon's fabric: publish the key log files' secrets, load the others' secrets, facts and
    resumption states (bounded wait), go on."""
    fabric = Fabric.from_config(cfg, deliver, deliver_facts, deliver_resumption)
    fabric.publish(preload)
    if fabric.start():
        st = fabric.snapshot()
        log.info("fabric: %d secrets loaded from %s (%d entries), the facts of %d connections, %d resumption "
                 "states, %d to publish", st["secrets_in"], fabric.settings.where, st["snapshot_entries"],
                 st["facts_in"], st["resume_in"], len(preload))
    elif fabric.connected:
        log.warning("fabric: %s is slow to give its snapshot; ready now, its secrets follow",
                    fabric.settings.where)
    else:
        log.warning("fabric: %s not reachable within %g s; ready without its secrets, retrying in the "
                    "background", fabric.settings.where, fabric.settings.timeout)
    return fabric


def _parse_entries(keys: list[Any], values: list[Any], parse: Callable[[Any, Any], T], into: list[T]) -> int:
    """The entries of one SCAN/MGET round parsed into *into* (those that expired in between skipped);
    returns how many do not parse or do not match their key."""
    bad = 0
    for k, v in zip(keys, values, strict=True):
        if v is None:  # expired between SCAN and MGET
            continue
        try:
            into.append(parse(k, v))
        except FabricEntryError:
            bad += 1
    return bad
