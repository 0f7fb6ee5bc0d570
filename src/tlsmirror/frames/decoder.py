"""FrameDecoder: one captured frame in, the innermost TCP segment (or a counted skip) out."""

from __future__ import annotations

import struct

from tlsmirror.frames.errors import FrameSkip
from tlsmirror.frames.events import TcpSegment
from tlsmirror.frames.ip import (
    PROTO_GRE,
    PROTO_IPIP,
    PROTO_IPV6,
    PROTO_TCP,
    PROTO_UDP,
    FragmentReassembler,
    ipv4,
    ipv6,
)
from tlsmirror.frames.layers import K_ETH, K_IP, K_IPV4, K_IPV6, REASONS
from tlsmirror.frames.link import LINKTYPE_ETHERNET, ethernet_payload, link_payload
from tlsmirror.frames.tunnels import gre_payload, udp_payload

MAX_LAYERS = 12  # link/IP/tunnel headers walked per frame at most

_TCP = struct.Struct("!HHIIBB")


class FrameDecoder:
    """Stateful only for IPv4/IPv6 fragment reassembly (bounded bytes, timeout by packet time).

    ``counters`` counts frames skipped, by reason (see ``tlsmirror.frames.layers.REASONS``);
    ``fragment_expired`` and ``fragment_budget`` count dropped incomplete datagrams.
    """

    __slots__ = ("_frags", "_geneve", "_vxlan", "counters")

    def __init__(self, *, vxlan_ports: tuple[int, ...] = (4789,), geneve_ports: tuple[int, ...] = (6081,),
                 max_fragment_bytes: int = 4 << 20, fragment_timeout: float = 30.0) -> None:
        self.counters: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._vxlan = frozenset(vxlan_ports)
        self._geneve = frozenset(geneve_ports)
        self._frags = FragmentReassembler(max_fragment_bytes, fragment_timeout, self.counters)

    @property
    def fragments_pending(self) -> int:
        """Incomplete IP datagrams currently held."""
        return len(self._frags)

    @property
    def fragment_bytes(self) -> int:
        """Payload bytes currently held for incomplete datagrams."""
        return self._frags.held

    def decode(self, linktype: int, data: bytes, ts: float) -> TcpSegment | None:
        """Innermost TCP segment of the frame, or None (non-TCP / malformed: counted, never raises)."""
        try:
            if linktype == LINKTYPE_ETHERNET:
                # Ethernet + option-less IPv4 + TCP read byte by byte: compiled, each index is a native
                # load, where one struct unpack of the 13 fields was a Python method call (about 2k
                # instructions per frame, callgrind); the flow key is the addresses and ports, adjacent in
                # the headers: one slice
                n = len(data)
                if n >= 54 and data[12] == 0x08 and data[13] == 0 and data[14] == 0x45 and data[23] == 6 \
                        and not (data[20] & 0x3F or data[21]):
                    end = 14 + ((data[16] << 8) | data[17])
                    hl = 34 + ((data[46] >> 4) << 2)
                    if 54 <= hl <= end <= n:
                        return TcpSegment(
                            ts, data[26:30], data[30:34], (data[34] << 8) | data[35], (data[36] << 8) | data[37],
                            (data[38] << 24) | (data[39] << 16) | (data[40] << 8) | data[41],
                            (data[42] << 24) | (data[43] << 16) | (data[44] << 8) | data[45],
                            data[47], data[hl:end], data[26:38])
                kind, off = K_ETH, 0
            else:
                kind, off = link_payload(linktype, data)
            return self._walk(kind, data, off, len(data), ts)
        except FrameSkip as skip:
            self.counters[skip.reason] += 1
        except (struct.error, IndexError):  # a bounds check missed: still a truncated frame
            self.counters["truncated"] += 1
        return None

    def expire_fragments(self, ts: float) -> None:
        """Drop incomplete datagrams older than the timeout at packet time *ts* (also done on add)."""
        self._frags.expire(ts)

    def _walk(self, kind: int, buf: bytes, off: int, end: int, ts: float) -> TcpSegment:
        sport: int  # declared: see decode
        dport: int
        seq: int
        ack: int
        doff: int
        flags: int
        for _ in range(MAX_LAYERS):
            if kind == K_ETH:
                kind, off = ethernet_payload(buf, off, end)
                continue
            if kind == K_IP:
                if off >= end:
                    raise FrameSkip("truncated")
                version = buf[off] >> 4
                if version == 4:
                    kind = K_IPV4
                elif version == 6:
                    kind = K_IPV6
                else:
                    raise FrameSkip("non_ip")
            if kind == K_IPV4:
                buf, off, end, proto, src, dst = ipv4(buf, off, end, ts, self._frags)
            else:
                buf, off, end, proto, src, dst = ipv6(buf, off, end, ts, self._frags)
            if proto == PROTO_TCP:
                if off + 20 > end:
                    raise FrameSkip("bad_tcp_header")
                sport, dport, seq, ack, doff, flags = _TCP.unpack_from(buf, off)
                hl = (doff >> 4) << 2
                if hl < 20 or off + hl > end:
                    raise FrameSkip("bad_tcp_header")
                return TcpSegment(ts, src, dst, sport, dport, seq, ack, flags, buf[off + hl:end])
            if proto == PROTO_UDP:
                kind, off, end = udp_payload(buf, off, end, self._vxlan, self._geneve)
            elif proto == PROTO_GRE:
                kind, off = gre_payload(buf, off, end)
            elif proto == PROTO_IPIP:
                kind = K_IPV4
            elif proto == PROTO_IPV6:
                kind = K_IPV6
            else:
                raise FrameSkip("non_tcp")
        raise FrameSkip("too_deep")
