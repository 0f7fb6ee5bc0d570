"""The key fabric (keys.fabric): can this host reach it, log in, write and read, publish and hear back;
how many secrets it holds and which sensors are on it. Never reads a secret's value."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from ..config import Config
from ..errors import InputError
from .result import FAIL, OK, SKIP, WARN, Result, num, plural

LABEL = "key fabric"
SCAN_BUDGET = 200_000  # keys looked at when counting entries (a huge keyspace is sampled, not walked)


def probe_fabric(cfg: Config, timeout: float) -> Result:
    """Reachable, auth, round trip (SET/GET and the channel), entries, peers."""
    if not cfg.keys.fabric:
        return Result(LABEL, SKIP, "no fabric configured (keys.fabric)")
    from ..fabric.connect import FabricSettings

    try:
        settings = FabricSettings.from_config(cfg, sensor_id=f"doctor-{os.getpid()}")
    except InputError as exc:
        return Result(LABEL, FAIL, str(exc), ["fix keys.fabric / keys.fabric_password_file"])
    settings = FabricSettings(url=settings.url, sensor_id=settings.sensor_id, key_ttl=settings.key_ttl,
                              timeout=timeout, password=settings.password, ca=settings.ca, cert=settings.cert,
                              key=settings.key)
    try:
        return asyncio.run(_probe(settings))
    except Exception as exc:  # whatever the client raised: one line, with what to do
        return _failure(settings.where, exc, settings.timeout)


def _failure(where: str, exc: BaseException, timeout: float) -> Result:
    from redis import exceptions as rex

    data = {"address": where}
    text = str(exc) or type(exc).__name__
    if isinstance(exc, rex.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return Result(LABEL, FAIL, f"{where}: login refused ({text})", [
            "check the user in keys.fabric (redis://USER@HOST) and the password in keys.fabric_password_file "
            "(or TLSMIRROR_KEYS_FABRIC_PASSWORD)"], data)
    if isinstance(exc, rex.NoPermissionError) or "NOPERM" in text or "no permissions" in text:
        return Result(LABEL, FAIL, f"{where}: the user may not do what the fabric needs ({text})", [
            "give the ACL user the commands and the key and channel patterns of docs/operations.md, "
            "'Key fabric'"], data)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, rex.TimeoutError)):
        return Result(LABEL, FAIL, f"{where} does not answer within {timeout:g} s", [
            "a firewall drops the connection, the address is wrong, or Redis is overloaded"], data)
    if "SSL" in text or "certificate" in text:
        return Result(LABEL, FAIL, f"{where}: TLS failed ({text})", [
            "give the CA of the Redis server's certificate in keys.fabric_ca; the certificate must name the "
            "host of keys.fabric"], data)
    return Result(LABEL, FAIL, f"{where}: {text}", [
        "is Redis running and listening on that address? (redis-cli -h HOST -p PORT ping)"], data)


async def _probe(s: Any) -> Result:
    from ..fabric.connect import make_client
    from ..fabric.entries import CHANNEL, PROBE, SECRET_PATTERN, SENSOR_PATTERN, SENSOR_PREFIX, encode_message

    client = make_client(s)
    data: dict[str, Any] = {"address": s.where}

    async def timed(aw: Any) -> Any:
        return await asyncio.wait_for(aw, s.timeout)

    try:
        await timed(client.ping())
        # write and read back an entry of its own
        key = f"tlsmirror:probe:{s.sensor_id}"
        t0 = time.perf_counter()
        token = os.urandom(8).hex()
        await timed(client.set(key, token, ex=10))
        if (await timed(client.get(key))) not in (token, token.encode()):
            return Result(LABEL, FAIL, f"{s.where}: an entry written was not read back", [
                "keys.fabric may point at a replica (read-only) or a proxy; use the primary or Sentinel"], data)
        rtt = (time.perf_counter() - t0) * 1000 / 2
        # the channel: publish a probe and hear it back
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        heard = False
        try:
            await timed(pubsub.subscribe(CHANNEL))
            t1 = time.perf_counter()
            probe = encode_message(PROBE, s.sensor_id, [token])
            await timed(client.publish(CHANNEL, probe))
            end = time.monotonic() + s.timeout
            while time.monotonic() < end and not heard:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                heard = msg is not None and msg.get("data") in (probe, probe.decode())
            channel_ms = (time.perf_counter() - t1) * 1000
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 1.0)
        with contextlib.suppress(Exception):
            await timed(client.delete(key))
        entries, complete = await _count(client, SECRET_PATTERN, timed)
        peers = []
        cursor = 0
        while True:
            cursor, keys = await timed(client.scan(cursor, match=SENSOR_PATTERN, count=1000))
            for k in keys:
                name = k.decode() if isinstance(k, bytes) else str(k)
                peers.append(name[len(SENSOR_PREFIX):])
            if not cursor:
                break
        persistence = await _persistence(client, timed)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), 1.0)
    data.update({"round_trip_ms": round(rtt, 2), "channel_ms": round(channel_ms, 2) if heard else None,
                 "entries": entries, "entries_counted_fully": complete, "peers": sorted(peers)})
    if not heard:
        return Result(LABEL, FAIL, f"{s.where}: a message published on {CHANNEL} did not come back within "
                                   f"{s.timeout:g} s", [
            "the ACL user needs PUBLISH and SUBSCRIBE on the channel tlsmirror:fabric (docs/operations.md)"], data)
    shown = ", ".join(sorted(peers)[:5]) + (", ..." if len(peers) > 5 else "")
    count = num(entries) + ("" if complete else "+")
    msg = (f"{s.where}: login, write/read ({rtt:.1f} ms) and channel ({channel_ms:.1f} ms) work; {count} "
           f"secrets held; {plural(len(peers), 'sensor')} on it" + (f" ({shown})" if peers else ""))
    advice: list[str] = []
    status = OK
    if not peers:
        status = WARN
        advice.append("no sensor is on the fabric: is `tlsmirror run` running with keys.fabric set to this "
                      "address? its log says 'fabric: connected to'")
    if persistence:
        status = WARN
        advice.append(f"Redis writes its data to disk ({persistence}): the secrets end up there; turn it off "
                      "(save '' and appendonly no), see docs/operations.md")
    if not s.url.startswith("rediss") and not _loopback(s.where):
        status = WARN
        advice.append("secrets cross the network unencrypted: use rediss:// with keys.fabric_ca")
    if status != OK:
        msg += "; " + ("see below" if len(advice) > 1 else advice[0].split(":")[0])
    return Result(LABEL, status, msg, advice, data)


async def _count(client: Any, pattern: str, timed: Any) -> tuple[int, bool]:
    cursor, seen, n = 0, 0, 0
    while True:
        cursor, keys = await timed(client.scan(cursor, match=pattern, count=1000))
        n += len(keys)
        seen += 1000
        if not cursor:
            return n, True
        if seen >= SCAN_BUDGET:
            return n, False


async def _persistence(client: Any, timed: Any) -> str:
    """'' when Redis keeps nothing on disk, or when it will not say (CONFIG is not for the fabric's user)."""
    try:
        save = await timed(client.config_get("save"))
        aof = await timed(client.config_get("appendonly"))
    except Exception:
        return ""
    what = []
    if str(save.get("save", "")).strip():
        what.append(f"save {save.get('save')}")
    if str(aof.get("appendonly", "no")).lower() == "yes":
        what.append("appendonly yes")
    return ", ".join(what)


def _loopback(where: str) -> bool:
    hosts = where.partition("://")[2].partition("/")[0]
    return all(h.rpartition(":")[0].strip("[]") in ("127.0.0.1", "localhost", "::1") or
               h.strip("[]") in ("127.0.0.1", "localhost", "::1") for h in hosts.split(","))
