"""What the frames stage emits."""

from __future__ import annotations

from typing import NamedTuple

# TCP flag bits as they appear in the TCP header.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10


class TcpSegment(NamedTuple):
    """One TCP segment of the innermost flow of a captured frame.

    A NamedTuple rather than a frozen dataclass: equally immutable and slot-free, and built for every
    packet at a quarter of the cost (measured: 0.39 us against 1.44 us).

    Addresses are packed (4 bytes for IPv4, 16 for IPv6) so that building the event costs
    no formatting; ``tlsmirror.frames.addresses.endpoint`` renders them for output.
    """

    ts: float
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes


class FrameError(ValueError):
    """A frame could not be decoded (truncated or malformed header); the frame is skipped."""
