"""The tls stage's one exception family."""

from __future__ import annotations

from ..errors import TlsmirrorError


class TlsError(TlsmirrorError, ValueError):
    """Anything wrong with one TLS connection. Never carries secret material in its message."""


class TlsParseError(TlsError):
    """Malformed record or handshake message."""


class DecryptError(TlsError):
    """A record failed authentication (bad AEAD tag, bad MAC or padding)."""


class UnsupportedError(TlsError):
    """A protocol feature or cipher suite that we cannot decrypt (named in the message)."""
