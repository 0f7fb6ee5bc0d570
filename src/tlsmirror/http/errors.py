"""The http stage's one exception family."""

from __future__ import annotations

from ..errors import TlsmirrorError


class HttpError(TlsmirrorError, ValueError):
    """A malformed HTTP message (internal: the connection turns it into an ``HttpProblem`` event for that
    connection only)."""
