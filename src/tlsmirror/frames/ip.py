"""IPv4 and IPv6 headers, IPv6 extension headers, and bounded IP fragment reassembly."""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Any

from tlsmirror.frames.errors import FrameSkip

# Protocol numbers the decoder opens; fragments of anything else are not worth holding.
PROTO_IPIP = 4
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6 = 41
PROTO_GRE = 47
USEFUL_PROTOS = frozenset((PROTO_IPIP, PROTO_TCP, PROTO_UDP, PROTO_IPV6, PROTO_GRE))

# IPv6 extension headers in the generic (next header, length in 8-octet units - 1) format:
# hop-by-hop, routing, destination options, mobility, HIP, shim6, experimental.
_EXT_GENERIC = frozenset((0, 43, 60, 135, 139, 140, 253, 254))
_EXT_FRAGMENT = 44
_EXT_AH = 51
MAX_EXT_HEADERS = 16

MAX_DATAGRAM = 65535  # largest reassembled IP payload
MAX_PIECES = 1024  # distinct stored pieces per datagram

_V4 = struct.Struct("!BxHHHxB2x4s4s")
_V6 = struct.Struct("!4xHB1x16s16s")
_FRAG6 = struct.Struct("!B1xHI")


class _Pending:
    """An incomplete datagram: non-overlapping ``(start, end, bytes)`` pieces, first arrival wins."""

    __slots__ = ("covered", "first_ts", "pieces", "proto", "total")

    def __init__(self, ts: float) -> None:
        self.first_ts = ts
        self.pieces: list[tuple[int, int, bytes]] = []
        self.covered = 0  # bytes stored (pieces never overlap)
        self.total = -1  # payload length once the last fragment (MF = 0) is seen
        self.proto = -1  # upper protocol, from the fragment at offset 0


class FragmentReassembler:
    """Reassembles IPv4 and IPv6 fragments, bounded in bytes and in (packet) time.

    ``counters`` is the decoder's counter dict: expired and evicted datagrams are counted there.
    """

    __slots__ = ("_pending", "counters", "held", "max_bytes", "timeout")

    def __init__(self, max_bytes: int, timeout: float, counters: dict[str, int]) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.counters = counters
        self.held = 0  # payload bytes stored across all pending datagrams
        self._pending: OrderedDict[Any, _Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def _drop(self, key: Any) -> None:
        p = self._pending.pop(key, None)
        if p is not None:
            self.held -= p.covered

    def expire(self, ts: float) -> None:
        """Drop datagrams whose first fragment is older than ``timeout`` at packet time *ts*."""
        pending = self._pending
        limit = ts - self.timeout
        while pending:
            key, p = next(iter(pending.items()))
            if p.first_ts >= limit:
                break
            del pending[key]
            self.held -= p.covered
            self.counters["fragment_expired"] += 1

    def add(self, key: Any, start: int, data: bytes, more: bool, proto: int,
            ts: float) -> tuple[int, bytes]:
        """Store one fragment; return ``(proto, payload)`` when its datagram is complete.

        Raises :class:`FrameSkip` ("fragment_held" while incomplete, or why the fragment was refused).
        """
        self.expire(ts)
        end = start + len(data)
        if end > MAX_DATAGRAM:
            self._drop(key)
            raise FrameSkip("bad_fragment")
        n = len(data)
        if n > self.max_bytes:
            raise FrameSkip("fragment_budget")
        pending = self._pending
        while pending and self.held + n > self.max_bytes:
            _, old = pending.popitem(last=False)
            self.held -= old.covered
            self.counters["fragment_budget"] += 1
        p = pending.get(key)
        if p is None:
            p = pending[key] = _Pending(ts)
        pieces = p.pieces
        if not more:
            if (p.total >= 0 and p.total != end) or (pieces and pieces[-1][1] > end):
                self._drop(key)
                raise FrameSkip("bad_fragment")
            p.total = end
        elif p.total >= 0 and end > p.total:
            self._drop(key)
            raise FrameSkip("bad_fragment")
        if start == 0 and p.proto < 0:
            p.proto = proto
        # Keep only the bytes no earlier fragment covered (the first copy of a byte wins).
        cur = start
        added = 0
        fresh = []
        for ps, pe, _ in pieces:
            if pe <= cur:
                continue
            if ps >= end:
                break
            if ps > cur:
                fresh.append((cur, ps, data[cur - start:ps - start]))
                added += ps - cur
            cur = pe
            if cur >= end:
                break
        if cur < end:
            fresh.append((cur, end, data[cur - start:]))
            added += end - cur
        if fresh:
            pieces.extend(fresh)
            pieces.sort(key=_piece_start)
            if len(pieces) > MAX_PIECES:
                self._drop(key)  # held never included this fragment's bytes
                raise FrameSkip("fragment_limit")
            p.covered += added
            self.held += added
        if p.total >= 0 and p.covered == p.total and p.proto >= 0:
            del pending[key]
            self.held -= p.covered
            return p.proto, b"".join([piece[2] for piece in pieces])
        raise FrameSkip("fragment_held")


def _piece_start(piece: tuple[int, int, bytes]) -> int:
    return piece[0]


def ipv4(buf: bytes, off: int, end: int, ts: float,
         frags: FragmentReassembler) -> tuple[bytes, int, int, int, bytes, bytes]:
    """Parse the IPv4 header at *off*: ``(buf, payload_off, payload_end, proto, src, dst)``.

    The payload end honours the total length (trailing Ethernet padding / FCS is not payload). A
    fragment goes to *frags*; when it completes a datagram the returned *buf* is the reassembled
    payload (offsets 0..len).
    """
    if off + 20 > end:
        raise FrameSkip("truncated")
    vihl: int  # declared: struct gives Any; compiled, typed locals keep the arithmetic native
    total: int
    ident: int
    frag: int
    proto: int
    src: bytes
    dst: bytes
    vihl, total, ident, frag, proto, src, dst = _V4.unpack_from(buf, off)
    ihl = (vihl & 0x0F) << 2
    if vihl >> 4 != 4 or ihl < 20:
        raise FrameSkip("bad_ip_header")
    if total == 0:  # segmentation offload on the capturing host: the frame holds the datagram
        total = end - off
    elif off + total > end:
        raise FrameSkip("truncated")
    if total < ihl:
        raise FrameSkip("bad_ip_header")
    pend = off + total
    off += ihl
    if frag & 0x3FFF:  # MF set or offset non-zero
        if proto not in USEFUL_PROTOS:
            raise FrameSkip("non_tcp")
        proto, buf = frags.add((src, dst, proto, ident), (frag & 0x1FFF) << 3, buf[off:pend],
                               bool(frag & 0x2000), proto, ts)
        off, pend = 0, len(buf)
    return buf, off, pend, proto, src, dst


def ipv6(buf: bytes, off: int, end: int, ts: float,
         frags: FragmentReassembler) -> tuple[bytes, int, int, int, bytes, bytes]:
    """Parse the IPv6 header at *off* and its extension headers; same result as :func:`ipv4`."""
    if off + 40 > end:
        raise FrameSkip("truncated")
    if buf[off] >> 4 != 6:
        raise FrameSkip("bad_ip_header")
    plen, nh, src, dst = _V6.unpack_from(buf, off)
    off += 40
    if plen == 0:  # jumbogram or segmentation offload: up to the end of the frame
        pend = end
    else:
        pend = off + plen
        if pend > end:
            raise FrameSkip("truncated")
    for _ in range(MAX_EXT_HEADERS):
        if nh in _EXT_GENERIC:
            if off + 8 > pend:
                raise FrameSkip("bad_ip_header")
            nh = buf[off]
            off += (buf[off + 1] + 1) << 3
        elif nh == _EXT_AH:
            if off + 8 > pend:
                raise FrameSkip("bad_ip_header")
            nh = buf[off]
            off += (buf[off + 1] + 2) << 2
        elif nh == _EXT_FRAGMENT:
            if off + 8 > pend:
                raise FrameSkip("bad_ip_header")
            inner, fo, ident = _FRAG6.unpack_from(buf, off)
            off += 8
            if fo & 0xFFF9 == 0:  # atomic fragment (offset 0, M = 0): nothing to reassemble
                nh = inner
                continue
            nh, buf = frags.add((src, dst, ident), fo & 0xFFF8, buf[off:pend], bool(fo & 1), inner, ts)
            off, pend = 0, len(buf)
        else:
            if off > pend:
                raise FrameSkip("bad_ip_header")
            return buf, off, pend, nh, src, dst
    raise FrameSkip("bad_ip_header")
