"""Link layers: capture link types, Ethernet, VLAN/QinQ tags, MPLS and PPPoE down to IP."""

from __future__ import annotations

from typing import Final

from tlsmirror.frames.errors import FrameSkip
from tlsmirror.frames.layers import K_ETH, K_IP, K_IPV4, K_IPV6

LINKTYPE_NULL = 0  # BSD loopback, 4-byte address family in the writer's byte order
LINKTYPE_ETHERNET: Final = 1  # Final: a constant in the frame decoder's per-frame test (compiled)
LINKTYPE_RAW_DLT12 = 12  # DLT_RAW on most systems (LINKTYPE_RAW is the portable value)
LINKTYPE_RAW_DLT14 = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # OpenBSD loopback, family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_TEB = 0x6558  # transparent Ethernet bridging (an Ethernet frame follows)
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
ETHERTYPE_MPLS = frozenset((0x8847, 0x8848))
ETHERTYPE_PPPOE_SESSION = 0x8864

AF_INET = 2
AF_INET6 = frozenset((10, 24, 28, 30))  # Linux, BSDs, FreeBSD/DragonFly, Darwin

_RAW = {LINKTYPE_RAW: K_IP, LINKTYPE_RAW_DLT12: K_IP, LINKTYPE_RAW_DLT14: K_IP,
        LINKTYPE_IPV4: K_IPV4, LINKTYPE_IPV6: K_IPV6}


def ethertype_payload(etype: int, buf: bytes, off: int, end: int) -> tuple[int, int]:
    """Skip VLAN tags / MPLS labels / PPPoE after an ethertype; return ``(kind, offset)`` of IP.

    *off* is where the bytes announced by *etype* start. Raises :class:`FrameSkip`.
    """
    while etype in VLAN_TPIDS:  # 802.1Q, 802.1ad (QinQ) and the old 0x9100/0x9200 stacking tags
        if off + 4 > end:
            raise FrameSkip("truncated")
        etype = (buf[off + 2] << 8) | buf[off + 3]
        off += 4
    if etype == ETHERTYPE_IPV4:
        return K_IPV4, off
    if etype == ETHERTYPE_IPV6:
        return K_IPV6, off
    if etype == ETHERTYPE_TEB:
        return K_ETH, off
    if etype in ETHERTYPE_MPLS:
        while True:  # label stack: 4 bytes each, bottom-of-stack bit in the third byte
            if off + 4 > end:
                raise FrameSkip("truncated")
            bottom = buf[off + 2] & 1
            off += 4
            if bottom:
                break
        if off >= end:
            raise FrameSkip("truncated")
        if buf[off] >> 4 in (4, 6):  # no explicit type after MPLS: IP is recognised by its version
            return K_IP, off
        raise FrameSkip("non_ip")  # pseudowire control word, ...
    if etype == ETHERTYPE_PPPOE_SESSION:
        if off + 8 > end:
            raise FrameSkip("truncated")
        ppp = (buf[off + 6] << 8) | buf[off + 7]
        if ppp == 0x0021:
            return K_IPV4, off + 8
        if ppp == 0x0057:
            return K_IPV6, off + 8
    raise FrameSkip("non_ip")


def ethernet_payload(buf: bytes, off: int, end: int) -> tuple[int, int]:
    """``(kind, offset)`` after the Ethernet header at *off* (and any VLAN tags)."""
    if off + 14 > end:
        raise FrameSkip("truncated")
    return ethertype_payload((buf[off + 12] << 8) | buf[off + 13], buf, off + 14, end)


def link_payload(linktype: int, data: bytes) -> tuple[int, int]:
    """``(kind, offset)`` of what follows the link header of a captured frame."""
    kind = _RAW.get(linktype)
    if kind is not None:
        return kind, 0
    n = len(data)
    if linktype == LINKTYPE_ETHERNET:
        return K_ETH, 0
    if linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            raise FrameSkip("truncated")
        return ethertype_payload((data[14] << 8) | data[15], data, 16, n)
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            raise FrameSkip("truncated")
        return ethertype_payload((data[0] << 8) | data[1], data, 20, n)
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 4:
            raise FrameSkip("truncated")
        be = int.from_bytes(data[:4], "big")
        # The writer's byte order is unknown for DLT_NULL: the family is small, so try both.
        fams = (be,) if linktype == LINKTYPE_LOOP else (be, int.from_bytes(data[:4], "little"))
        for fam in fams:
            if fam == AF_INET:
                return K_IPV4, 4
            if fam in AF_INET6:
                return K_IPV6, 4
        raise FrameSkip("non_ip")
    raise FrameSkip("unknown_linktype")
