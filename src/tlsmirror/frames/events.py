"""What the frames stage emits."""

from __future__ import annotations

from typing import Any

# TCP flag bits as they appear in the TCP header.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10


def wire_key(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    """The key of one direction of a TCP flow: ``src + dst + sport + dport`` (ports as 2 bytes each,
    big-endian, as in the headers). One bytes object: per segment one hash and one compare when looked up,
    where a tuple of the addresses and ports hashed and compared each part (about 1k instructions)."""
    return src + dst + ((sport << 16) | dport).to_bytes(4, "big")


class TcpSegment:
    """One TCP segment of the innermost flow of a captured frame. Treat it as immutable.

    Built for every packet, so not ``frozen``: a frozen dataclass costs 1.44 us to build against
    0.3 us, and a plain slotted class is what mypyc compiles into a native class (measured with the
    compiled build: ``decrypt`` 37 % faster than with NamedTuple events). Written out rather than a
    ``@dataclass``: mypyc runs a compiled dataclass's method generation at every start (see ``http.events``).

    Addresses are packed (4 bytes for IPv4, 16 for IPv6) so that building the event costs
    no formatting; ``tlsmirror.frames.addresses.endpoint`` renders them for output.
    """

    __slots__ = ("ack", "dport", "dst", "flags", "key", "payload", "seq", "sport", "src", "ts")

    ts: float
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    key: bytes  # src, dst, sport, dport (2 bytes each, big-endian) as one bytes: the flow's key as sent

    # written out: mypyc compiles it (a generated __init__ stays interpreted): 5x cheaper per event
    def __init__(self, ts: float, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
                 payload: bytes, key: bytes = b"") -> None:
        self.ts = ts
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.payload = payload
        # ``key``: given by the decoder as one slice of an IPv4 header (the addresses and ports are adjacent
        # there), else made here; not part of the value (repr, equality, pickling): it follows from the rest
        self.key = key or wire_key(src, dst, sport, dport)

    def __repr__(self) -> str:
        return (f"TcpSegment(ts={self.ts!r}, src={self.src!r}, dst={self.dst!r}, sport={self.sport!r}, "
                f"dport={self.dport!r}, seq={self.seq!r}, ack={self.ack!r}, flags={self.flags!r}, "
                f"payload={self.payload!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not TcpSegment:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __reduce__(self) -> tuple[type[TcpSegment], tuple[Any, ...]]:
        return TcpSegment, (self.ts, self.src, self.dst, self.sport, self.dport, self.seq, self.ack, self.flags,
                            self.payload)


FrameEvent = TcpSegment  # the frames stage has one event: a decoded TCP segment
