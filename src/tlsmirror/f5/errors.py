"""The f5 stage's one exception family."""

from __future__ import annotations

from ..errors import TlsmirrorError


class F5ConfigError(TlsmirrorError, ValueError):
    """A name or setting that cannot go into the generated F5 configuration."""
