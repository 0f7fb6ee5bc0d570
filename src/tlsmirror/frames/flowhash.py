"""A symmetric flow hash of captured frames, for spreading a capture file's flows over processes.

The daemon's ``--pcap`` feed and ``replay --workers`` give each process the flows whose hash falls to
it, as the kernel's fanout does for live capture: both directions of a connection hash alike. Pure: bytes
in, an int out.
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict

from tlsmirror.frames.errors import FrameSkip
from tlsmirror.frames.layers import K_ETH, K_IP, K_IPV4, K_IPV6
from tlsmirror.frames.link import LINKTYPE_ETHERNET, ethernet_payload, link_payload

_PROTO_TCP = 6
_PROTO_UDP = 17
_IPV6_EXT = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options (fragment: 44)


class FlowHasher:
    """Symmetric flow hash of captured frames (outermost IP + TCP/UDP ports), for ``--pcap`` dispatch.

    Both directions of a connection hash alike. IP fragments are hashed like their datagram: the first
    fragment carries the ports, later fragments are matched to it by (addresses, IP id); fragments seen
    before the first one hash by addresses only (rare; the kernel defragments before hashing).
    """

    def __init__(self, max_fragments: int = 4096) -> None:
        self._frag: OrderedDict[tuple[bytes, bytes, int], int] = OrderedDict()
        self._max = max_fragments

    def __call__(self, linktype: int, data: bytes) -> int:
        try:
            if linktype == LINKTYPE_ETHERNET:
                kind, off = ethernet_payload(data, 0, len(data))
            else:
                kind, off = link_payload(linktype, data)
            if kind == K_ETH:  # transparent bridging
                kind, off = ethernet_payload(data, off, len(data))
            if kind == K_IP:
                kind = K_IPV4 if off < len(data) and data[off] >> 4 == 4 else K_IPV6
            if kind == K_IPV4:
                return self._ipv4(data, off)
            return self._ipv6(data, off)
        except (FrameSkip, IndexError, struct.error):
            return 0

    def _ports(self, data: bytes, off: int) -> tuple[int, int]:
        if off + 4 > len(data):
            return 0, 0
        sport, dport = struct.unpack_from("!HH", data, off)
        return sport, dport

    def _mix(self, a: bytes, ap: int, b: bytes, bp: int, proto: int) -> int:
        x, y = a + ap.to_bytes(2, "big"), b + bp.to_bytes(2, "big")
        if y < x:
            x, y = y, x
        return zlib.crc32(x + y + bytes((proto,)))

    def _ipv4(self, data: bytes, off: int) -> int:
        vihl, frag_word, proto = data[off], struct.unpack_from("!H", data, off + 6)[0], data[off + 9]
        src, dst = data[off + 12:off + 16], data[off + 16:off + 20]
        hl = (vihl & 0x0F) * 4
        more, frag_off = frag_word & 0x2000, frag_word & 0x1FFF
        if proto not in (_PROTO_TCP, _PROTO_UDP):
            return self._mix(src, 0, dst, 0, proto)
        if not more and not frag_off:
            sport, dport = self._ports(data, off + hl)
            return self._mix(src, sport, dst, dport, proto)
        ident = struct.unpack_from("!H", data, off + 4)[0]
        return self._fragment((src, dst, ident) if src < dst else (dst, src, ident), frag_off == 0,
                              data, off + hl, src, dst, proto)

    def _fragment(self, key: tuple[bytes, bytes, int], first: bool, data: bytes, l4: int, src: bytes,
                  dst: bytes, proto: int) -> int:
        if first:
            sport, dport = self._ports(data, l4)
            h = self._mix(src, sport, dst, dport, proto)
            self._frag[key] = h
            if len(self._frag) > self._max:
                self._frag.popitem(last=False)
            return h
        h_known = self._frag.get(key)
        return h_known if h_known is not None else self._mix(src, 0, dst, 0, proto)

    def _ipv6(self, data: bytes, off: int) -> int:
        nh = data[off + 6]
        src, dst = data[off + 8:off + 24], data[off + 24:off + 40]
        p = off + 40
        for _ in range(8):
            if nh in _IPV6_EXT:
                nh, p = data[p], p + (data[p + 1] + 1) * 8
            elif nh == 44:  # fragment header
                frag_word = struct.unpack_from("!H", data, p + 2)[0]
                ident = struct.unpack_from("!I", data, p + 4)[0]
                nh = data[p]
                key = (src, dst, ident) if src < dst else (dst, src, ident)
                if nh not in (_PROTO_TCP, _PROTO_UDP):
                    return self._mix(src, 0, dst, 0, nh)
                return self._fragment(key, frag_word & 0xFFF8 == 0, data, p + 8, src, dst, nh)
            else:
                break
        if nh in (_PROTO_TCP, _PROTO_UDP):
            sport, dport = self._ports(data, p)
            return self._mix(src, sport, dst, dport, nh)
        return self._mix(src, 0, dst, 0, nh)
