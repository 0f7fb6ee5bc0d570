"""The unit users consume: one API call (an HTTP exchange) with the facts of its connection.

Plain slotted dataclasses, treated as immutable (built per exchange; see ``http.events``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .http.events import Exchange, HttpProblem


@dataclass(slots=True, init=False)  # __init__ written out below
class Connection:
    """Facts of the TCP/TLS connection an exchange travelled on."""

    id: int
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    tls: bool
    tls_version: str | None = None
    tls_suite: str | None = None
    sni: str | None = None
    alpn: str | None = None

    # written out: mypyc compiles it (a generated __init__ stays interpreted): 5x cheaper per event
    def __init__(self, id: int, client_ip: str, client_port: int, server_ip: str, server_port: int, tls: bool,
                 tls_version: str | None = None, tls_suite: str | None = None, sni: str | None = None,
                 alpn: str | None = None) -> None:
        self.id = id
        self.client_ip = client_ip
        self.client_port = client_port
        self.server_ip = server_ip
        self.server_port = server_port
        self.tls = tls
        self.tls_version = tls_version
        self.tls_suite = tls_suite
        self.sni = sni
        self.alpn = alpn

    # API calls travel pickled from workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[Connection], tuple[Any, ...]]:
        return Connection, (self.id, self.client_ip, self.client_port, self.server_ip, self.server_port, self.tls,
                           self.tls_version, self.tls_suite, self.sni, self.alpn)


@dataclass(slots=True, init=False)  # __init__ written out below
class ApiCall:
    connection: Connection
    exchange: Exchange
    route: str | None  # the route template (``/users/{user_id}``) the engine's route table gave, if any

    # written out: mypyc compiles it (a generated __init__ stays interpreted): 5x cheaper per event
    def __init__(self, connection: Connection, exchange: Exchange, route: str | None = None) -> None:
        self.connection = connection
        self.exchange = exchange
        self.route = route

    # API calls travel pickled from workers to the daemon; a compiled class needs this
    def __reduce__(self) -> tuple[type[ApiCall], tuple[Any, ...]]:
        return ApiCall, (self.connection, self.exchange, self.route)


@dataclass(slots=True)
class HttpIssue:
    """HTTP parsing of one connection stopped (its exchanges so far were reported)."""

    connection: Connection
    problem: HttpProblem


CallEvent = ApiCall | HttpIssue
