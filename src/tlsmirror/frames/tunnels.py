"""Tunnels opened to reach the mirrored traffic: VXLAN, GENEVE (over UDP), GRE and ERSPAN II/III."""

from __future__ import annotations

from tlsmirror.frames.errors import FrameSkip
from tlsmirror.frames.layers import K_ETH, K_IP
from tlsmirror.frames.link import ETHERTYPE_TEB, ethertype_payload

ETHERTYPE_ERSPAN_2 = 0x88BE  # also ERSPAN type I (no sequence number, no ERSPAN header)
ETHERTYPE_ERSPAN_3 = 0x22EB

_GRE_CSUM = 0x8000
_GRE_ROUTING = 0x4000
_GRE_KEY = 0x2000
_GRE_SEQ = 0x1000


def udp_payload(buf: bytes, off: int, end: int, vxlan_ports: frozenset[int],
                geneve_ports: frozenset[int]) -> tuple[int, int, int]:
    """``(kind, offset, end)`` inside the UDP datagram at *off* if it is a tunnel, else skip."""
    if off + 8 > end:
        raise FrameSkip("truncated")
    dport = (buf[off + 2] << 8) | buf[off + 3]
    ulen = (buf[off + 4] << 8) | buf[off + 5]
    if 8 <= ulen <= end - off:
        end = off + ulen  # else 0 (jumbo / offload) or larger than the IP payload: keep the IP end
    off += 8
    if dport in vxlan_ports:
        if off + 8 > end:
            raise FrameSkip("truncated")
        return K_ETH, off + 8, end
    if dport in geneve_ports:
        if off + 8 > end:
            raise FrameSkip("truncated")
        first = buf[off]
        if first >> 6:
            raise FrameSkip("unsupported_tunnel")  # GENEVE version other than 0
        ptype = (buf[off + 2] << 8) | buf[off + 3]
        off += 8 + (first & 0x3F) * 4
        if off > end:
            raise FrameSkip("truncated")
        kind, off = ethertype_payload(ptype, buf, off, end)
        return kind, off, end
    raise FrameSkip("non_tcp")


def gre_payload(buf: bytes, off: int, end: int) -> tuple[int, int]:
    """``(kind, offset)`` inside the GRE packet at *off* (RFC 2784/2890, ERSPAN I/II/III)."""
    if off + 4 > end:
        raise FrameSkip("truncated")
    flags = (buf[off] << 8) | buf[off + 1]
    ptype = (buf[off + 2] << 8) | buf[off + 3]
    if flags & 7 or flags & _GRE_ROUTING:
        raise FrameSkip("unsupported_tunnel")  # PPTP enhanced GRE, RFC 1701 source routing
    off += 4
    if flags & _GRE_CSUM:
        off += 4
    if flags & _GRE_KEY:
        off += 4
    if flags & _GRE_SEQ:
        off += 4
    if off > end:
        raise FrameSkip("truncated")
    if ptype == ETHERTYPE_ERSPAN_2:
        if flags & _GRE_SEQ:  # type II: 8-byte ERSPAN header; type I has none (and no sequence number)
            off += 8
            if off > end:
                raise FrameSkip("truncated")
        return K_ETH, off
    if ptype == ETHERTYPE_ERSPAN_3:
        if off + 12 > end:
            raise FrameSkip("truncated")
        frame_type = (buf[off + 10] >> 2) & 0x1F
        off += 20 if buf[off + 11] & 1 else 12  # O bit: an 8-byte platform-specific subheader follows
        if off > end:
            raise FrameSkip("truncated")
        if frame_type == 0:
            return K_ETH, off
        if frame_type == 2:
            return K_IP, off
        raise FrameSkip("unsupported_tunnel")
    if ptype == ETHERTYPE_TEB:
        return K_ETH, off
    return ethertype_payload(ptype, buf, off, end)
