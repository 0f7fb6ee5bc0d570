"""The frames stage's one exception family."""

from __future__ import annotations

from ..errors import TlsmirrorError


class FrameError(TlsmirrorError, ValueError):
    """A frame could not be decoded (truncated or malformed header); the frame is skipped."""


class FrameSkip(FrameError):
    """The frame carries no TCP segment we can decode; ``reason`` is one of
    :data:`tlsmirror.frames.layers.REASONS`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
