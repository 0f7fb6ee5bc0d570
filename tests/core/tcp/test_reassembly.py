"""Tests of the tcp stage: per-flow reassembly into ordered streams with explicit gaps."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tlsmirror.frames.events import ACK, FIN, PSH, RST, SYN, TcpSegment
from tlsmirror.tcp.events import (
    CLIENT,
    SERVER,
    FlowClosed,
    FlowOpened,
    StreamData,
    StreamGap,
    TcpEvent,
)
from tlsmirror.tcp.reassembly import FLOW_OVERHEAD, PIECE_OVERHEAD, TcpReassembler

M = 0xFFFFFFFF
CADDR = bytes([10, 0, 0, 1])
SADDR = bytes([10, 0, 0, 2])


# ---------------------------------------------------------------- helpers


@dataclass
class Conv:
    """Builds the segments of one connection; sequence numbers are relative to the ISNs."""

    cport: int = 40000
    sport: int = 443
    cisn: int = 1000
    sisn: int = 5000
    caddr: bytes = CADDR
    saddr: bytes = SADDR
    ts: float = 1.0

    def seg(self, direction: int, rel: int, payload: bytes = b"", flags: int = ACK | PSH,
            ack: int | None = None, ts: float | None = None) -> TcpSegment:
        """``rel`` is the stream offset (0 = first data byte); ``ack`` likewise for the peer."""
        if ts is None:
            self.ts += 0.001
            ts = self.ts
        if direction == CLIENT:
            src, dst, sp, dp = self.caddr, self.saddr, self.cport, self.sport
            isn, peer_isn = self.cisn, self.sisn
        else:
            src, dst, sp, dp = self.saddr, self.caddr, self.sport, self.cport
            isn, peer_isn = self.sisn, self.cisn
        seq = (isn + 1 + rel) & M
        ackv = 0 if ack is None else (peer_isn + 1 + ack) & M
        if ack is None:
            flags &= ~ACK
        return TcpSegment(ts, src, dst, sp, dp, seq, ackv, flags, payload)

    def c(self, rel: int, payload: bytes = b"", flags: int = ACK | PSH, ack: int | None = 0,
          ts: float | None = None) -> TcpSegment:
        return self.seg(CLIENT, rel, payload, flags, ack, ts)

    def s(self, rel: int, payload: bytes = b"", flags: int = ACK | PSH, ack: int | None = 0,
          ts: float | None = None) -> TcpSegment:
        return self.seg(SERVER, rel, payload, flags, ack, ts)

    def handshake(self) -> list[TcpSegment]:
        return [
            self.seg(CLIENT, -1, flags=SYN),
            self.seg(SERVER, -1, flags=SYN | ACK, ack=0),
            self.seg(CLIENT, 0, flags=ACK, ack=0),
        ]


@dataclass
class Streams:
    """Events regrouped per (flow id, direction); checks the per-flow event order."""

    items: dict[tuple[int, int], list[bytes | tuple[str, int]]] = field(default_factory=dict)
    opened: list[int] = field(default_factory=list)
    closed: dict[int, str] = field(default_factory=dict)
    flows: dict[int, object] = field(default_factory=dict)

    def add(self, events: list[TcpEvent]) -> None:
        for ev in events:
            fid = ev.flow.id
            if isinstance(ev, FlowOpened):
                assert fid not in self.flows, "FlowOpened twice"
                self.opened.append(fid)
                self.flows[fid] = ev.flow
                continue
            assert fid in self.flows, "event before FlowOpened"
            assert fid not in self.closed, "event after FlowClosed"
            if isinstance(ev, FlowClosed):
                self.closed[fid] = ev.reason
            elif isinstance(ev, StreamData):
                assert ev.data, "empty StreamData"
                self.items.setdefault((fid, ev.direction), []).append(ev.data)
            else:
                assert isinstance(ev, StreamGap)
                assert ev.size > 0
                self.items.setdefault((fid, ev.direction), []).append((ev.reason, ev.size))

    def data(self, fid: int, direction: int) -> bytes:
        parts = self.items.get((fid, direction), [])
        assert all(isinstance(p, bytes) for p in parts), parts
        return b"".join(p for p in parts if isinstance(p, bytes))

    def gaps(self, fid: int, direction: int) -> list[tuple[str, int]]:
        return [p for p in self.items.get((fid, direction), []) if isinstance(p, tuple)]

    def account(self, fid: int, direction: int, original: bytes) -> int:
        """Checks every delivered byte against ``original``; returns delivered + gap bytes."""
        pos = 0
        for p in self.items.get((fid, direction), []):
            if isinstance(p, bytes):
                assert original[pos:pos + len(p)] == p
                pos += len(p)
            else:
                pos += p[1]
        return pos


def run(r: TcpReassembler, segs: list[TcpSegment], streams: Streams | None = None) -> Streams:
    streams = streams or Streams()
    for s in segs:
        streams.add(r.feed(s))
    return streams


def assert_empty(r: TcpReassembler) -> None:
    assert r.open_flows == 0
    assert r.buffered_bytes == 0
    assert len(r._halves) == 0
    assert len(r._lru) == 0
    assert len(r._holding) == 0


def held_total(r: TcpReassembler) -> int:
    total = 0
    for conn in r._lru:
        for h in conn.halves:
            assert h.held == sum(len(d) for d in h.hdata)
            assert len(h.hstart) == len(h.hdata)
            ends = [a + len(d) for a, d in zip(h.hstart, h.hdata, strict=True)]
            assert all(e <= a for e, a in zip(ends, h.hstart[1:], strict=False)), "overlap or unsorted"
            assert all(a > h.off for a in h.hstart)
            total += h.held
    pieces = sum(len(h.hstart) for conn in r._lru for h in conn.halves)
    assert r._pieces == pieces
    assert r.charge == r.buffered_bytes + pieces * r.piece_overhead + r.open_flows * r.flow_overhead
    return total


# ---------------------------------------------------------------- basics


def test_handshake_data_both_directions_and_fin() -> None:
    r = TcpReassembler()
    cv = Conv()
    evs = r.feed(cv.handshake()[0])
    assert len(evs) == 1 and isinstance(evs[0], FlowOpened)
    flow = evs[0].flow
    assert flow.syn_seen
    assert flow.addr == (CADDR, SADDR) and flow.port == (40000, 443)
    st_ = Streams()
    st_.add(evs)
    run(r, cv.handshake()[1:], st_)
    run(r, [cv.c(0, b"GET / HTTP/1.1\r\n"), cv.c(16, b"\r\n"), cv.s(0, b"HTTP/1.1 200 OK\r\n", ack=18),
            cv.s(17, b"\r\nbody", ack=18)], st_)
    assert st_.data(flow.id, CLIENT) == b"GET / HTTP/1.1\r\n\r\n"
    assert st_.data(flow.id, SERVER) == b"HTTP/1.1 200 OK\r\n\r\nbody"
    # one event per segment, stamped with the segment's time
    assert len(st_.items[(flow.id, CLIENT)]) == 2
    assert r.open_flows == 1
    run(r, [cv.c(18, flags=FIN | ACK, ack=23)], st_)
    assert flow.id not in st_.closed
    run(r, [cv.s(23, flags=FIN | ACK, ack=19)], st_)
    assert st_.closed[flow.id] == "fin"
    assert r.feed(cv.c(19, flags=ACK, ack=24)) == []  # last ACK: no new flow
    assert_empty(r)
    stats = r.stats
    assert stats["flows_opened"] == 1 and stats["flows_closed_fin"] == 1
    assert stats["bytes"] == 18 + 23 and stats["gaps"] == 0 and stats["segments"] == 10


def test_event_timestamps_are_packet_times() -> None:
    r = TcpReassembler()
    cv = Conv()
    run(r, cv.handshake())
    evs = r.feed(cv.c(0, b"abc", ts=42.5))
    assert [(type(e), e.ts) for e in evs] == [(StreamData, 42.5)]


def test_syn_ack_first_gives_roles() -> None:
    r = TcpReassembler()
    cv = Conv(cport=50000, sport=50001)
    st_ = run(r, [*cv.handshake()[1:], cv.c(0, b"hello"), cv.s(0, b"world", ack=5)])
    flow = st_.flows[st_.opened[0]]
    assert flow.syn_seen and flow.port == (50000, 50001)  # type: ignore[attr-defined]
    assert st_.data(flow.id, CLIENT) == b"hello"  # type: ignore[attr-defined]
    assert st_.data(flow.id, SERVER) == b"world"  # type: ignore[attr-defined]
    # the SYN+ACK told where the client's bytes start: a reordered first segment is not lost
    r = TcpReassembler()
    st_ = run(r, [*cv.handshake()[1:2], cv.c(3, b"def"), cv.c(0, b"abc")])
    assert st_.data(st_.opened[0], CLIENT) == b"abcdef"


@pytest.mark.parametrize(
    ("sender_port", "receiver_port", "client_port"),
    [
        (443, 51000, 51000),    # server speaks first, below 1024
        (51000, 443, 51000),
        (8443, 51000, 51000),   # well-known high port
        (51000, 9000, 51000),
        (50001, 50002, 50001),  # no hint: first sender is the client
        (50002, 50001, 50002),
        (8443, 443, 8443),      # both server-like: lower port is the server
        (443, 8443, 8443),
    ],
)
def test_midstream_role_guess(sender_port: int, receiver_port: int, client_port: int) -> None:
    r = TcpReassembler()
    seg = TcpSegment(1.0, CADDR, SADDR, sender_port, receiver_port, 123456, 999, ACK | PSH, b"data")
    evs = r.feed(seg)
    assert isinstance(evs[0], FlowOpened)
    flow = evs[0].flow
    assert not flow.syn_seen
    assert flow.port[CLIENT] == client_port
    assert isinstance(evs[1], StreamData) and evs[1].data == b"data"
    assert evs[1].direction == (CLIENT if sender_port == client_port else SERVER)
    # next bytes of that direction follow from the first segment seen
    evs = r.feed(TcpSegment(1.1, CADDR, SADDR, sender_port, receiver_port, 123460, 999, ACK, b"more"))
    assert [e.data for e in evs if isinstance(e, StreamData)] == [b"more"]


def test_pure_ack_and_fin_and_rst_on_unknown_flow_are_ignored() -> None:
    r = TcpReassembler()
    cv = Conv()
    assert r.feed(cv.c(0, flags=ACK)) == []
    assert r.feed(cv.c(0, flags=FIN | ACK)) == []
    assert r.feed(cv.c(0, flags=RST)) == []
    assert r.stats["segments_no_flow"] == 3
    assert_empty(r)


# ---------------------------------------------------------------- ordering


def test_out_of_order_is_held_then_delivered() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    evs = r.feed(cv.c(10, b"KLMNOPQRST"))
    assert evs == []
    assert r.buffered_bytes == 10
    evs = r.feed(cv.c(20, b"UVWXYZ"))
    assert evs == [] and r.buffered_bytes == 16
    evs = r.feed(cv.c(0, b"ABCDEFGHIJ"))
    st_.add(evs)
    assert [len(e.data) for e in evs if isinstance(e, StreamData)] == [10, 10, 6]
    assert st_.data(fid, CLIENT) == b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert r.buffered_bytes == 0 and not r._holding
    # in order again afterwards
    st_.add(r.feed(cv.c(26, b"!")))
    assert st_.data(fid, CLIENT).endswith(b"Z!")


def test_duplicates_and_retransmissions() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    run(r, [cv.c(0, b"abcd"), cv.c(0, b"abcd"), cv.c(2, b"cdef"), cv.c(8, b"ij"), cv.c(8, b"ij"),
            cv.c(6, b"gh")], st_)
    assert st_.data(fid, CLIENT) == b"abcdefghij"
    s = r.stats
    assert s["retransmitted_bytes"] == 4 + 2
    assert s["overlaps"] == 1 and s["overlap_bytes"] == 2
    assert s["gaps"] == 0


def test_overlaps_first_seen_bytes_win() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    # held pieces at [4,8) and [12,16); a later segment covers [2,18) with other content
    run(r, [cv.c(4, b"4567"), cv.c(12, b"CDEF"), cv.c(2, b"xxxxxxxxxxxxxxxx")], st_)
    assert r.buffered_bytes == 16
    assert r.stats["overlaps"] == 1 and r.stats["overlap_bytes"] == 8
    run(r, [cv.c(0, b"01yy")], st_)  # delivers [0,2) only: [2,4) was seen first in the big one
    assert st_.data(fid, CLIENT) == b"01xx4567xxxxCDEFxx"
    # delivered bytes win over a conflicting retransmission
    run(r, [cv.c(16, b"zzzz")], st_)
    assert st_.data(fid, CLIENT) == b"01xx4567xxxxCDEFxxzz"
    assert held_total(r) == r.buffered_bytes == 0


def test_wraparound() -> None:
    r = TcpReassembler()
    cv = Conv(cisn=M - 5, sisn=M)  # client bytes cross 2**32 at offset 5, server ISN+1 wraps to 0
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    payload = bytes(range(40))
    segs = [cv.c(i, payload[i:i + 4]) for i in range(0, 40, 4)]
    random.Random(3).shuffle(segs)
    run(r, segs, st_)
    run(r, [cv.s(0, b"x" * 10, ack=40), cv.s(10, b"y"), cv.c(2, b"old")], st_)
    assert st_.data(fid, CLIENT) == payload
    assert st_.data(fid, SERVER) == b"x" * 10 + b"y"
    assert r.stats["retransmitted_bytes"] == 3
    assert r.stats["gaps"] == 0


def test_wraparound_midstream_many_times() -> None:
    r = TcpReassembler()
    seq = M - 1000
    total = 0
    chunk = b"z" * 1448
    for i in range(3000):  # 4.3 MB: the sequence space wraps once
        evs = r.feed(TcpSegment(i * 0.001, CADDR, SADDR, 40000, 443, seq, 1, ACK, chunk))
        total += sum(len(e.data) for e in evs if isinstance(e, StreamData))
        seq = (seq + len(chunk)) & M
    assert total == 3000 * 1448 and r.stats["gaps"] == 0


# ---------------------------------------------------------------- holes


def test_hole_closed_by_ack() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    run(r, [cv.c(0, b"aaaa"), cv.c(8, b"cccc"), cv.c(16, b"eeee")], st_)  # [4,8) and [12,16) lost
    assert r.buffered_bytes == 8
    run(r, [cv.s(0, flags=ACK, ack=6)], st_)  # acks part of the first hole only
    assert st_.items[(fid, CLIENT)] == [b"aaaa", ("lost", 2)]
    run(r, [cv.s(0, flags=ACK, ack=20)], st_)
    assert st_.items[(fid, CLIENT)] == [b"aaaa", ("lost", 2), ("lost", 2), b"cccc", ("lost", 4), b"eeee"]
    assert r.buffered_bytes == 0
    run(r, [cv.c(4, b"bbbb"), cv.c(20, b"ffff")], st_)  # late copies of lost bytes are dropped
    assert st_.items[(fid, CLIENT)][-1] == b"ffff"
    s = r.stats
    assert s["gaps"] == 3 and s["gap_bytes"] == 8 and s["retransmitted_bytes"] == 4


def test_ack_without_held_data_makes_no_gap_until_more_data() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    run(r, [cv.c(0, b"aaaa"), cv.s(0, flags=ACK, ack=8)], st_)  # [4,8) lost, nothing after it yet
    assert st_.items[(fid, CLIENT)] == [b"aaaa"]
    run(r, [cv.c(8, b"cccc"), cv.s(0, flags=ACK, ack=12)], st_)
    assert st_.items[(fid, CLIENT)] == [b"aaaa", ("lost", 4), b"cccc"]


def test_data_segment_carrying_ack_closes_hole_of_peer() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    run(r, [cv.c(0, b"aa"), cv.c(4, b"cc"), cv.s(0, b"resp", ack=6)], st_)
    assert st_.items[(fid, CLIENT)] == [b"aa", ("lost", 2), b"cc"]
    assert st_.data(fid, SERVER) == b"resp"


def test_holes_at_fin() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    run(r, [cv.c(0, b"aa"), cv.c(4, b"cc"), cv.c(8, b"ee"), cv.c(12, b"gg", flags=FIN | ACK)], st_)
    # FIN carrying data; the holes [2,4), [6,8), [10,12) become gaps at once
    assert st_.items[(fid, CLIENT)] == [b"aa", ("lost", 2), b"cc", ("lost", 2), b"ee", ("lost", 2), b"gg"]
    assert r.buffered_bytes == 0
    # data after FIN and late retransmissions are dropped and counted
    run(r, [cv.c(14, b"after"), cv.c(2, b"bb")], st_)
    assert r.stats["data_after_fin_bytes"] == 5
    assert r.stats["retransmitted_bytes"] == 2
    run(r, [cv.s(0, b"bye", flags=FIN | ACK, ack=15)], st_)
    assert st_.closed[fid] == "fin"
    assert_empty(r)


def test_fin_before_last_segment_gives_trailing_gap_and_drops_held_beyond_fin() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    run(r, [cv.c(0, b"aa"), cv.c(20, b"beyond"), cv.c(6, flags=FIN | ACK)], st_)
    assert st_.items[(fid, CLIENT)] == [b"aa", ("lost", 4)]
    assert r.stats["data_after_fin_bytes"] == 6
    assert r.buffered_bytes == 0


def test_fin_straddling_held_piece_is_truncated() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    run(r, [cv.c(4, b"456789"), cv.c(7, flags=FIN | ACK)], st_)
    assert st_.items[(fid, CLIENT)] == [("lost", 4), b"456"]
    assert r.stats["data_after_fin_bytes"] == 3
    assert held_total(r) == r.buffered_bytes == 0


BYTES_ONLY = {"flow_overhead": 0, "piece_overhead": 0}  # budgets of bytes alone, for exact figures


def test_budget_per_flow() -> None:
    r = TcpReassembler(max_flow_buffer=100, **BYTES_ONLY)
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    run(r, [cv.c(0, b"a" * 10)], st_)
    for off in range(20, 120, 20):  # holes of 10 bytes before each 10-byte piece
        run(r, [cv.c(off, b"b" * 10)], st_)
    assert r.buffered_bytes == 50
    run(r, [cv.c(120, b"c" * 60)], st_)  # 110 held > 100: the first hole is given up
    assert st_.items[(fid, CLIENT)] == [b"a" * 10, ("budget", 10), b"b" * 10]
    assert r.buffered_bytes == 100
    assert r.stats["budget_dropped_bytes"] == 10
    # the server direction counts toward the same flow budget
    run(r, [cv.s(50, b"s" * 10, ack=None)], st_)
    assert st_.items[(fid, CLIENT)][-2:] == [("budget", 10), b"b" * 10]
    assert r.buffered_bytes == 100


def test_budget_counts_held_pieces() -> None:
    """Many small pieces cost more than their bytes: the per-flow budget counts each one's overhead."""
    r = TcpReassembler(max_flow_buffer=10 * PIECE_OVERHEAD, flow_overhead=0)
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    for off in range(2, 40, 2):  # 1-byte pieces behind 1-byte holes: 19 bytes, 19 pieces
        run(r, [cv.c(off, b"p")], st_)
        assert held_total(r) == r.buffered_bytes
        conn = next(iter(r._lru))
        assert r._flow_charge(conn.halves[0]) <= 10 * PIECE_OVERHEAD
    assert 0 < r.buffered_bytes < 19 and r.stats["budget_dropped_bytes"] > 0
    assert st_.items[(fid, CLIENT)][0] == ("budget", 2)


def test_total_budget_counts_open_flows_and_evicts_the_least_recently_active() -> None:
    r = TcpReassembler(max_total_buffer=3 * FLOW_OVERHEAD + 300)
    convs = [Conv(cport=40000 + i) for i in range(1, 5)]
    st_ = Streams()
    for cv in convs[:3]:
        run(r, [cv.c(0, b"x")], st_)
    assert r.charge == 3 * FLOW_OVERHEAD and not st_.closed
    run(r, [convs[0].c(1, b"y")], st_)  # flow 1 active again: flow 2 is now the oldest
    run(r, [convs[3].c(0, b"z")], st_)  # no room for a fourth flow: the oldest makes room
    assert st_.closed == {st_.opened[1]: "evicted"}
    assert r.open_flows == 3 and r.charge <= r.max_total_buffer
    s = r.stats
    assert s["flows_evicted"] == s["flows_evicted_budget"] == s["flows_closed_evicted"] == 1
    # held bytes are given up before a flow is evicted
    run(r, [convs[0].c(10, b"h" * 50)], st_)
    assert r.buffered_bytes == 50 and r.charge == 3 * FLOW_OVERHEAD + 50 + PIECE_OVERHEAD
    run(r, [Conv(cport=40010).c(0, b"n")], st_)
    assert r.buffered_bytes == 0 and r.stats["budget_dropped_bytes"] == 8
    assert r.stats["flows_evicted_budget"] == 2  # the held bytes did not make room enough
    assert held_total(r) == 0


def test_budget_total_takes_from_largest_holder() -> None:
    r = TcpReassembler(max_total_buffer=100, **BYTES_ONLY)
    small, big = Conv(cport=40001), Conv(cport=40002)
    st_ = run(r, small.handshake() + big.handshake())
    fsmall, fbig = st_.opened
    run(r, [small.c(10, b"s" * 30), big.c(10, b"b" * 40), big.c(60, b"b" * 20)], st_)
    assert r.buffered_bytes == 90
    run(r, [small.c(50, b"t" * 20)], st_)  # total 110: the big holder is flushed completely
    assert st_.items[(fbig, CLIENT)] == [("budget", 10), b"b" * 40, ("budget", 10), b"b" * 20]
    assert (fsmall, CLIENT) not in st_.items
    assert r.buffered_bytes == 50
    assert r.stats["budget_dropped_bytes"] == 20


# ---------------------------------------------------------------- closing


def test_rst_delivers_contiguous_and_flushes_held() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, cv.handshake())
    fid = st_.opened[0]
    run(r, [cv.c(0, b"ab"), cv.c(4, b"ef"), cv.s(0, b"xyz"), cv.s(10, b"q")], st_)
    run(r, [cv.s(3, b"garbage\x00\xff", flags=RST)], st_)
    assert st_.items[(fid, CLIENT)] == [b"ab", ("lost", 2), b"ef"]
    assert st_.items[(fid, SERVER)] == [b"xyz", ("lost", 7), b"q"]
    assert st_.closed[fid] == "rst"
    assert r.stats["rst_payload_bytes"] == 9 and r.stats["flows_closed_rst"] == 1
    assert r.feed(cv.c(6, b"late")) != []  # data after the RST starts a (mid-stream) flow again
    assert r.open_flows == 1


def test_finish_flushes_and_closes_with_end() -> None:
    r = TcpReassembler()
    a, b = Conv(cport=40001), Conv(cport=40002)
    st_ = run(r, a.handshake() + b.handshake())
    fa, fb = st_.opened
    run(r, [a.c(0, b"aa"), a.c(4, b"cc"), b.c(0, b"xx"), a.s(0, b"r", ack=2), b.s(0, flags=ACK, ack=5)], st_)
    st_.add(r.finish(99.0))
    assert st_.items[(fa, CLIENT)] == [b"aa", ("lost", 2), b"cc"]
    # the peer acknowledged 3 bytes of b's client that the capture did not show: trailing gap
    assert st_.items[(fb, CLIENT)] == [b"xx", ("lost", 3)]
    assert st_.closed == {fa: "end", fb: "end"}
    assert_empty(r)
    assert r.finish(100.0) == []


def test_port_reuse_after_close_and_on_open_flow() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, [*cv.handshake(), cv.c(0, b"one", flags=FIN | ACK), cv.s(0, flags=FIN | ACK, ack=4)])
    first = st_.opened[0]
    assert st_.closed[first] == "fin"
    cv2 = Conv(cisn=777777, sisn=888888)
    run(r, [*cv2.handshake(), cv2.c(0, b"two")], st_)
    second = st_.opened[1]
    assert second != first and st_.data(second, CLIENT) == b"two"
    # a retransmitted SYN is not a new connection
    run(r, [cv2.seg(CLIENT, -1, flags=SYN)], st_)
    assert r.stats["syn_retransmits"] == 1 and len(st_.opened) == 2
    # a SYN with a new ISN while the flow is open (its end was missed) replaces it
    cv3 = Conv(cisn=123, sisn=456)
    run(r, [*cv3.handshake(), cv3.c(0, b"three")], st_)
    third = st_.opened[2]
    assert st_.closed[second] == "reused"
    assert st_.data(third, CLIENT) == b"three"
    assert r.open_flows == 1
    # SYN+ACK with a new ISN after one side finished: also a new connection
    run(r, [cv3.c(5, flags=FIN | ACK)], st_)
    cv4 = Conv(cisn=5, sisn=6)
    run(r, [*cv4.handshake()[1:], cv4.s(0, b"four")], st_)
    assert st_.closed[third] == "reused" and st_.data(st_.opened[3], SERVER) == b"four"
    # a contradicting SYN+ACK on a flow in progress is ignored
    run(r, [Conv(cisn=5, sisn=99).seg(SERVER, -1, flags=SYN | ACK, ack=0)], st_)
    assert r.stats["odd_syns"] == 1 and r.open_flows == 1


def test_idle_expiry() -> None:
    r = TcpReassembler(idle_timeout=10.0)
    a, b = Conv(cport=40001), Conv(cport=40002)
    st_ = run(r, [a.c(0, b"a", ts=0.0), a.c(1, b"c", ts=100.0), a.c(4, b"held", ts=100.0),
                  b.c(0, b"b", ts=105.0)])
    fa, fb = st_.opened
    assert r.expire(105.0) == []
    assert r.expire(110.0) == []  # exactly 10 s idle: not yet
    evs = r.expire(110.5)
    st_.add(evs)
    assert st_.closed == {fa: "idle"}
    assert st_.items[(fa, CLIENT)] == [b"a", b"c", ("lost", 2), b"held"]
    assert evs[-1].ts == 110.5
    assert r.expire(114.0) == []
    st_.add(r.expire(116.0))
    assert st_.closed == {fa: "idle", fb: "idle"}
    assert_empty(r)
    assert r.stats["flows_closed_idle"] == 2


def test_expire_is_cheap_when_nothing_is_due() -> None:
    r = TcpReassembler(idle_timeout=10.0)
    for i in range(1000):
        r.feed(Conv(cport=i + 2000).c(0, b"x", ts=float(i) / 1000))
    assert r.expire(5.0) == []
    assert r._next_expire == pytest.approx(10.0)
    assert len(r.expire(10.5)) == 500  # FlowClosed of the flows last seen before 0.5


def test_eviction_of_least_recently_active() -> None:
    r = TcpReassembler(max_flows=3)
    convs = [Conv(cport=40000 + i) for i in range(1, 5)]
    st_ = Streams()
    for cv in convs[:3]:
        run(r, [cv.c(0, b"x")], st_)
    run(r, [convs[0].c(1, b"y")], st_)  # flow 1 active again: flow 2 is now the oldest
    run(r, [convs[3].c(0, b"z")], st_)
    assert st_.closed == {st_.opened[1]: "evicted"}
    assert r.open_flows == 3
    assert r.stats["flows_evicted"] == 1 and r.stats["flows_closed_evicted"] == 1


def test_memory_returns_to_zero_after_many_short_flows() -> None:
    r = TcpReassembler()
    st_ = Streams()
    for i in range(10_000):
        cv = Conv(cport=1024 + i % 60000, cisn=i * 7919, sisn=i * 104729)
        segs = [*cv.handshake(), cv.c(0, b"hello"), cv.s(0, b"world", ack=5)]
        if i % 3 == 0:
            segs += [cv.c(5, flags=FIN | ACK, ack=5), cv.s(5, flags=FIN | ACK, ack=6)]
        elif i % 3 == 1:
            segs += [cv.c(9, b"held"), cv.s(5, flags=RST)]
        else:
            segs += [cv.s(9, b"held"), cv.s(13, flags=FIN | ACK), cv.c(5, flags=FIN | ACK)]
        run(r, segs, st_)
        assert r.open_flows == 0
    assert_empty(r)
    assert len(st_.closed) == 10_000
    assert r.stats["gaps"] == 2 * 3333


def test_swap_roles() -> None:
    r = TcpReassembler()
    seg = TcpSegment(1.0, CADDR, SADDR, 50001, 50002, 100, 0, ACK, b"\x16\x03\x01")
    evs = r.feed(seg)
    flow = evs[0].flow
    assert evs[1].direction == CLIENT  # type: ignore[union-attr]
    r.swap_roles(flow)
    assert flow.port == (50002, 50001)
    evs = r.feed(TcpSegment(1.1, CADDR, SADDR, 50001, 50002, 103, 0, ACK, b"more"))
    assert [(e.direction, e.data) for e in evs] == [(SERVER, b"more")]  # type: ignore[union-attr]
    evs = r.feed(TcpSegment(1.2, SADDR, CADDR, 50002, 50001, 9, 0, ACK, b"hi"))
    assert [(e.direction, e.data) for e in evs] == [(CLIENT, b"hi")]  # type: ignore[union-attr]


# ---------------------------------------------------------------- odd traffic


def test_odd_traffic_never_raises() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, [*cv.handshake(), cv.c(0, b"abc")])
    fid = st_.opened[0]
    run(r, [
        TcpSegment(2.0, CADDR, SADDR, 40000, 443, (1001 - (1 << 31)) & M, 0, ACK, b"back2GB"),
        cv.c(3, b"def"),
        cv.c(1000, flags=FIN | ACK),           # FIN far ahead: gap to it
        cv.c(2, b"old", flags=FIN | ACK),      # FIN again, behind: ignored
        cv.c(1001, b"late"),
        cv.s(0, b"", flags=SYN | FIN | RST | ACK),
    ], st_)
    assert st_.items[(fid, CLIENT)] == [b"abc", b"def", ("lost", 994)]
    assert st_.closed[fid] == "rst"
    # self-connection (same address and port both ways)
    me = TcpSegment(3.0, CADDR, CADDR, 5000, 5000, 1, 0, SYN, b"")
    run(r, [me, TcpSegment(3.1, CADDR, CADDR, 5000, 5000, 2, 0, ACK, b"x")], st_)
    st_.add(r.finish(4.0))
    assert_empty(r)


def test_fin_behind_delivered_point_is_counted() -> None:
    r = TcpReassembler()
    cv = Conv()
    st_ = run(r, [*cv.handshake(), cv.c(0, b"abcdef"), cv.c(2, flags=FIN | ACK)])
    assert r.stats["odd_fins"] == 1
    assert st_.data(st_.opened[0], CLIENT) == b"abcdef"


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        TcpReassembler(max_flows=0)


# ---------------------------------------------------------------- properties


Draw = Callable[[st.SearchStrategy[Any]], Any]


def _segments_for(data: bytes, draw: Draw, drop: bool) -> tuple[list[tuple[int, bytes]], set[int]]:
    """Cuts ``data`` into segments plus random duplicate / re-split copies of sub-ranges."""
    n = len(data)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=12))) if n > 1 else []
    bounds = [0, *[c for c in cuts if 0 < c < n], n] if n else [0]
    base = [(a, data[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    dropped: set[int] = set()
    if drop and base:
        dropped = draw(st.sets(st.integers(0, len(base) - 1), max_size=len(base)))
    extra = []
    if n:
        for a, ln in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 60)), max_size=8)):
            extra.append((a, data[a:a + ln]))
    segs = [s for i, s in enumerate(base) if i not in dropped]
    if drop:
        # extras must not re-send every dropped byte in the loss case: keep those that overlap
        # nothing dropped, so some bytes are really lost
        lost = [(base[i][0], base[i][0] + len(base[i][1])) for i in dropped]
        extra = [(a, d) for a, d in extra if all(a + len(d) <= x or a >= y for x, y in lost)]
    return segs + extra, dropped


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_reorder_duplicate_split_yields_original(dd: st.DataObject) -> None:
    draw = dd.draw
    cdata = draw(st.binary(max_size=2000))
    sdata = draw(st.binary(max_size=2000))
    cv = Conv(cisn=draw(st.integers(0, M)), sisn=draw(st.integers(0, M)))
    csegs, _ = _segments_for(cdata, draw, drop=False)
    ssegs, _ = _segments_for(sdata, draw, drop=False)
    mixed = [cv.c(a, d, ack=0) for a, d in csegs] + [cv.s(a, d, ack=0) for a, d in ssegs]
    mixed = draw(st.permutations(mixed))
    r = TcpReassembler()
    st_ = run(r, cv.handshake()[:2] + mixed)
    fid = st_.opened[0]
    assert held_total(r) == r.buffered_bytes == 0
    run(r, [cv.c(len(cdata), flags=FIN | ACK, ack=0), cv.s(len(sdata), flags=FIN | ACK, ack=len(cdata) + 1)],
        st_)
    assert st_.data(fid, CLIENT) == cdata
    assert st_.data(fid, SERVER) == sdata
    assert st_.closed == {fid: "fin"}
    assert r.stats["gaps"] == 0
    assert_empty(r)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_losses_are_accounted_by_gaps(dd: st.DataObject) -> None:
    draw = dd.draw
    data = draw(st.binary(min_size=1, max_size=3000))
    cv = Conv(cisn=draw(st.integers(0, M)))
    segs, _ = _segments_for(data, draw, drop=True)
    feed = [cv.c(a, d, ack=None) for a, d in segs]
    acks = draw(st.lists(st.integers(0, len(data)), max_size=5))
    feed += [cv.s(0, flags=ACK, ack=a) for a in acks]
    feed = draw(st.permutations(feed))
    fin_at = draw(st.one_of(st.just(len(feed)), st.integers(0, len(feed))))
    feed.insert(fin_at, cv.c(len(data), flags=FIN | ACK, ack=None))
    r = TcpReassembler(max_flow_buffer=draw(st.sampled_from([1 << 20, 500, 50, 0])),
                       piece_overhead=draw(st.sampled_from([0, PIECE_OVERHEAD])))
    st_ = run(r, cv.handshake()[:2] + feed)
    fid = st_.opened[0]
    assert held_total(r) == r.buffered_bytes
    assert st_.account(fid, CLIENT, data) == len(data)
    st_.add(r.finish(1e9))
    assert_empty(r)
    s = r.stats
    assert s["gap_bytes"] == sum(g[1] for g in st_.gaps(fid, CLIENT))
    event(f"gaps: {s['gaps'] > 0}, budget gaps: {s['budget_dropped_bytes'] > 0}, "
          f"overlaps: {s['overlaps'] > 0}")


_PORTS = st.sampled_from([443, 40000, 40001])
_ADDRS = st.sampled_from([CADDR, SADDR])


@st.composite
def _random_segment(draw: st.DrawFn) -> TcpSegment:
    return TcpSegment(
        draw(st.floats(0, 2000, allow_nan=False)),
        draw(_ADDRS), draw(_ADDRS), draw(_PORTS), draw(_PORTS),
        draw(st.one_of(st.integers(0, M), st.integers(0, 50), st.integers(M - 50, M))),
        draw(st.one_of(st.integers(0, M), st.integers(0, 50))),
        draw(st.integers(0, 0x3F)),
        draw(st.binary(max_size=40)),
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(_random_segment(), max_size=60), st.sampled_from([0, 30, 1 << 20]), st.booleans())
def test_fuzz_random_segments_never_raise(segs: list[TcpSegment], budget: int, overheads: bool) -> None:
    extra = {} if overheads else BYTES_ONLY
    r = TcpReassembler(idle_timeout=100.0, max_flow_buffer=budget, max_total_buffer=max(budget, 40),
                       max_flows=2, **extra)
    st_ = Streams()
    for i, s in enumerate(segs):
        st_.add(r.feed(s))
        if i % 7 == 0:
            st_.add(r.expire(s.ts))
        assert held_total(r) == r.buffered_bytes
        assert r.buffered_bytes <= max(budget, 40)
        assert r.open_flows <= 2
    st_.add(r.finish(3000.0))
    assert_empty(r)
    assert set(st_.closed) == set(st_.opened)
