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
_NO_KEY = (0, 0, 0)


def tcp_key_at(buf: bytes, start: int, stop: int) -> tuple[int, int, int]:
    """Where the flow key of an Ethernet frame at ``buf[start:stop]`` lies, read at fixed offsets
    without decoding: ``(key offset, key length, TCP header offset)``; key length 0 if the frame is
    not of a common shape. Common: Ethernet with up to two 802.1Q/802.1ad tags, IPv4 without options
    and not a fragment, or IPv6 with TCP as its next header, and a TCP header that
    :class:`~tlsmirror.frames.decoder.FrameDecoder` takes as it is (so the frame is one segment).
    The key is the source and destination address and port, contiguous in such a frame (IPv4: 12
    bytes, IPv6: 36); :meth:`FlowHasher.key_hash` of it is what :class:`FlowHasher` gives the frame.
    Tunnels, fragments, IP options, extension headers and odd lengths are for the full decoder."""
    off = start + 14
    if off > stop:
        return _NO_KEY
    etype = (buf[off - 2] << 8) | buf[off - 1]
    for _ in range(2):
        if etype != 0x8100 and etype != 0x88A8:
            break
        if off + 4 > stop:
            return _NO_KEY
        etype = (buf[off + 2] << 8) | buf[off + 3]
        off += 4
    if etype == 0x0800:
        if off + 20 > stop or buf[off] != 0x45 or buf[off + 9] != _PROTO_TCP or buf[off + 6] & 0x3F \
                or buf[off + 7]:
            return _NO_KEY
        total = (buf[off + 2] << 8) | buf[off + 3]
        if total < 40 or off + total > stop:  # (total 0, segmentation offload: the full decoder)
            return _NO_KEY
        l4, pend, key, klen = off + 20, off + total, off + 12, 12
    elif etype == 0x86DD:
        if off + 40 > stop or buf[off] >> 4 != 6 or buf[off + 6] != _PROTO_TCP:
            return _NO_KEY
        plen = (buf[off + 4] << 8) | buf[off + 5]
        if plen < 20 or off + 40 + plen > stop:
            return _NO_KEY
        l4, pend, key, klen = off + 40, off + 40 + plen, off + 8, 36
    else:
        return _NO_KEY
    hl = (buf[l4 + 12] >> 4) << 2
    if hl < 20 or l4 + hl > pend:
        return _NO_KEY
    return key, klen, l4


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

    def key_hash(self, key: bytes) -> int:
        """The hash of a TCP frame from its key (:func:`tcp_key_at`): source address, destination
        address, source port, destination port."""
        n = (len(key) - 4) >> 1
        x, y = key[:n] + key[2 * n:2 * n + 2], key[n:2 * n] + key[2 * n + 2:]
        if y < x:
            x, y = y, x
        return zlib.crc32(x + y + b"\x06")

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
