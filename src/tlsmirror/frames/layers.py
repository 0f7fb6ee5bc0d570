"""Layer kinds and the skip signal shared by the frame parsers.

The parsers in this package hand each other ``(kind, offset)`` pairs: *kind* says what the bytes at
*offset* are. A parser that cannot go on raises :class:`FrameSkip` with the counter name under which
:class:`~tlsmirror.frames.decoder.FrameDecoder` records the skipped frame.
"""

from __future__ import annotations

K_ETH = 0  # Ethernet header (dst, src, ethertype)
K_IP = 1  # IPv4 or IPv6, chosen by the version nibble
K_IPV4 = 2
K_IPV6 = 3

# Every reason a frame can be skipped for; FrameDecoder.counters starts with all of them at 0.
REASONS: tuple[str, ...] = (
    "non_ip",  # link or tunnel payload is not IP (ARP, LLC, LLDP, ...)
    "non_tcp",  # IP payload is neither TCP nor a tunnel we open (UDP, ICMP, ESP, ...)
    "truncated",  # a header, or the IP datagram, extends past the captured bytes
    "bad_ip_header",  # wrong version, IHL < 5, total length < header, bad extension header chain
    "bad_tcp_header",  # data offset < 5 or beyond the end of the IP payload
    "unknown_linktype",  # capture link type not supported
    "unsupported_tunnel",  # GRE version/routing, GENEVE version or protocol, ERSPAN frame type
    "too_deep",  # more nested encapsulations than MAX_LAYERS
    "fragment_held",  # an IP fragment was stored, waiting for the rest of its datagram
    "bad_fragment",  # inconsistent fragment (beyond 64 KiB, conflicting or exceeded end); datagram dropped
    "fragment_limit",  # too many pieces in one datagram; datagram dropped
    "fragment_expired",  # (per datagram) incomplete datagram dropped after fragment_timeout
    "fragment_budget",  # (per datagram) incomplete datagram evicted to respect max_fragment_bytes
)

