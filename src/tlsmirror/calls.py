"""The unit users consume: one API call (an HTTP exchange) with the facts of its connection.

Slotted classes, treated as immutable (built per exchange; see ``http.events``): ``ApiCall`` and ``HttpIssue``
written out, ``Connection`` a dataclass still (``dataclasses.replace`` renumbers it in the daemon's workers).
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


class ApiCall:
    __slots__ = ("connection", "exchange", "route")

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

    def __repr__(self) -> str:
        return f"ApiCall(connection={self.connection!r}, exchange={self.exchange!r}, route={self.route!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not ApiCall:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]


class HttpIssue:
    """HTTP parsing of one connection stopped (its exchanges so far were reported)."""

    __slots__ = ("connection", "problem")

    connection: Connection
    problem: HttpProblem

    def __init__(self, connection: Connection, problem: HttpProblem) -> None:
        self.connection = connection
        self.problem = problem

    def __repr__(self) -> str:
        return f"HttpIssue(connection={self.connection!r}, problem={self.problem!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not HttpIssue:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __reduce__(self) -> tuple[type[HttpIssue], tuple[Any, ...]]:
        return HttpIssue, (self.connection, self.problem)


CallEvent = ApiCall | HttpIssue
