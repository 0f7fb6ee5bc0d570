"""Per-flow TCP reassembly (sans-IO): segments in, ordered stream events out.

Design notes (hot path first):

* One dict, ``_halves``, maps the 4-tuple *as seen on the wire* (``TcpSegment.key``: src + dst + ports) to the
  :class:`_Half` of the sender; both orientations of a connection are inserted, so a segment costs
  exactly one lookup and the direction comes with it.
* Each half keeps ``seq`` (next expected sequence number, modulo 2**32) and ``off`` (the same
  position as an unwrapped stream offset). Out-of-order data is held in two parallel sorted lists
  (``hstart`` offsets, ``hdata`` bytes) whose pieces never overlap; they are only touched when
  something is out of order.
* An ``OrderedDict`` of connections in least-recently-active order gives O(1) idle expiry and LRU
  eviction.
* Event timestamps are those of the packet that made the bytes deliverable (or of the call to
  ``expire``/``finish``), so events come out in non-decreasing time for in-order input.

Memory budgets: ``max_flow_buffer`` per flow and ``max_total_buffer`` in all count the bytes held out
of order plus ``piece_overhead`` per held piece and, in the total, ``flow_overhead`` per open flow
(measured defaults below; the engine adds what its TLS and HTTP state of a flow costs). Over the total
budget the biggest holders give up their holes first; a new flow that still finds no room evicts the
least recently active flows (reason "evicted", counted in ``flows_evicted_budget``).

Holes become ``StreamGap`` when the peer ACKs past the hole while data after it is held, when a
memory budget is exceeded (reason "budget"), at that direction's FIN, and when the flow closes
(RST, idle, eviction, port reuse, end of input; a trailing gap up to the peer's last ACK is
declared then). Besides the reasons of :class:`FlowClosed`, a flow whose 4-tuple gets a new SYN
while it is still open closes with reason "reused".
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from tlsmirror.frames.events import ACK, FIN, RST, SYN, TcpSegment, wire_key
from tlsmirror.tcp.events import (
    CLIENT,
    SERVER,
    Flow,
    FlowClosed,
    FlowOpened,
    StreamData,
    StreamGap,
    TcpEvent,
)

__all__ = ["WELL_KNOWN_SERVER_PORTS", "TcpReassembler"]

# Final: compiled, constants in the code (literals) or native statics, not a module dict lookup per segment
_M: Final = 0xFFFFFFFF
_HALF: Final = 1 << 31
_WRAP: Final = 1 << 32
_SFR: Final = SYN | FIN | RST
_ACK: Final = ACK

#: Ports (>= 1024) that mark the server side when a connection is picked up without its handshake.
#: Any port below 1024 counts as well.
WELL_KNOWN_SERVER_PORTS = frozenset(
    {1080, 1433, 1521, 2379, 3000, 3128, 3306, 4443, 5000, 5432, 5443, 6379, 6443, 8000, 8008, 8080,
     8081, 8443, 8888, 9000, 9090, 9200, 9443, 10443}
)

#: Memory the budgets charge beyond the bytes (pure-Python build): an open flow (its _Conn, two _Half,
#: the Flow and its address tuples, two 4-tuple keys and entries in ``_halves``, its LRU entry) costs
#: 1.53 kB of RSS (50,000 flows; tracemalloc sees 1.31 kB); a piece held out of order (its bytes object
#: header, its start offset as an int, two list slots) traces about 81 B.
FLOW_OVERHEAD = 1536
PIECE_OVERHEAD = 96

_COUNTERS = (
    "retransmitted_bytes",  # bytes at or before the delivered point, dropped
    "overlaps",             # segments that overlapped held (not yet delivered) data
    "overlap_bytes",        # bytes of those overlaps, dropped (the first seen copy wins)
    "gaps",
    "gap_bytes",
    "budget_dropped_bytes",  # gap bytes declared because of max_flow_buffer / max_total_buffer
    "data_after_fin_bytes",  # payload beyond a direction's FIN, dropped
    "rst_payload_bytes",     # payload carried by RST segments, ignored
    "segments_no_flow",      # ACK/FIN/RST without a known flow and without data: ignored
    "syn_retransmits",
    "odd_syns",              # SYN+ACK contradicting the state of an open flow: ignored
    "odd_fins",              # FIN before the already delivered point: taken as ending there
    "flows_opened",
    "flows_evicted",         # flows closed to make room: max_flows, or the total budget (also below)
    "flows_evicted_budget",  # of those, for the total budget (max_total_buffer)
    "flows_closed_fin",
    "flows_closed_rst",
    "flows_closed_idle",
    "flows_closed_evicted",
    "flows_closed_end",
    "flows_closed_reused",   # a new SYN on the 4-tuple of an open flow
)


# a direction's key in ``_halves``: source address, destination address, source and destination port as one
# bytes (``TcpSegment.key``, ``wire_key``): per segment one hash and one compare
_Key = bytes


class _Conn:
    __slots__ = ("flow", "halves", "keys")

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        c = _Half(self, CLIENT)
        s = _Half(self, SERVER)
        c.peer = s
        s.peer = c
        self.halves = (c, s)
        self.keys: tuple[_Key, ...] = ()


class _Half:
    """One direction of a connection (the bytes one endpoint sends)."""

    __slots__ = ("ack", "conn", "direction", "done", "hdata", "held", "hstart", "isn", "off", "peer",
                 "seq")

    def __init__(self, conn: _Conn, direction: int) -> None:
        self.conn = conn
        self.direction = direction
        self.peer: _Half = self
        self.seq = -1        # next expected sequence number (mod 2**32); -1 until known
        self.off = 0         # stream offset of ``seq``: bytes delivered + declared as gaps
        self.isn = -1        # sequence number of this direction's SYN, if seen
        self.ack = -1        # last ACK value the peer sent for this direction's bytes (raw)
        self.done = False    # FIN reached: nothing more is delivered
        self.held = 0        # bytes held out of order
        self.hstart: list[int] = []
        self.hdata: list[bytes] = []


class TcpReassembler:
    """Reassembles TCP segments into per-direction byte streams with explicit gaps."""

    def __init__(self, *, idle_timeout: float = 300.0, max_flow_buffer: int = 4 << 20,
                 max_total_buffer: int = 256 << 20, max_flows: int = 200_000,
                 flow_overhead: int = FLOW_OVERHEAD, piece_overhead: int = PIECE_OVERHEAD) -> None:
        if idle_timeout <= 0 or max_flow_buffer < 0 or max_total_buffer < 0 or max_flows < 1 or \
                flow_overhead < 0 or piece_overhead < 0:
            raise ValueError("invalid TcpReassembler limits")
        self.idle_timeout = idle_timeout
        self.max_flow_buffer = max_flow_buffer
        self.max_total_buffer = max_total_buffer
        self.max_flows = max_flows
        self.flow_overhead = flow_overhead
        self.piece_overhead = piece_overhead
        self.buffered_bytes = 0  # bytes held out of order now
        self._pieces = 0  # pieces held out of order now
        self._halves: dict[_Key, _Half] = {}
        self._lru: OrderedDict[_Conn, None] = OrderedDict()
        # its bound move_to_end, made once: compiled, a call per segment without a method lookup by name
        self._touch: Callable[[_Conn], None] = self._lru.move_to_end
        self._holding: dict[_Half, None] = {}
        # id of the next flow opened; a caller may set it (replay --workers numbers each flow by the
        # capture frame that opened it, so ids do not depend on how the flows were shared out)
        self.next_flow_id = 1
        self._next_expire = float("-inf")
        self._segments = 0
        self._bytes = 0
        self._counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    # ------------------------------------------------------------------ public

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (``bytes`` counts delivered stream bytes)."""
        out = {"segments": self._segments, "bytes": self._bytes}
        out.update(self._counts)
        return out

    @property
    def open_flows(self) -> int:
        return len(self._lru)

    @property
    def charge(self) -> int:
        """What the total budget counts now: held bytes, their pieces' and the open flows' overhead."""
        return self.buffered_bytes + self._pieces * self.piece_overhead + len(self._lru) * self.flow_overhead

    def feed(self, seg: TcpSegment) -> list[TcpEvent]:
        self._segments += 1
        h = self._halves.get(seg.key)
        flags = seg.flags
        if h is None or flags & _SFR:
            return self._feed_special(seg, h)
        conn = h.conn
        ts = seg.ts
        conn.flow.ts_last = ts
        self._touch(conn)
        if flags & _ACK:
            peer = h.peer
            peer.ack = seg.ack
            if peer.hstart:
                out: list[TcpEvent] = []
                self._ack_gaps(peer, ts, out)
                if seg.payload:
                    self._data(h, seg.seq, seg.payload, ts, out)
                return out
        p = seg.payload
        if not p:
            return []
        seq = seg.seq
        if seq == h.seq and not h.hstart and not h.done:
            n = len(p)
            h.seq = (seq + n) & _M
            h.off += n
            self._bytes += n
            return [StreamData(conn.flow, h.direction, ts, p)]
        out = []
        self._data(h, seq, p, ts, out)
        return out

    def expire(self, now: float) -> list[TcpEvent]:
        """Close flows whose last packet is older than ``idle_timeout`` (packet time)."""
        if now < self._next_expire:
            return []
        out: list[TcpEvent] = []
        cutoff = now - self.idle_timeout
        lru = self._lru
        while lru:
            conn = next(iter(lru))
            last = conn.flow.ts_last
            if last >= cutoff:
                self._next_expire = last + self.idle_timeout
                break
            self._close(conn, now, "idle", out)
        else:
            self._next_expire = now + self.idle_timeout
        return out

    def finish(self, ts: float) -> list[TcpEvent]:
        """End of input: flush held data (gaps where holes) and close every flow ("end")."""
        out: list[TcpEvent] = []
        while self._lru:
            self._close(next(iter(self._lru)), ts, "end", out)
        return out

    def swap_roles(self, flow: Flow) -> None:
        """Swap client and server of an open flow (``Flow.swap_roles`` plus the directions of
        later events). Unknown or closed flows are ignored."""
        h = self._halves.get(wire_key(flow.addr[CLIENT], flow.addr[SERVER], flow.port[CLIENT], flow.port[SERVER]))
        if h is None or h.conn.flow is not flow:
            return
        c, s = h.conn.halves
        c.direction, s.direction = SERVER, CLIENT
        h.conn.halves = (s, c)
        flow.swap_roles()

    # ------------------------------------------------------------ flows

    def _feed_special(self, seg: TcpSegment, h: _Half | None) -> list[TcpEvent]:
        """Segments with SYN/FIN/RST, or for no known flow."""
        out: list[TcpEvent] = []
        flags = seg.flags
        ts = seg.ts
        p = seg.payload
        if flags & RST:
            if h is None:
                self._counts["segments_no_flow"] += 1
                return out
            if p:
                self._counts["rst_payload_bytes"] += len(p)
            self._close(h.conn, ts, "rst", out)
            return out
        if flags & SYN:
            h = self._syn_ack(seg, h, out) if flags & _ACK else self._syn(seg, h, out)
            if h is None:
                return out
        elif h is None:
            if not p:
                self._counts["segments_no_flow"] += 1
                return out
            h = self._open(seg, self._sender_is_client(seg), False, out)
        conn = h.conn
        conn.flow.ts_last = ts
        self._touch(conn)
        if flags & _ACK:
            peer = h.peer
            peer.ack = seg.ack
            if peer.hstart:
                self._ack_gaps(peer, ts, out)
        seq = seg.seq
        if flags & SYN:
            seq = (seq + 1) & _M
        if p:
            self._data(h, seq, p, ts, out)
        if flags & FIN:
            self._fin(h, (seq + len(p)) & _M, ts, out)
        return out

    @staticmethod
    def _sender_is_client(seg: TcpSegment) -> bool:
        sp, dp = seg.sport, seg.dport
        s_srv = sp < 1024 or sp in WELL_KNOWN_SERVER_PORTS
        d_srv = dp < 1024 or dp in WELL_KNOWN_SERVER_PORTS
        if s_srv and d_srv:
            return not sp < dp
        return not s_srv

    def _syn(self, seg: TcpSegment, h: _Half | None, out: list[TcpEvent]) -> _Half:
        if h is not None:
            if h.isn == seg.seq:
                self._counts["syn_retransmits"] += 1
                return h
            self._close(h.conn, seg.ts, "reused", out)
        h = self._open(seg, True, True, out)
        h.isn = seg.seq
        h.seq = (seg.seq + 1) & _M
        return h

    def _syn_ack(self, seg: TcpSegment, h: _Half | None, out: list[TcpEvent]) -> _Half | None:
        if h is None:
            h = self._open(seg, False, True, out)
            h.peer.seq = seg.ack  # the client's ISN + 1, though its SYN was not captured
        elif h.isn == seg.seq:
            self._counts["syn_retransmits"] += 1
            return h
        elif h.isn == -1 and h.seq == -1:
            pass  # the answer to a SYN we saw
        elif h.done or h.peer.done:
            self._close(h.conn, seg.ts, "reused", out)
            h = self._open(seg, False, True, out)
            h.peer.seq = seg.ack
        else:
            self._counts["odd_syns"] += 1
            return None
        h.isn = seg.seq
        h.seq = (seg.seq + 1) & _M
        return h

    def _open(self, seg: TcpSegment, sender_is_client: bool, syn_seen: bool,
              out: list[TcpEvent]) -> _Half:
        ts = seg.ts
        if len(self._lru) >= self.max_flows:
            self._counts["flows_evicted"] += 1
            self._close(next(iter(self._lru)), ts, "evicted", out)
        if self.charge + self.flow_overhead > self.max_total_buffer:
            self._room(ts, out)
        sender = (seg.src, seg.sport)
        receiver = (seg.dst, seg.dport)
        flow_id = self.next_flow_id
        self.next_flow_id = flow_id + 1
        if sender_is_client:
            flow = Flow(flow_id, sender, receiver, ts, syn_seen)
        else:
            flow = Flow(flow_id, receiver, sender, ts, syn_seen)
        conn = _Conn(flow)
        c, s = conn.halves
        mine, theirs = (c, s) if sender_is_client else (s, c)
        fwd = seg.key
        rev = wire_key(seg.dst, seg.src, seg.dport, seg.sport)
        conn.keys = (fwd, rev)
        self._halves[rev] = theirs
        self._halves[fwd] = mine  # fwd == rev only for a self-connection: the sender wins
        self._lru[conn] = None
        self._counts["flows_opened"] += 1
        out.append(FlowOpened(flow, ts))
        return mine

    def _close(self, conn: _Conn, ts: float, reason: str, out: list[TcpEvent]) -> None:
        for h in conn.halves:
            if not h.done:
                self._flush(h, ts, "lost", out)
                h.done = True
        out.append(FlowClosed(conn.flow, ts, reason))
        for key in conn.keys:
            self._halves.pop(key, None)
        del self._lru[conn]
        self._counts["flows_closed_" + reason] += 1

    # ------------------------------------------------------------ data

    def _data(self, h: _Half, seq: int, data: bytes, ts: float, out: list[TcpEvent]) -> None:
        if h.seq < 0:  # first bytes of a direction picked up mid-stream
            h.seq = seq
        rel = (seq - h.seq) & _M
        if rel >= _HALF:
            rel -= _WRAP
        off = h.off + rel
        n = len(data)
        end = off + n
        cur = h.off
        if h.done:
            after = end - max(off, cur)
            if after > 0:
                self._counts["data_after_fin_bytes"] += after
                self._counts["retransmitted_bytes"] += n - after
            else:
                self._counts["retransmitted_bytes"] += n
            return
        if end <= cur:
            self._counts["retransmitted_bytes"] += n
            return
        if off < cur:
            self._counts["retransmitted_bytes"] += cur - off
            data = data[cur - off:]
            off = cur
        hs = h.hstart
        if off == cur and (not hs or end <= hs[0]):
            h.off = end
            h.seq = (h.seq + end - cur) & _M
            self._bytes += end - cur
            out.append(StreamData(h.conn.flow, h.direction, ts, data))
            if hs and hs[0] == end:
                self._drain(h, ts, out)
            return
        self._hold(h, off, data)
        if hs and hs[0] == h.off:
            self._drain(h, ts, out)
        if self._flow_charge(h) > self.max_flow_buffer:
            self._budget_flow(h, ts, out)
        if self.charge > self.max_total_buffer:
            self._budget_total(ts, out)

    def _hold(self, h: _Half, off: int, data: bytes) -> None:
        """Insert ``data`` at stream offset ``off`` (> h.off) among the held pieces, keeping only
        the bytes not already held (the first seen copy wins)."""
        hs = h.hstart
        hd = h.hdata
        base = off
        end = off + len(data)
        i = bisect_right(hs, off)
        overlap = 0
        pieces = 0
        if i:
            prev_end = hs[i - 1] + len(hd[i - 1])
            if prev_end > off:
                overlap = min(prev_end, end) - off
                off = prev_end
        added = 0
        while off < end:
            if i < len(hs) and hs[i] < end:
                nxt = hs[i]
                if nxt > off:
                    hs.insert(i, off)
                    hd.insert(i, data[off - base:nxt - base])
                    added += nxt - off
                    pieces += 1
                    i += 1
                nxt_end = nxt + len(hd[i])
                overlap += min(nxt_end, end) - nxt
                off = nxt_end
                i += 1
            else:
                hs.insert(i, off)
                hd.insert(i, data[off - base:])
                added += end - off
                pieces += 1
                break
        if overlap:
            self._counts["overlaps"] += 1
            self._counts["overlap_bytes"] += overlap
        if added:
            h.held += added
            self.buffered_bytes += added
            self._pieces += pieces
            self._holding[h] = None

    def _drain(self, h: _Half, ts: float, out: list[TcpEvent]) -> None:
        """Deliver the held pieces that are now contiguous with the delivered point."""
        hs = h.hstart
        hd = h.hdata
        off = h.off
        flow = h.conn.flow
        d = h.direction
        k = 0
        count = len(hs)
        while k < count and hs[k] == off:
            data = hd[k]
            out.append(StreamData(flow, d, ts, data))
            off += len(data)
            k += 1
        if k:
            del hs[:k]
            del hd[:k]
            n = off - h.off
            h.seq = (h.seq + n) & _M
            h.off = off
            h.held -= n
            self.buffered_bytes -= n
            self._pieces -= k
            self._bytes += n
            if not hs:
                self._holding.pop(h, None)

    def _gap(self, h: _Half, size: int, reason: str, ts: float, out: list[TcpEvent]) -> None:
        out.append(StreamGap(h.conn.flow, h.direction, ts, size, reason))
        h.off += size
        h.seq = (h.seq + size) & _M
        counts = self._counts
        counts["gaps"] += 1
        counts["gap_bytes"] += size
        if reason == "budget":
            counts["budget_dropped_bytes"] += size

    def _ack_gaps(self, h: _Half, ts: float, out: list[TcpEvent]) -> None:
        """The peer acknowledged bytes of ``h`` beyond the delivered point while ``h`` holds data:
        the receiver has them, the capture lost them."""
        rel = (h.ack - h.seq) & _M
        if rel == 0 or rel >= _HALF:
            return
        acked = h.off + rel
        hs = h.hstart
        while hs and h.off < acked:
            first = hs[0]
            if first > h.off:
                self._gap(h, min(acked, first) - h.off, "lost", ts, out)
            self._drain(h, ts, out)

    def _fin(self, h: _Half, fin_seq: int, ts: float, out: list[TcpEvent]) -> None:
        if h.done:
            return
        if h.seq < 0:
            h.seq = fin_seq
        rel = (fin_seq - h.seq) & _M
        if rel >= _HALF:
            rel -= _WRAP
        fin_off = h.off + rel
        if fin_off < h.off:
            self._counts["odd_fins"] += 1
            fin_off = h.off
        hs = h.hstart
        hd = h.hdata
        if hs and hs[-1] + len(hd[-1]) > fin_off:  # drop held bytes beyond the FIN
            dropped = 0
            while hs and hs[-1] >= fin_off:
                hs.pop()
                dropped += len(hd.pop())
                self._pieces -= 1
            if hs and hs[-1] + len(hd[-1]) > fin_off:
                keep = fin_off - hs[-1]
                dropped += len(hd[-1]) - keep
                hd[-1] = hd[-1][:keep]
            h.held -= dropped
            self.buffered_bytes -= dropped
            self._counts["data_after_fin_bytes"] += dropped
            if not hs:
                self._holding.pop(h, None)
        self._flush(h, ts, "lost", out, fin_off)
        h.done = True
        if h.peer.done:
            self._close(h.conn, ts, "fin", out)

    def _flush(self, h: _Half, ts: float, reason: str, out: list[TcpEvent], end: int = -1) -> None:
        """Deliver everything held, declaring the holes as gaps, then a final gap up to ``end``
        (the FIN) or, without a FIN, up to what the peer acknowledged."""
        hs = h.hstart
        while hs:
            first = hs[0]
            if first > h.off:
                self._gap(h, first - h.off, reason, ts, out)
            self._drain(h, ts, out)
        if end < 0 and h.ack >= 0 and h.seq >= 0:
            rel = (h.ack - h.seq) & _M
            # 1 could be a FIN the capture missed rather than a lost byte
            if 1 < rel < _HALF:
                end = h.off + rel
        if end > h.off:
            self._gap(h, end - h.off, reason, ts, out)

    # ------------------------------------------------------------ budgets

    def _flush_first_hole(self, h: _Half, ts: float, out: list[TcpEvent]) -> None:
        first = h.hstart[0]
        if first > h.off:
            self._gap(h, first - h.off, "budget", ts, out)
        self._drain(h, ts, out)

    def _half_charge(self, h: _Half) -> int:
        return h.held + len(h.hstart) * self.piece_overhead

    def _flow_charge(self, h: _Half) -> int:
        """What the per-flow budget counts for ``h``'s flow: both directions' held bytes and pieces."""
        return self._half_charge(h) + self._half_charge(h.peer)

    def _budget_flow(self, h: _Half, ts: float, out: list[TcpEvent]) -> None:
        peer = h.peer
        limit = self.max_flow_buffer
        while self._flow_charge(h) > limit:
            self._flush_first_hole(h if self._half_charge(h) >= self._half_charge(peer) else peer, ts, out)

    def _budget_total(self, ts: float, out: list[TcpEvent], room: int = 0) -> None:
        limit = self.max_total_buffer - room
        while self.charge > limit and self._holding:
            biggest = max(self._holding, key=self._half_charge)
            while biggest.hstart:
                self._flush_first_hole(biggest, ts, out)

    def _room(self, ts: float, out: list[TcpEvent]) -> None:
        """Room for one more flow within the total budget: the biggest holders give up their holes,
        then the least recently active flows are evicted."""
        room = self.flow_overhead
        self._budget_total(ts, out, room)
        lru = self._lru
        while lru and self.charge + room > self.max_total_buffer:
            self._counts["flows_evicted"] += 1
            self._counts["flows_evicted_budget"] += 1
            self._close(next(iter(lru)), ts, "evicted", out)
