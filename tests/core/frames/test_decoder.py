"""Tests of the frames stage: link layers, VLAN, IPv4/IPv6 (+fragments, extension headers), tunnels, TCP."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.pcapwriter import (
    ETH_QINQ,
    ETH_TEB,
    addr,
    erspan2,
    erspan3,
    ethernet,
    geneve,
    gre,
    ipv4,
    ipv4_fragments,
    ipv6,
    ipv6_ext,
    ipv6_frag_ext,
    ipv6_fragments,
    loopback,
    sll,
    sll2,
    tcp,
    tcp_conversation,
    udp,
    vxlan,
)
from tlsmirror.frames.decoder import FrameDecoder
from tlsmirror.frames.events import ACK, FIN, PSH, SYN, TcpSegment
from tlsmirror.frames.layers import REASONS

PAYLOAD = bytes(range(256)) * 6  # 1536 bytes, every byte value


def seg_v4(payload: bytes = b"hello", **kw: object) -> bytes:
    """An IPv4 packet carrying a TCP segment 10.0.0.1:40000 -> 10.0.0.2:443."""
    return ipv4(tcp(payload, sport=40000, dport=443, seq=123456789, ack=987654321, flags=ACK | PSH), **kw)


def seg_v6(payload: bytes = b"hello", **kw: object) -> bytes:
    return ipv6(tcp(payload, sport=40000, dport=443, seq=123456789, ack=987654321, flags=ACK | PSH), **kw)


def check_v4(seg: TcpSegment | None, payload: bytes = b"hello", ts: float = 1.5) -> None:
    assert seg is not None
    assert seg == TcpSegment(ts, addr("10.0.0.1"), addr("10.0.0.2"), 40000, 443, 123456789, 987654321,
                             ACK | PSH, payload)


def check_v6(seg: TcpSegment | None, payload: bytes = b"hello") -> None:
    assert seg is not None
    assert (seg.src, seg.dst) == (addr("2001:db8::1"), addr("2001:db8::2"))
    assert (seg.sport, seg.dport, seg.seq, seg.ack) == (40000, 443, 123456789, 987654321)
    assert seg.flags == ACK | PSH
    assert seg.payload == payload


def skipped(dec: FrameDecoder) -> dict[str, int]:
    return {k: v for k, v in dec.counters.items() if v}


# ------------------------------------------------------------------ plain Ethernet / IPv4 / TCP

def test_counters_start_at_zero_for_every_reason() -> None:
    dec = FrameDecoder()
    assert dec.counters == dict.fromkeys(REASONS, 0)


def test_ethernet_ipv4_tcp_fast_path() -> None:
    dec = FrameDecoder()
    check_v4(dec.decode(1, ethernet(seg_v4(PAYLOAD[:1460])), 1.5), PAYLOAD[:1460])
    assert skipped(dec) == {}


def test_ethernet_padding_and_fcs_are_not_payload() -> None:
    dec = FrameDecoder()
    frame = ethernet(seg_v4(b"x"), fcs=True)
    assert len(frame) == 64  # padded to 60, plus 4 FCS bytes
    check_v4(dec.decode(1, frame, 1.5), b"x")
    check_v4(dec.decode(1, ethernet(seg_v4(b"")), 1.5), b"")


def test_tcp_options_and_ip_options_are_skipped() -> None:
    dec = FrameDecoder()
    pkt = ipv4(tcp(b"data", sport=40000, dport=443, seq=123456789, ack=987654321, flags=ACK | PSH,
                   options=b"\x01\x01\x08\x0a" + b"\0" * 8), options=b"\x94\x04\0\0")  # router alert
    check_v4(dec.decode(1, ethernet(pkt), 1.5), b"data")


def test_syn_flags_and_mss_option() -> None:
    dec = FrameDecoder()
    syn = tcp(sport=1, dport=2, seq=7, flags=SYN, options=b"\x02\x04\x05\xb4")
    seg = dec.decode(1, ethernet(ipv4(syn)), 0.0)
    assert seg is not None and seg.flags == SYN and seg.seq == 7 and seg.payload == b""


def test_ethernet_ipv6_tcp() -> None:
    dec = FrameDecoder()
    check_v6(dec.decode(1, ethernet(seg_v6(PAYLOAD[:1400])), 1.0), PAYLOAD[:1400])


def test_segmentation_offload_total_length_zero() -> None:
    dec = FrameDecoder()
    big = PAYLOAD * 4  # a 6 KiB "segment" handed up before the NIC split it
    check_v4(dec.decode(1, ethernet(seg_v4(big, total_length=0)), 1.5), big)
    check_v6(dec.decode(1, ethernet(seg_v6(big, payload_length=0)), 1.5), big)


# ------------------------------------------------------------------ link types

@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip_picks_version_by_nibble(linktype: int) -> None:
    dec = FrameDecoder()
    check_v4(dec.decode(linktype, seg_v4(), 1.5))
    check_v6(dec.decode(linktype, seg_v6(), 1.5))
    assert dec.decode(linktype, b"\x50" + bytes(40), 1.5) is None
    assert skipped(dec) == {"non_ip": 1}


def test_ipv4_and_ipv6_linktypes() -> None:
    dec = FrameDecoder()
    check_v4(dec.decode(228, seg_v4(), 1.5))
    check_v6(dec.decode(229, seg_v6(), 1.5))
    assert dec.decode(228, seg_v6(), 1.5) is None  # wrong version for the link type
    assert skipped(dec) == {"bad_ip_header": 1}


def test_linux_sll_and_sll2() -> None:
    dec = FrameDecoder()
    check_v4(dec.decode(113, sll(seg_v4()), 1.5))
    check_v6(dec.decode(113, sll(seg_v6()), 1.5))
    check_v4(dec.decode(276, sll2(seg_v4()), 1.5))
    check_v6(dec.decode(276, sll2(seg_v6()), 1.5))
    check_v4(dec.decode(113, sll(struct.pack("!HH", 0x8100, 0x0800) + seg_v4(), protocol=0x8100), 1.5))
    assert dec.decode(113, sll(b"\0" * 28, protocol=0x0806), 1.5) is None
    assert dec.decode(276, b"\x08\x00" + bytes(10), 1.5) is None
    assert skipped(dec) == {"non_ip": 1, "truncated": 1}


@pytest.mark.parametrize("byteorder", ["little", "big"])
@pytest.mark.parametrize("family6", [24, 28, 30])
def test_bsd_loopback_both_byte_orders(byteorder: str, family6: int) -> None:
    dec = FrameDecoder()
    check_v4(dec.decode(0, loopback(seg_v4(), byteorder=byteorder), 1.5))
    check_v6(dec.decode(0, loopback(seg_v6(), family=family6, byteorder=byteorder), 1.5))
    assert dec.decode(0, loopback(seg_v4(), family=17, byteorder=byteorder), 1.5) is None
    assert skipped(dec) == {"non_ip": 1}


def test_openbsd_loop_network_order() -> None:
    dec = FrameDecoder()
    check_v4(dec.decode(108, loopback(seg_v4(), byteorder="big"), 1.5))
    check_v6(dec.decode(108, loopback(seg_v6(), family=24, byteorder="big"), 1.5))


def test_unknown_linktype_counted() -> None:
    dec = FrameDecoder()
    assert dec.decode(147, ethernet(seg_v4()), 1.5) is None
    assert skipped(dec) == {"unknown_linktype": 1}


# ------------------------------------------------------------------ VLAN, MPLS, PPPoE

@pytest.mark.parametrize("vlans", [[100], [(ETH_QINQ, 10), 20], [(0x9100, 1), (0x88A8, 2), 3]])
def test_vlan_tags_stacked(vlans: list[int | tuple[int, int]]) -> None:
    dec = FrameDecoder()
    check_v4(dec.decode(1, ethernet(seg_v4(), vlans=vlans, fcs=True), 1.5))
    check_v6(dec.decode(1, ethernet(seg_v6(), vlans=vlans), 1.5))


def test_mpls_label_stack() -> None:
    dec = FrameDecoder()
    labels = struct.pack("!II", (100 << 12) | 64, (200 << 12) | 0x100 | 64)  # second is bottom of stack
    check_v4(dec.decode(1, ethernet(labels + seg_v4(), ethertype=0x8847), 1.5))
    check_v6(dec.decode(1, ethernet(labels + seg_v6(), ethertype=0x8847), 1.5))


def test_pppoe_session() -> None:
    dec = FrameDecoder()
    body = seg_v4()
    pppoe = struct.pack("!BBHHH", 0x11, 0, 1, len(body) + 2, 0x0021) + body
    check_v4(dec.decode(1, ethernet(pppoe, ethertype=0x8864), 1.5))


def test_arp_and_llc_are_non_ip() -> None:
    dec = FrameDecoder()
    assert dec.decode(1, ethernet(bytes(28), ethertype=0x0806), 0.0) is None
    assert dec.decode(1, ethernet(b"\xaa\xaa\x03" + bytes(40), ethertype=46), 0.0) is None
    assert skipped(dec) == {"non_ip": 2}


# ------------------------------------------------------------------ non-TCP, malformed

def test_non_tcp_counted() -> None:
    dec = FrameDecoder()
    assert dec.decode(1, ethernet(ipv4(udp(b"dns"), proto=17)), 0.0) is None
    assert dec.decode(1, ethernet(ipv4(b"\x08\0" + bytes(6), proto=1)), 0.0) is None
    assert dec.decode(1, ethernet(ipv6(b"\0" * 16, next_header=50)), 0.0) is None  # ESP
    assert dec.decode(1, ethernet(ipv6(b"", next_header=59)), 0.0) is None  # no next header
    assert skipped(dec) == {"non_tcp": 4}


def test_truncated_frames() -> None:
    dec = FrameDecoder()
    full = ethernet(seg_v4(PAYLOAD[:500]))
    for cut in (0, 5, 13, 20, 33, 40, 60, 300):
        assert dec.decode(1, full[:cut], 0.0) is None
    assert dec.decode(1, ethernet(seg_v6(PAYLOAD[:500]))[:300], 0.0) is None
    assert set(skipped(dec)) <= {"truncated", "bad_tcp_header"}
    assert sum(dec.counters.values()) == 9


def test_bad_headers() -> None:
    dec = FrameDecoder()
    good = seg_v4()
    assert dec.decode(101, bytes([0x44]) + good[1:], 0.0) is None  # IHL 4
    assert dec.decode(101, good[:2] + struct.pack("!H", 10) + good[4:], 0.0) is None  # total < IHL
    assert skipped(dec) == {"bad_ip_header": 2}
    t = bytearray(tcp(b"abc"))
    t[12] = 0x40  # data offset 4
    assert dec.decode(101, ipv4(bytes(t)), 0.0) is None
    t[12] = 0xF0  # data offset 15 (60 bytes) > 23 available
    assert dec.decode(101, ipv4(bytes(t)), 0.0) is None
    assert dec.decode(101, ipv4(b"short"), 0.0) is None
    assert skipped(dec) == {"bad_ip_header": 2, "bad_tcp_header": 3}
    # ext header chain running past the payload
    assert dec.decode(229, ipv6(b"\x06\x05" + bytes(6), next_header=0), 0.0) is None
    assert dec.counters["bad_ip_header"] == 3


# ------------------------------------------------------------------ tunnels

def test_vxlan_default_and_custom_port() -> None:
    inner = ethernet(seg_v4(PAYLOAD[:1000]), vlans=[5])
    outer = ethernet(ipv4(udp(vxlan(inner, vni=42), sport=55555, dport=4789), src="192.0.2.1",
                          dst="192.0.2.2", proto=17))
    dec = FrameDecoder()
    check_v4(dec.decode(1, outer, 1.5), PAYLOAD[:1000])
    custom = ethernet(ipv6(udp(vxlan(ethernet(seg_v6())), dport=8472), next_header=17))
    assert dec.decode(1, custom, 1.5) is None
    assert skipped(dec) == {"non_tcp": 1}
    check_v6(FrameDecoder(vxlan_ports=(4789, 8472)).decode(1, custom, 1.5))


@pytest.mark.parametrize("options", [b"", b"\x01\x02\x03\x04" * 3])
def test_geneve_protocols(options: bytes) -> None:
    dec = FrameDecoder()

    def wrap(inner: bytes, protocol: int) -> bytes:
        return ethernet(ipv4(udp(geneve(inner, protocol=protocol, options=options), dport=6081), proto=17))

    check_v4(dec.decode(1, wrap(ethernet(seg_v4()), ETH_TEB), 1.5))
    check_v4(dec.decode(1, wrap(seg_v4(), 0x0800), 1.5))
    check_v6(dec.decode(1, wrap(seg_v6(), 0x86DD), 1.5))
    bad_version = bytearray(wrap(seg_v4(), 0x0800))
    bad_version[14 + 20 + 8] |= 0x40
    assert dec.decode(1, bytes(bad_version), 1.5) is None
    assert dec.decode(1, wrap(bytes(40), 0x0806), 1.5) is None
    assert skipped(dec) == {"unsupported_tunnel": 1, "non_ip": 1}


@pytest.mark.parametrize("fields", [{}, {"key": 7}, {"checksum": True, "key": 1, "seq": 9}])
def test_gre(fields: dict[str, object]) -> None:
    dec = FrameDecoder()
    check_v4(dec.decode(1, ethernet(ipv4(gre(seg_v4(), protocol=0x0800, **fields), proto=47)), 1.5))  # type: ignore[arg-type]
    check_v6(dec.decode(1, ethernet(ipv4(gre(seg_v6(), protocol=0x86DD, **fields), proto=47)), 1.5))  # type: ignore[arg-type]
    teb = gre(ethernet(seg_v4(), vlans=[3]), protocol=ETH_TEB, **fields)  # type: ignore[arg-type]
    check_v4(dec.decode(1, ethernet(ipv6(teb, next_header=47)), 1.5))


def test_gre_unsupported_versions() -> None:
    dec = FrameDecoder()
    pptp = struct.pack("!HH", 0x3001, 0x880B) + bytes(20)
    assert dec.decode(101, ipv4(pptp, proto=47), 0.0) is None
    assert skipped(dec) == {"unsupported_tunnel": 1}


def test_erspan_types() -> None:
    dec = FrameDecoder()
    inner = ethernet(seg_v4(PAYLOAD[:700]), vlans=[12])
    type1 = gre(inner, protocol=0x88BE)
    type2 = gre(erspan2(inner, session=3), protocol=0x88BE, seq=77)
    type3 = gre(erspan3(inner), protocol=0x22EB, seq=1)
    type3_sub = gre(erspan3(inner, subheader=True), protocol=0x22EB, seq=2)
    type3_ip = gre(erspan3(seg_v6(PAYLOAD[:700]), frame_type=2), protocol=0x22EB, seq=3)
    for g in (type1, type2, type3, type3_sub):
        check_v4(dec.decode(1, ethernet(ipv4(g, proto=47)), 1.5), PAYLOAD[:700])
    check_v6(dec.decode(1, ethernet(ipv4(type3_ip, proto=47)), 1.5), PAYLOAD[:700])
    assert skipped(dec) == {}


def test_ip_in_ip() -> None:
    dec = FrameDecoder()
    check_v4(dec.decode(1, ethernet(ipv4(seg_v4(), src="192.0.2.1", dst="192.0.2.2", proto=4)), 1.5))
    check_v6(dec.decode(1, ethernet(ipv4(seg_v6(), proto=41)), 1.5))
    check_v4(dec.decode(1, ethernet(ipv6(seg_v4(), next_header=4)), 1.5))


def test_nesting_is_bounded() -> None:
    dec = FrameDecoder()
    pkt = seg_v4()
    for _ in range(30):
        pkt = ipv4(pkt, proto=4)
    assert dec.decode(101, pkt, 0.0) is None
    assert skipped(dec) == {"too_deep": 1}


# ------------------------------------------------------------------ IPv6 extension headers

def test_ipv6_extension_headers_walked() -> None:
    dec = FrameDecoder()
    ah_body = b"\0\0" + struct.pack("!II", 0x1000, 1) + bytes(12)  # reserved, SPI, seq, 96-bit ICV
    ext = [ipv6_ext(0, b"\x01\x04\0\0\0\0"), ipv6_ext(43, bytes(22)), ipv6_ext(60, b"\x01\x02\0\0"),
           ipv6_ext(51, ah_body), ipv6_frag_ext(0, False, 99), ipv6_ext(60, bytes(14))]
    check_v6(dec.decode(1, ethernet(seg_v6(PAYLOAD[:900], ext=ext)), 1.5), PAYLOAD[:900])
    assert skipped(dec) == {}


def test_ipv6_extension_chain_is_bounded() -> None:
    dec = FrameDecoder()
    assert dec.decode(229, seg_v6(ext=[ipv6_ext(60)] * 20), 0.0) is None
    assert skipped(dec) == {"bad_ip_header": 1}


# ------------------------------------------------------------------ fragments

def frags_v4(payload: bytes = PAYLOAD, size: int = 512, ident: int = 7) -> list[bytes]:
    return [ethernet(f) for f in ipv4_fragments(seg_v4(payload, ident=ident), size)]


@pytest.mark.parametrize("order", ["in_order", "reversed", "shuffled"])
def test_ipv4_fragments_reassembled(order: str) -> None:
    frames = frags_v4()
    assert len(frames) == 4
    if order == "reversed":
        frames.reverse()
    elif order == "shuffled":
        frames = [frames[2], frames[0], frames[3], frames[1]]
    dec = FrameDecoder()
    results = [dec.decode(1, f, 1.5) for f in frames]
    assert results[:-1] == [None, None, None]
    check_v4(results[-1], PAYLOAD)
    assert skipped(dec) == {"fragment_held": 3}
    assert dec.fragments_pending == 0 and dec.fragment_bytes == 0


def test_ipv4_fragments_duplicates_and_overlap_first_wins() -> None:
    dec = FrameDecoder()
    pkt = seg_v4(b"A" * 64, ident=9)  # 20 IP + 20 TCP + 64 = 84 bytes payload for IP
    hdr, body = pkt[:20], pkt[20:]

    def frag(off: int, data: bytes, more: bool) -> bytes:
        return ethernet(ipv4(data, ident=9, frag_offset=off, mf=more))

    assert dec.decode(1, frag(0, body[:48], True), 1.0) is None
    assert dec.decode(1, frag(0, body[:48], True), 1.0) is None  # duplicate
    # overlaps bytes 40..47 with different content: the first copy wins
    assert dec.decode(1, frag(40, b"Z" * 8 + body[48:64], True), 1.0) is None
    seg = dec.decode(1, frag(56, b"Y" * 8 + body[64:], False), 1.0)
    assert seg is not None
    assert seg.payload == b"A" * 64
    assert hdr[9] == 6


def test_ipv4_fragment_inconsistent_ends_drop_datagram() -> None:
    dec = FrameDecoder()
    frames = frags_v4(ident=11)
    assert dec.decode(1, frames[-1], 1.0) is None  # last fragment sets the end
    beyond = ipv4(b"q" * 8, ident=11, frag_offset=len(PAYLOAD) + 40, mf=True)
    assert dec.decode(1, ethernet(beyond), 1.0) is None
    assert dec.counters["bad_fragment"] == 1 and dec.fragments_pending == 0
    huge = ipv4(b"q" * 16, ident=12, frag_offset=65528, mf=False)
    assert dec.decode(101, huge, 1.0) is None
    assert dec.counters["bad_fragment"] == 2


def test_fragments_expire_by_packet_time() -> None:
    dec = FrameDecoder(fragment_timeout=30.0)
    a = frags_v4(ident=1)
    b = frags_v4(ident=2)
    assert dec.decode(1, a[0], 100.0) is None
    assert dec.decode(1, b[0], 120.0) is None
    assert dec.decode(1, b[1], 131.0) is None  # a is now older than 30 s: dropped
    assert dec.counters["fragment_expired"] == 1
    assert [dec.decode(1, f, 131.0) for f in a[1:]] == [None] * 3  # a starts over, incomplete
    for f in b[2:]:
        seg = dec.decode(1, f, 132.0)
    check_v4(seg, PAYLOAD, ts=132.0)
    dec.expire_fragments(1000.0)
    assert dec.fragments_pending == 0 and dec.counters["fragment_expired"] == 2


def test_fragment_budget_evicts_oldest() -> None:
    dec = FrameDecoder(max_fragment_bytes=2000)
    a, b, c = frags_v4(ident=1), frags_v4(ident=2), frags_v4(ident=3)
    for f in a[:3] + b[:2]:  # 1536 + 1024 bytes > 2000: datagram a is evicted
        assert dec.decode(1, f, 1.0) is None
    assert dec.counters["fragment_budget"] == 1
    assert dec.fragment_bytes <= 2000
    for f in b[2:3]:
        assert dec.decode(1, f, 1.0) is None
    check_v4(dec.decode(1, b[3], 1.5), PAYLOAD)
    assert dec.decode(1, c[0], 1.0) is None
    small = FrameDecoder(max_fragment_bytes=100)
    assert small.decode(1, c[0], 1.0) is None  # a single fragment larger than the budget
    assert skipped(small) == {"fragment_budget": 1}


def test_fragments_of_uninteresting_protocols_are_not_held() -> None:
    dec = FrameDecoder()
    frag = ipv4(bytes(64), proto=1, mf=True)
    assert dec.decode(101, frag, 0.0) is None
    assert skipped(dec) == {"non_tcp": 1} and dec.fragments_pending == 0


def test_tiny_fragments_are_limited() -> None:
    dec = FrameDecoder()
    body = bytes(20000)
    for off in range(0, 16000, 16):  # every other 8-byte piece: 1000 separate pieces, then more
        dec.decode(101, ipv4(body[off:off + 8], ident=5, frag_offset=off, mf=True, proto=6), 0.0)
    for off in range(16000, 20000, 16):
        dec.decode(101, ipv4(body[off:off + 8], ident=5, frag_offset=off, mf=True, proto=6), 0.0)
    assert dec.counters["fragment_limit"] >= 1
    assert dec.fragment_bytes < 20000


@pytest.mark.parametrize("reverse", [False, True])
def test_ipv6_fragments_reassembled(reverse: bool) -> None:
    dec = FrameDecoder()
    pkt = seg_v6(PAYLOAD, ext=[ipv6_ext(60, bytes(6))])  # dest opts inside the fragmentable part
    frames = [ethernet(f) for f in ipv6_fragments(pkt, 400)]
    if reverse:
        frames.reverse()
    results = [dec.decode(1, f, 1.5) for f in frames]
    assert results[:-1] == [None] * (len(frames) - 1)
    check_v6(results[-1], PAYLOAD)


def test_fragmented_vxlan_outer_packet() -> None:
    dec = FrameDecoder()
    inner = ethernet(seg_v4(PAYLOAD[:1400]))
    outer = ipv4(udp(vxlan(inner), dport=4789), proto=17, src="192.0.2.1", dst="192.0.2.2", ident=3)
    frames = [ethernet(f) for f in ipv4_fragments(outer, 1024)]
    assert dec.decode(1, frames[0], 1.5) is None
    check_v4(dec.decode(1, frames[1], 1.5), PAYLOAD[:1400])


# ------------------------------------------------------------------ conversation helper

def test_tcp_conversation_helper_seq_ack() -> None:
    segs = tcp_conversation([(0, b"a" * 3000), (1, b"b" * 10), (0, b"c")], mss=1460)
    flags = [s.flags for s in segs]
    assert flags[:3] == [SYN, SYN | ACK, ACK]
    assert flags[-3:] == [FIN | ACK, FIN | ACK, ACK]
    data = [s for s in segs if s.payload]
    assert [len(s.payload) for s in data] == [1460, 1460, 80, 10, 1]
    assert data[0].seq == 1001 and data[1].seq == 2461 and data[3].seq == 5001
    assert data[3].ack == 1001 + 3000 and data[4].seq == 4001 and data[4].ack == 5011
    assert data[2].flags & PSH and not data[0].flags & PSH
    assert all(b.ts > a.ts for a, b in itertools.pairwise(segs))
    v6 = tcp_conversation([(0, b"x")], client=("2001:db8::1", 1), server=("2001:db8::2", 2))
    assert len(v6[0].src) == 16


# ------------------------------------------------------------------ fuzzing

LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 999]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(linktype=st.sampled_from(LINKTYPES), data=st.binary(max_size=200), ts=st.floats(0, 1e9))
def test_fuzz_random_bytes_never_raise(linktype: int, data: bytes, ts: float) -> None:
    dec = FrameDecoder()
    before = sum(dec.counters.values())
    seg = dec.decode(linktype, data, ts)
    if seg is None:
        assert sum(dec.counters.values()) == before + 1


def _valid_frames() -> list[tuple[int, bytes]]:
    v4, v6 = seg_v4(PAYLOAD[:100]), seg_v6(PAYLOAD[:100], ext=[ipv6_ext(0, bytes(6))])
    return [
        (1, ethernet(v4, vlans=[(ETH_QINQ, 1), 2])),
        (1, ethernet(v6)),
        (113, sll(v4)),
        (276, sll2(v6)),
        (0, loopback(v4)),
        (101, v6),
        (1, ethernet(ipv4(udp(vxlan(ethernet(v4)), dport=4789), proto=17))),
        (1, ethernet(ipv4(udp(geneve(v6, protocol=0x86DD, options=bytes(8)), dport=6081), proto=17))),
        (1, ethernet(ipv4(gre(erspan3(ethernet(v4), subheader=True), protocol=0x22EB, seq=1), proto=47))),
        (1, ethernet(ipv4_fragments(v4, 64)[0])),
        (1, ethernet(ipv6_fragments(v6, 64)[1])),
    ]


VALID = _valid_frames()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(idx=st.integers(0, len(VALID) - 1), seed=st.integers(0, 2**32), nmut=st.integers(1, 8),
       cut=st.integers(0, 400))
def test_fuzz_mutated_frames_never_raise(idx: int, seed: int, nmut: int, cut: int) -> None:
    linktype, frame = VALID[idx]
    rnd = random.Random(seed)
    buf = bytearray(frame)
    for _ in range(nmut):
        buf[rnd.randrange(len(buf))] = rnd.randrange(256)
    dec = FrameDecoder()
    for data in (bytes(buf), bytes(buf[:cut])):
        before = sum(dec.counters.values())
        seg = dec.decode(linktype, data, 1.0)
        if seg is None:
            assert sum(dec.counters.values()) == before + 1
        else:
            assert isinstance(seg.payload, bytes) and len(seg.src) in (4, 16)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 30), st.booleans(), st.integers(0, 3)),
                min_size=1, max_size=40))
def test_fuzz_fragment_sequences_bounded(frags: list[tuple[int, int, bool, int]]) -> None:
    dec = FrameDecoder(max_fragment_bytes=600)
    for i, (off8, n8, more, ident) in enumerate(frags):
        pkt = ipv4(bytes([i & 0xFF]) * (n8 * 8), ident=ident, frag_offset=off8 * 8, mf=more, proto=6)
        seg = dec.decode(101, pkt, float(i))
        assert seg is None or isinstance(seg, TcpSegment)
        assert 0 <= dec.fragment_bytes <= 600
