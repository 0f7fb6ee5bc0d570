"""Build frames and capture files for tests.

Packet builders return ``bytes`` with correct length fields (IPv4 header checksums are computed, TCP/UDP
checksums are left at zero). Compose them inside out::

    frame = ethernet(ipv4(tcp(b"hello", sport=40000, dport=443, seq=1, ack=1)))
    data = pcap_bytes([(1.0, frame)])

Addresses are text (``"10.0.0.1"``, ``"2001:db8::1"``) or packed bytes. Capture writers: :func:`pcap_bytes`
(both byte orders, micro/nanosecond), :class:`Pcapng` (sections, interfaces with ``if_tsresol`` /
``if_tsoffset``, Enhanced/Simple/obsolete Packet Blocks, Decryption Secrets Blocks anywhere) and
:func:`write_capture` (optionally gzip). :func:`tcp_conversation` turns the two byte streams of a
connection into :class:`~tlsmirror.frames.events.TcpSegment` events (handshake, MSS-sized data, FIN) and
:func:`segment_frames` / :func:`conversation_pcap` turn those into captured frames.
"""

from __future__ import annotations

import gzip as _gzip
import ipaddress
import os
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from tlsmirror.frames.events import ACK, FIN, PSH, SYN, TcpSegment

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8
ETH_TEB = 0x6558
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")

TLSK = 0x544C534B  # pcapng Decryption Secrets Block: NSS key log
DSB_TYPE = 0x0000000A


# ---------------------------------------------------------------- addresses / checksums

def addr(a: str | bytes) -> bytes:
    """Packed IPv4/IPv6 address from text (bytes are returned unchanged)."""
    if isinstance(a, bytes):
        return a
    return ipaddress.ip_address(a).packed


def ip_checksum(header: bytes) -> int:
    """RFC 1071 one's complement sum of 16-bit words."""
    if len(header) % 2:
        header += b"\0"
    s: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# ---------------------------------------------------------------- transport

def tcp(payload: bytes = b"", *, sport: int = 40000, dport: int = 443, seq: int = 0, ack: int = 0,
        flags: int = ACK, window: int = 65535, options: bytes = b"") -> bytes:
    """TCP header (+ *options*, zero-padded to 4 bytes) and payload; checksum zero."""
    options += b"\0" * (-len(options) % 4)
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, doff << 4,
                       flags, window, 0, 0) + options + payload


def tcp_mss_option(mss: int = 1460) -> bytes:
    """The MSS option (kind 2) as sent in SYN segments."""
    return struct.pack("!BBH", 2, 4, mss)


def udp(payload: bytes, *, sport: int = 50000, dport: int = 53) -> bytes:
    """UDP header and payload; checksum zero."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


# ---------------------------------------------------------------- IP

def ipv4(payload: bytes, *, src: str | bytes = "10.0.0.1", dst: str | bytes = "10.0.0.2", proto: int = 6,
         ident: int = 0, ttl: int = 64, df: bool = False, mf: bool = False, frag_offset: int = 0,
         options: bytes = b"", total_length: int | None = None) -> bytes:
    """IPv4 header (+ *options*, zero-padded) and payload. *frag_offset* is in bytes (multiple of 8)."""
    options += b"\0" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload) if total_length is None else total_length
    frag = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_offset >> 3)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, frag, ttl, proto, 0, addr(src),
                      addr(dst)) + options
    csum = ip_checksum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + payload


def ipv6_ext(kind: int, body: bytes = b"") -> tuple[int, bytes]:
    """An IPv6 extension header for :func:`ipv6`'s *ext* list (next header and length filled in there).

    *kind* 0/43/60/...: generic (body padded so the header is a multiple of 8 bytes); 51: AH (body =
    reserved, SPI, sequence, ICV; padded to a multiple of 8); 44: fragment (use :func:`ipv6_frag_ext`).
    """
    if kind == 44:
        if len(body) != 6:
            raise ValueError("fragment header body is 6 bytes (offset/flags, identification)")
        return kind, body
    body += b"\0" * (-(len(body) + 2) % 8)
    return kind, body


def ipv6_frag_ext(offset: int, more: bool, ident: int) -> tuple[int, bytes]:
    """IPv6 fragment extension header (offset in bytes, multiple of 8)."""
    return 44, struct.pack("!HI", (offset & 0xFFF8) | (1 if more else 0), ident)


def _ext_bytes(ext: Sequence[tuple[int, bytes]], final_nh: int) -> tuple[int, bytes]:
    """Chain extension headers; return (first next-header value, bytes)."""
    out = b""
    nh = final_nh
    for kind, body in reversed(ext):
        if kind == 44:
            out = bytes([nh, 0]) + body + out
        elif kind == 51:
            out = bytes([nh, (len(body) + 2) // 4 - 2]) + body + out
        else:
            out = bytes([nh, (len(body) + 2) // 8 - 1]) + body + out
        nh = kind
    return nh, out


def ipv6(payload: bytes, *, src: str | bytes = "2001:db8::1", dst: str | bytes = "2001:db8::2",
         next_header: int = 6, ext: Sequence[tuple[int, bytes]] = (), hop_limit: int = 64,
         payload_length: int | None = None) -> bytes:
    """IPv6 header, extension headers *ext* (from :func:`ipv6_ext`, in order) and payload."""
    nh, exts = _ext_bytes(ext, next_header)
    plen = len(exts) + len(payload) if payload_length is None else payload_length
    return struct.pack("!IHBB16s16s", 6 << 28, plen, nh, hop_limit, addr(src), addr(dst)) + exts + payload


def ipv4_fragments(packet: bytes, size: int) -> list[bytes]:
    """Split an IPv4 packet into fragments carrying at most *size* payload bytes (multiple of 8)."""
    if size % 8 or size <= 0:
        raise ValueError("fragment size must be a positive multiple of 8")
    ihl = (packet[0] & 15) * 4
    hdr, payload = packet[:ihl], packet[ihl:struct.unpack_from("!H", packet, 2)[0]]
    out = []
    for off in range(0, len(payload), size):
        part = payload[off:off + size]
        more = off + size < len(payload)
        frag = (off >> 3) | (0x2000 if more else 0)
        h = hdr[:2] + struct.pack("!H", ihl + len(part)) + hdr[4:6] + struct.pack("!H", frag) + hdr[8:10]
        h += b"\0\0" + hdr[12:]
        h = h[:10] + struct.pack("!H", ip_checksum(h)) + h[12:]
        out.append(h + part)
    return out


def ipv6_fragments(packet: bytes, size: int, ident: int = 0x12345678) -> list[bytes]:
    """Split an IPv6 packet into fragments; everything after the 40-byte base header is fragmentable."""
    if size % 8 or size <= 0:
        raise ValueError("fragment size must be a positive multiple of 8")
    nh = packet[6]
    body = packet[40:]
    out = []
    for off in range(0, len(body), size):
        part = body[off:off + size]
        more = off + size < len(body)
        fh = bytes([nh, 0]) + struct.pack("!HI", off | (1 if more else 0), ident)
        base = packet[:4] + struct.pack("!HB", len(fh) + len(part), 44) + packet[7:40]
        out.append(base + fh + part)
    return out


# ---------------------------------------------------------------- link layers

def ethernet(payload: bytes, *, ethertype: int | None = None, vlans: Sequence[int | tuple[int, int]] = (),
             src: bytes = MAC_A, dst: bytes = MAC_B, pad: bool = True, fcs: bool = False) -> bytes:
    """Ethernet II frame. *ethertype* defaults from the IP version nibble of *payload*.

    *vlans*: outermost first; an int is an 802.1Q VLAN id, ``(tpid, vid)`` picks the tag type (QinQ:
    ``[(0x88A8, 100), 200]``). *pad* zero-pads to the 60-byte minimum; *fcs* appends 4 junk bytes.
    """
    if ethertype is None:
        ethertype = ETH_IPV6 if payload[:1] and payload[0] >> 4 == 6 else ETH_IPV4
    tags = b""
    for tag in vlans:
        tpid, vid = (ETH_VLAN, tag) if isinstance(tag, int) else tag
        tags += struct.pack("!HH", tpid, vid & 0x0FFF)
    frame = dst + src + tags + struct.pack("!H", ethertype) + payload
    if pad and len(frame) < 60:
        frame += b"\0" * (60 - len(frame))
    if fcs:
        frame += b"\xde\xad\xbe\xef"
    return frame


def _ethertype_of(payload: bytes) -> int:
    return ETH_IPV6 if payload[0] >> 4 == 6 else ETH_IPV4


def sll(payload: bytes, *, protocol: int | None = None, packet_type: int = 0) -> bytes:
    """Linux cooked capture v1 (linktype 113) header + payload."""
    proto = _ethertype_of(payload) if protocol is None else protocol
    return struct.pack("!HHH8sH", packet_type, 1, 6, MAC_A + b"\0\0", proto) + payload


def sll2(payload: bytes, *, protocol: int | None = None, ifindex: int = 2) -> bytes:
    """Linux cooked capture v2 (linktype 276) header + payload."""
    proto = _ethertype_of(payload) if protocol is None else protocol
    return struct.pack("!HHIHBB8s", proto, 0, ifindex, 1, 0, 6, MAC_A + b"\0\0") + payload


def loopback(payload: bytes, *, family: int | None = None, byteorder: str = "little") -> bytes:
    """BSD loopback (linktype 0; *byteorder* = writer's host order) or OpenBSD loop (108: "big")."""
    fam = (24 if payload[0] >> 4 == 6 else 2) if family is None else family
    return fam.to_bytes(4, byteorder) + payload  # type: ignore[arg-type]


# ---------------------------------------------------------------- tunnels

def vxlan(inner_frame: bytes, *, vni: int = 1) -> bytes:
    """VXLAN header + inner Ethernet frame (wrap in ``udp(..., dport=4789)``)."""
    return struct.pack("!BxxxI", 0x08, vni << 8) + inner_frame


def geneve(inner: bytes, *, protocol: int = ETH_TEB, options: bytes = b"", vni: int = 1) -> bytes:
    """GENEVE header (+ *options*, padded to 4 bytes) + inner (wrap in ``udp(..., dport=6081)``)."""
    options += b"\0" * (-len(options) % 4)
    return struct.pack("!BBHI", len(options) // 4, 0, protocol, vni << 8) + options + inner


def gre(inner: bytes, *, protocol: int, checksum: bool = False, key: int | None = None,
        seq: int | None = None) -> bytes:
    """GRE header (RFC 2784/2890 optional fields) + inner (wrap in ``ipv4(..., proto=47)``)."""
    flags = (0x8000 if checksum else 0) | (0x2000 if key is not None else 0)
    flags |= 0x1000 if seq is not None else 0
    out = struct.pack("!HH", flags, protocol)
    if checksum:
        out += b"\0\0\0\0"
    if key is not None:
        out += struct.pack("!I", key)
    if seq is not None:
        out += struct.pack("!I", seq)
    return out + inner


def erspan2(inner_frame: bytes, *, session: int = 1, vlan: int = 0, index: int = 0) -> bytes:
    """ERSPAN type II header + Ethernet frame (wrap in ``gre(..., protocol=0x88BE, seq=n)``)."""
    return struct.pack("!HHI", (1 << 12) | vlan, session & 0x3FF, index & 0xFFFFF) + inner_frame


def erspan3(inner: bytes, *, session: int = 1, frame_type: int = 0, subheader: bool = False) -> bytes:
    """ERSPAN type III header (+ optional 8-byte subheader) + inner (``gre(..., protocol=0x22EB)``)."""
    word3 = (frame_type & 0x1F) << 10 | (1 if subheader else 0)
    hdr = struct.pack("!HHIHH", 2 << 12, session & 0x3FF, 0x01020304, 0, word3)
    if subheader:
        hdr += b"\0" * 8
    return hdr + inner


# ---------------------------------------------------------------- capture files

def pcap_bytes(frames: Iterable[tuple[float, bytes]], *, linktype: int = 1, byteorder: str = "<",
               nanosecond: bool = False, snaplen: int = 262144) -> bytes:
    """Classic pcap file: *byteorder* "<" or ">", micro- or nanosecond timestamps."""
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    scale = 1_000_000_000 if nanosecond else 1_000_000
    out = [struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts, data in frames:
        units = round(ts * scale)
        out.append(struct.pack(byteorder + "IIII", units // scale, units % scale, len(data), len(data)))
        out.append(data)
    return b"".join(out)


def _opt(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


class Pcapng:
    """pcapng builder; blocks are written in call order.

    ``Pcapng().interface(1).packet(1.5, frame).secrets(keylog).packet(2.0, frame2).to_bytes()``.
    Starts with a section in *byteorder*; :meth:`section` opens another one (interfaces restart at 0).
    """

    def __init__(self, byteorder: str = "<") -> None:
        self._blocks: list[bytes] = []
        self._ifaces: list[tuple[int, int]] = []  # (divisor, offset) per interface of the current section
        self.section(byteorder)

    def _block(self, btype: int, body: bytes) -> None:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        head = struct.pack(self.order + "II", btype, n)
        self._blocks.append(head + body + struct.pack(self.order + "I", n))

    def section(self, byteorder: str = "<") -> Pcapng:
        """Section Header Block (byte order *byteorder*)."""
        self.order = byteorder
        self._ifaces = []
        self._block(0x0A0D0D0A, struct.pack(byteorder + "IHHq", 0x1A2B3C4D, 1, 0, -1))
        return self

    def interface(self, linktype: int = 1, *, tsresol: int | None = None, tsoffset: int = 0,
                  snaplen: int = 0, name: str | None = None) -> Pcapng:
        """Interface Description Block. *tsresol* is the raw option byte (6 = µs, 9 = ns, 0x80|k = 2^-k)."""
        opts = b""
        if name is not None:
            opts += _opt(self.order, 2, name.encode())
        if tsresol is not None:
            opts += _opt(self.order, 9, bytes([tsresol]))
        if tsoffset:
            opts += _opt(self.order, 14, struct.pack(self.order + "q", tsoffset))
        if opts:
            opts += _opt(self.order, 0, b"")
        self._block(1, struct.pack(self.order + "HHI", linktype, 0, snaplen) + opts)
        res = 6 if tsresol is None else tsresol
        divisor = 2 ** (res & 0x7F) if res & 0x80 else 10**res
        self._ifaces.append((divisor, tsoffset))
        return self

    def _units(self, interface: int, ts: float) -> int:
        divisor, offset = self._ifaces[interface]
        return round((ts - offset) * divisor)

    def packet(self, ts: float, data: bytes, interface: int = 0, *, orig_len: int | None = None,
               comment: str | None = None) -> Pcapng:
        """Enhanced Packet Block."""
        units = self._units(interface, ts)
        opts = _opt(self.order, 1, comment.encode()) + _opt(self.order, 0, b"") if comment else b""
        body = struct.pack(self.order + "IIIII", interface, units >> 32, units & 0xFFFFFFFF, len(data),
                           len(data) if orig_len is None else orig_len)
        self._block(6, body + data + b"\0" * (-len(data) % 4) + opts)
        return self

    def simple_packet(self, data: bytes) -> Pcapng:
        """Simple Packet Block (interface 0, no timestamp)."""
        self._block(3, struct.pack(self.order + "I", len(data)) + data)
        return self

    def obsolete_packet(self, ts: float, data: bytes, interface: int = 0) -> Pcapng:
        """Obsolete Packet Block (type 2)."""
        units = self._units(interface, ts)
        self._block(2, struct.pack(self.order + "HHIIII", interface, 0, units >> 32, units & 0xFFFFFFFF,
                                   len(data), len(data)) + data)
        return self

    def secrets(self, keylog: bytes | str, secrets_type: int = TLSK) -> Pcapng:
        """Decryption Secrets Block (default: TLS key log)."""
        data = keylog.encode() if isinstance(keylog, str) else keylog
        self._block(DSB_TYPE, struct.pack(self.order + "II", secrets_type, len(data)) + data)
        return self

    def block(self, btype: int, body: bytes) -> Pcapng:
        """Any other block (e.g. an unknown type the reader must skip)."""
        self._block(btype, body)
        return self

    def to_bytes(self) -> bytes:
        return b"".join(self._blocks)


def write_capture(path: str | os.PathLike[str], data: bytes, *, gzip: bool = False) -> str:
    """Write capture bytes to *path* (gzip-compressed if asked); return the path as str."""
    with open(path, "wb") as f:
        f.write(_gzip.compress(data) if gzip else data)
    return os.fspath(path)


# ---------------------------------------------------------------- TCP conversations

def tcp_conversation(chunks: Iterable[tuple[int, bytes]], *,
                     client: tuple[str | bytes, int] = ("10.0.0.1", 40000),
                     server: tuple[str | bytes, int] = ("10.0.0.2", 443), mss: int = 1460,
                     client_isn: int = 1000, server_isn: int = 5000, ts: float = 1.0, step: float = 0.001,
                     handshake: bool = True, close: bool = True) -> list[TcpSegment]:
    """TCP segments carrying a conversation.

    *chunks*: ``(direction, data)`` in conversation order, direction 0 = client->server, 1 =
    server->client (as ``tlsmirror.tcp.events.CLIENT``/``SERVER``). Produces SYN, SYN-ACK, ACK (unless
    *handshake* is False: then data starts at ISN+1 as if mid-connection), data split into *mss*-byte
    segments flagged ACK (PSH on a chunk's last one) with seq/ack tracking both sides, then (if
    *close*) FIN-ACK from the client, FIN-ACK from the server and the final ACK. Timestamps start at
    *ts* and grow by *step* per segment. IPv6 when the addresses are IPv6.
    """
    ends = ((addr(client[0]), client[1]), (addr(server[0]), server[1]))
    nxt = [(client_isn + 1) & 0xFFFFFFFF, (server_isn + 1) & 0xFFFFFFFF]
    out: list[TcpSegment] = []
    clock = [ts]

    def emit(d: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> None:
        (src, sport), (dst, dport) = ends[d], ends[1 - d]
        out.append(TcpSegment(clock[0], src, dst, sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags,
                              payload))
        clock[0] += step

    if handshake:
        emit(0, client_isn, 0, SYN)
        emit(1, server_isn, nxt[0], SYN | ACK)
        emit(0, nxt[0], nxt[1], ACK)
    for d, data in chunks:
        for i in range(0, len(data), mss):
            part = data[i:i + mss]
            last = i + mss >= len(data)
            emit(d, nxt[d], nxt[1 - d], ACK | (PSH if last else 0), part)
            nxt[d] = (nxt[d] + len(part)) & 0xFFFFFFFF
    if close:
        emit(0, nxt[0], nxt[1], FIN | ACK)
        nxt[0] = (nxt[0] + 1) & 0xFFFFFFFF
        emit(1, nxt[1], nxt[0], FIN | ACK)
        nxt[1] = (nxt[1] + 1) & 0xFFFFFFFF
        emit(0, nxt[0], nxt[1], ACK)
    return out


def segment_packet(seg: TcpSegment, *, syn_mss: int | None = 1460) -> bytes:
    """The IPv4/IPv6 packet carrying *seg* (SYNs get an MSS option unless *syn_mss* is None)."""
    opts = tcp_mss_option(syn_mss) if seg.flags & SYN and syn_mss else b""
    t = tcp(seg.payload, sport=seg.sport, dport=seg.dport, seq=seg.seq, ack=seg.ack, flags=seg.flags,
            options=opts)
    if len(seg.src) == 16:
        return ipv6(t, src=seg.src, dst=seg.dst)
    return ipv4(t, src=seg.src, dst=seg.dst, df=True)


def segment_frames(segments: Iterable[TcpSegment], *, link: str = "ethernet") -> list[tuple[float, bytes]]:
    """``(ts, frame)`` per segment; *link*: "ethernet" (linktype 1), "raw" (101) or "sll" (113)."""
    if link == "ethernet":
        return [(s.ts, ethernet(segment_packet(s))) for s in segments]
    if link == "sll":
        return [(s.ts, sll(segment_packet(s))) for s in segments]
    if link == "raw":
        return [(s.ts, segment_packet(s)) for s in segments]
    raise ValueError(f"unknown link {link!r}")


LINKTYPES = {"ethernet": 1, "raw": 101, "sll": 113}


def conversation_pcap(chunks: Iterable[tuple[int, bytes]], *, link: str = "ethernet",
                      keylog: bytes | str | None = None, **kw: Any) -> bytes:
    """A capture of one conversation (see :func:`tcp_conversation` for *kw*).

    Classic pcap, or pcapng with the key log in a Decryption Secrets Block before the first packet
    when *keylog* is given.
    """
    frames = segment_frames(tcp_conversation(chunks, **kw), link=link)
    if keylog is None:
        return pcap_bytes(frames, linktype=LINKTYPES[link])
    png = Pcapng().interface(LINKTYPES[link], tsresol=9).secrets(keylog)
    for ts, frame in frames:
        png.packet(ts, frame)
    return png.to_bytes()
