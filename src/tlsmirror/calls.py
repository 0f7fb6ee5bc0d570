"""The unit users consume: one API call (an HTTP exchange) with the facts of its connection.

Plain slotted dataclasses, treated as immutable (built per exchange; see ``http.events``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .http.events import Exchange, HttpProblem


@dataclass(slots=True)
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


@dataclass(slots=True)
class ApiCall:
    connection: Connection
    exchange: Exchange


@dataclass(slots=True)
class HttpIssue:
    """HTTP parsing of one connection stopped (its exchanges so far were reported)."""

    connection: Connection
    problem: HttpProblem
