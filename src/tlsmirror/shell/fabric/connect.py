"""How to reach the fabric: its settings from the configuration, and the asyncio Redis client for them.

``keys.fabric`` is ``redis://[USER@]HOST:PORT/DB``, ``rediss://`` (TLS, verified against
``keys.fabric_ca`` or the system's CAs; a client certificate from ``keys.fabric_cert``/``keys.fabric_key``) or ``redis+sentinel://[USER@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``
(``rediss+sentinel://`` for TLS to the master). The password comes from ``keys.fabric_password_file``
or ``keys.fabric_password`` (``TLSMIRROR_KEYS_FABRIC_PASSWORD``) and is never logged nor shown.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from ..config import Config, read_fabric_password
from ..errors import InputError
from .entries import valid_sensor_id

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class FabricSettings:
    """Everything needed to use the fabric. ``password`` never appears in repr or logs."""

    url: str
    sensor_id: str
    key_ttl: float = 600.0
    timeout: float = 3.0
    password: str | None = field(default=None, repr=False)
    ca: str | None = None
    cert: str | None = None  # client certificate and key (a Redis with tls-auth-clients)
    key: str | None = None

    @property
    def where(self) -> str:
        """The fabric's address for messages: scheme, hosts and service or database, never a password."""
        return describe(self.url)

    @classmethod
    def from_config(cls, cfg: Config, sensor_id: str | None = None) -> FabricSettings:
        k = cfg.keys
        if not k.fabric:
            raise InputError("no fabric configured: set keys.fabric (redis://HOST:6379/0)")
        sid = sensor_id or k.fabric_id or default_sensor_id()
        if not valid_sensor_id(sid):
            raise InputError(f"keys.fabric_id {sid!r} is not a sensor name; use letters, digits and . _ - : @ "
                             "(up to 128 characters)")
        return cls(url=k.fabric, sensor_id=sid, key_ttl=cfg.engine.key_ttl, timeout=k.fabric_timeout,
                   password=read_fabric_password(cfg), ca=k.fabric_ca, cert=k.fabric_cert, key=k.fabric_key)


def default_sensor_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip("-.") or "sensor"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def describe(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    hosts = netloc.rpartition("@")[2]
    return f"{scheme}://{hosts}/{path}" if path else f"{scheme}://{hosts}"


def _host_port(text: str, default: int) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise InputError(f"keys.fabric: {text!r} names no host")
    try:
        return host, int(port) if port else default
    except ValueError:
        raise InputError(f"keys.fabric: {text!r} has a bad port") from None


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str | None, str, int]:
    """``redis+sentinel://[USER@]H:P,H:P/SERVICE[/DB]`` -> (sentinels, user, service, db)."""
    _scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    user_part, at, hosts = netloc.rpartition("@")
    user = unquote(user_part) if at and user_part else None
    sentinels = [_host_port(h.strip(), DEFAULT_SENTINEL_PORT) for h in hosts.split(",") if h.strip()]
    parts = [p for p in path.split("/") if p]
    if not sentinels or not parts:
        raise InputError("keys.fabric: write redis+sentinel://HOST:26379[,HOST:26379...]/SERVICE[/DB]")
    try:
        db = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise InputError(f"keys.fabric: database {parts[1]!r} is not a number") from None
    return sentinels, user, parts[0], db


def _common(s: FabricSettings) -> dict[str, Any]:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # one attempt per command: the fabric reconnects itself, with its own backoff
    return {"socket_timeout": s.timeout, "socket_connect_timeout": s.timeout, "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0, "client_name": f"tlsmirror:{s.sensor_id}"[:100]}


def make_client(s: FabricSettings) -> Any:
    """An asyncio Redis client for *s* (nothing is connected until the first command)."""
    import redis.asyncio as aredis

    kwargs = _common(s)
    if s.password is not None:
        kwargs["password"] = s.password
    scheme = s.url.partition("://")[0]
    tls = scheme.startswith("rediss")
    if tls and s.ca:
        kwargs["ssl_ca_certs"] = s.ca
    if tls and s.cert:
        kwargs["ssl_certfile"], kwargs["ssl_keyfile"] = s.cert, s.key
    if scheme.endswith("+sentinel"):
        from redis.asyncio.sentinel import Sentinel

        sentinels, user, service, db = sentinel_parts(s.url)
        if user is not None:
            kwargs["username"] = user
        if tls:
            from redis.asyncio.connection import SSLConnection

            kwargs["connection_class"] = SSLConnection
        common = _common(s)
        del common["client_name"]
        sentinel = Sentinel(sentinels, sentinel_kwargs=common, **kwargs)  # type: ignore[no-untyped-call]
        return sentinel.master_for(service, db=db)
    u = urlsplit(s.url)
    if u.password is not None:  # config validation refuses it; never send what was not meant to be kept
        raise InputError("keys.fabric has a password in it; put it in keys.fabric_password_file")
    return aredis.Redis.from_url(s.url, **kwargs)
