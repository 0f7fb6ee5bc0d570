"""The keys stage's one exception family."""

from __future__ import annotations

from ..errors import TlsmirrorError


class KeyLogError(TlsmirrorError, ValueError):
    """A key log line (or key file) is malformed. The message never contains secret material."""
