"""One TLS connection seen from the side: records in both directions, keys when they come, plaintext out.

The session never reads a clock or a global. Secrets come from the :class:`TlsContext` it is given,
and the engine calls :meth:`TlsSession.keys_changed` when one it waits for (``wait_idents``) arrives.

Keys and records race, and a session's secrets may come one by one, in any order, repeated or late.
Nothing is decided for good on a partial set of them:

- Each direction's protected records belong to epochs (TLS 1.3: early data, handshake, application;
  TLS <= 1.2: the keys after ChangeCipherSpec). A record is decrypted with the key of its epoch; when
  that key is not known yet, the record is held (*pending*). A later record that decrypts under a later
  epoch's key shows that the pending ones belong to earlier epochs: they are *parked* until those keys
  come (their handshake messages still count, e.g. the ALPN of EncryptedExtensions), and they stop
  holding up the connection, except early data (0-RTT requests), which the HTTP stage needs in order.
- What the session emits reaches the engine in the order the records arrived, both directions
  interleaved: once a record is held, everything after it (either direction) waits in ``queue`` behind
  it, and is released when it is decided. So HTTP sees the same byte order as when the keys came first.
- Held records are given up only by the engine's key wait (:meth:`give_up`), by the hold budgets, or
  when the input ends; a connection that ends while holding is kept open for its keys until then.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any, Final

from ..keys import events as kl
from ..keys.rsa import rsa_decrypt_premaster
from ..tcp.events import Flow
from . import handshake as hs
from .ciphers import RecordDecryptor, decryptor_from_key_block, tls13_decryptor
from .context import ID_PREFIX, TICKET_PREFIX, TlsContext, resumption_key
from .errors import DecryptError, TlsError, TlsParseError, UnsupportedError
from .events import (
    DECRYPT_FAILED,
    DECRYPTED,
    EVICTED,
    EXPIRED,
    GAP,
    NO_HANDSHAKE,
    NO_KEY,
    UNLOCKED,
    UNSUPPORTED,
    HandshakeFacts,
    ResumptionState,
    TlsEvent,
    TlsGap,
    TlsHandshake,
    TlsOutcome,
    TlsPlaintext,
)
from .schedule import key_block, master_secret, tls13_next_secret
from .suites import CipherSuite, suite_for

# Final: compiled, each is a constant in the code instead of a module dict lookup per use (per record)
CT_CCS: Final = 20
CT_ALERT: Final = 21
CT_HANDSHAKE: Final = 22
CT_APPDATA: Final = 23
CT_HEARTBEAT: Final = 24

MAX_RECORD: Final = (1 << 14) + 2048
SEEK_LIMIT: Final = 256 << 10  # bytes searched for the first whole record after a gap before giving up
SEEK_MAX_RECORDS: Final = 4096  # records a gap may have swallowed that a trial covers
MIN_PROTECTED_RECORD: Final = 22  # header + the smallest protected record (TLS 1.3: type byte + tag)
MAX_HANDSHAKE_MESSAGE: Final = 1 << 20

# TLS 1.3 epochs of a direction's protected records, in the order they come
E_EARLY: Final = 0
E_HS: Final = 1
E_APP: Final = 2
# the key log label of each epoch, per TLS role (the server sends no early data)
_LABELS13: tuple[tuple[str | None, str, str], tuple[str | None, str, str]] = (
    (kl.CLIENT_EARLY_TRAFFIC_SECRET, kl.CLIENT_HANDSHAKE_TRAFFIC_SECRET, kl.CLIENT_TRAFFIC_SECRET_0),
    (None, kl.SERVER_HANDSHAKE_TRAFFIC_SECRET, kl.SERVER_TRAFFIC_SECRET_0),
)
_HOLD_RANK = {None: 0, UNLOCKED: 1, EXPIRED: 2, EVICTED: 3}

# Mid-stream pickup: a connection whose first records are application data (its handshake not seen)
PICKUP_MAX_RECORDS = 64  # records tried before the connection is given up (reported as no_handshake)
PICKUP_BUDGET = 1 << 13  # trial decryptions a connection may spend on finding its keys, in all
PICKUP_MAX_SECRETS = 64  # TLS 1.3 without handshake facts: unused application secrets tried, at most
PICKUP_KEY_UPDATES = 3  # TLS 1.3: KeyUpdates before the pickup that a trial covers (secret generations)
_SUITES13 = {32: (0x1301, 0x1303, 0x1304, 0x1305), 48: (0x1302,)}  # TLS 1.3 suites by secret length


# Memory the hold budgets charge beyond the bytes themselves (measured with bench/bench_memory.py
# --no-keys --breakdown, pure-Python build, CPython 3.11+; the compiled build needs less):
# - a held record: its _Held (120 B with the GC header), the bytes object's header (33 B), its size as
#   an int object (32 B) and its places in ``queue`` and ``pending`` (16 B), rounded up for the allocator;
# - a session that ended while it holds (kept for its keys until key_wait): the session, its two
#   directions, the handshake messages it parsed, its flow and its key-wait entries.
HELD_RECORD_OVERHEAD = 224
ENDED_SESSION_OVERHEAD = 6144
# What an open connection's session costs: its handshake, decryptors and buffers, 9.6 kB of RSS per
# decrypted connection (bench_memory --open-flows; tracemalloc sees 5.0 kB, the rest is the cipher
# library's state and the allocator). The engine counts it, per flow, in the reassembly budget (the TCP
# part is tcp.reassembly.FLOW_OVERHEAD).
OPEN_SESSION_OVERHEAD = 10240
_VERSIONS = {v: v for v in range(0x0300, 0x0305)}  # one int object per record version (held records)

REFRAME_KEEP = 2 * (MAX_RECORD + 5)  # bytes kept while looking for the record framing mid-stream


def _reframe(buf: bytearray, start: int) -> tuple[int, int]:
    """Mid-stream, no handshake: where an application-data record header starts that is followed by
    another header or ends with the bytes so far (the framing found; a wrong one fails the pickup's
    tag check and is looked for again), and where the bytes still worth keeping start (-1 and that
    while none is found yet)."""
    n = len(buf)
    pos = start
    keep = -1
    while True:
        o = buf.find(b"\x17\x03", pos)
        if o < 0 or n - o < 5:
            break
        pos = o + 1
        length = (buf[o + 3] << 8) | buf[o + 4]
        if buf[o + 2] > 4 or length > MAX_RECORD or length < MIN_PROTECTED_RECORD - 5:
            continue
        nxt = o + 5 + length
        if nxt == n:
            return o, o  # a record that ends where the bytes so far end (a segment's last): the pickup's tag says
        if nxt + 3 > n:
            if keep < 0:
                keep = o  # cannot be checked yet: wait for the bytes after it
            continue
        if 20 <= buf[nxt] <= 24 and buf[nxt + 1] == 3 and buf[nxt + 2] <= 4:
            return o, o
    if keep < 0:
        keep = max(start, n - 4)  # a header may straddle this chunk and the next
    return -1, max(keep, n - REFRAME_KEEP)
# a TLS 1.3 pickup trial: (role, client random, suite, secret, decryptor)
_Option13 = tuple[int, bytes, CipherSuite, bytes, RecordDecryptor]


class _RolesSwapped(Exception):
    """Internal: a pickup found the TLS client on the other TCP side; the record loop flips its role."""


def looks_like_tls(data: bytes) -> bool:
    """Does a stream start with a TLS record header, or an SSLv2-compatible ClientHello (any port)?"""
    n = len(data)
    if n >= 3 and 20 <= data[0] <= 24 and data[1] == 3 and data[2] <= 4:
        return True
    return n >= 5 and data[0] & 0x80 != 0 and data[2] == hs.CLIENT_HELLO and data[3] == 3 and data[4] <= 3


def looks_like_client_hello(data: bytes) -> bool:
    """A TLS handshake record that starts with a ClientHello (STARTTLS: TLS begins mid-stream)."""
    return len(data) >= 6 and data[0] == CT_HANDSHAKE and data[1] == 3 and data[2] <= 4 and data[5] == 1


class _Held:
    """A protected record waiting for its key, or a run of ``count`` records given up (no bytes kept).

    It is also a place in the session's delivery queue: ``done`` once what it yields (``events``) is
    known, and everything queued behind it waits until then.
    """

    __slots__ = ("bound", "count", "ctype", "d", "done", "events", "frag", "lost", "size", "ts", "ver")

    def __init__(self, d: int, ctype: int, ver: int, frag: bytes, ts: float, count: int = 0, lost: int = 0) -> None:
        self.d = d
        self.ctype = ctype
        self.ver = ver
        self.frag = frag
        self.ts = ts
        self.size = len(frag) + 5 if frag else 0  # ciphertext bytes held now (counted in the budgets)
        self.count = count  # a run: records given up, skipped by sequence number when the key comes
        self.lost = lost  # a run: their ciphertext bytes
        self.bound = -1  # parked: the epoch it is known to precede (-1: pending, its epoch unknown)
        self.done = False
        self.events: list[Any] | None = None  # made when there is one (most records never yield one here)

    def sink(self) -> list[Any]:
        """Where what this record yields goes (made on first use)."""
        ev = self.events
        if ev is None:
            ev = self.events = []
        return ev


class _Direction:
    """Per-direction record state (TLS roles: 0 = client, 1 = server)."""

    __slots__ = ("app_ok", "app_secret", "broken", "buf", "dec", "ehs", "encrypted", "hs_buf", "inflate", "init",
                 "keys", "next_dec", "parked", "pending", "resync", "seek", "skip", "stage")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.hs_buf = bytearray()  # plaintext handshake bytes (TLS <= 1.2: the protected ones too)
        self.encrypted = False  # records from here on are protected
        self.dec: RecordDecryptor | None = None  # TLS <= 1.2: keys in force (None after CCS: waiting)
        self.next_dec: RecordDecryptor | None = None  # TLS <= 1.2: keys that the next CCS puts in force
        self.skip = 0  # TLS <= 1.2: records given up before the keys came (their sequence numbers)
        self.keys: list[RecordDecryptor | None] = [None, None, None]  # TLS 1.3: a decryptor per epoch
        self.init = E_HS  # TLS 1.3: the first epoch of this direction (early data when offered)
        self.stage = E_HS  # TLS 1.3: the epoch of the next record is this one or later
        self.app_ok = False  # TLS 1.3: this side's handshake is over (a failing record is a failure)
        self.app_secret = b""
        self.ehs = [bytearray(), bytearray(), bytearray()]  # TLS 1.3: handshake bytes per epoch
        self.pending: list[_Held] = []  # records (and runs given up) whose epoch is not known yet, in order
        self.parked: list[_Held] = []  # TLS 1.3: records of earlier epochs waiting for those keys
        self.resync = 0  # TLS 1.3: records dropped unseen; the next one is found by trial over them
        self.seek = 0  # bytes lost in a TCP gap: record framing and sequence number are being found again
        self.broken: str | None = None  # record framing lost (gap, garbage)
        self.inflate: Any = None  # zlib decompressor when the session uses TLS compression (DEFLATE)


class TlsSession:
    """Passive TLS 1.0-1.3 decryption for one TCP connection.

    Input: :meth:`data`, :meth:`gap`, :meth:`keys_changed`, :meth:`give_up`, :meth:`close`. Output:
    the events appended to ``out`` (the engine takes them after each call).
    """

    # slotted: one per connection, tens of thousands of them may wait for keys at once
    __slots__ = (
        "_dir_fixed", "_ended", "_pickup_alts", "_pickup_opts", "_queued_plain", "_sink", "alpn", "ch", "charge",
        "client_dir", "closed", "ctx", "dirs", "drop_reasons", "enc_pms", "failure", "flow", "had_gap",
        "held_bytes", "held_dropped_bytes", "held_since", "hold_state", "key_lag", "keys_ready", "late_key",
        "master", "no_handshake", "out", "picked_up", "pickup_budget", "pickup_done", "pickup_sni", "pickup_tries",
        "queue",
        "records_decrypted", "records_failed", "records_skipped", "registered", "renegotiations", "resumed",
        "resyncs", "session_hash", "settled", "sh", "suite", "ticket", "tls13", "transcript", "ts_first",
        "ts_hello", "unsupported", "user", "version", "wait_idents",
    )

    def __init__(self, flow: Flow, ctx: TlsContext, ts: float) -> None:
        self.flow = flow
        self.ctx = ctx
        self.ts_first = ts
        self.ts_hello: float | None = None  # packet time of the ClientHello
        self.client_dir = 0  # tcp direction that carries the TLS client's bytes
        self._dir_fixed = False
        self.dirs = (_Direction(), _Direction())
        self.ch: hs.ClientHello | None = None
        self.sh: hs.ServerHello | None = None
        self.suite: CipherSuite | None = None
        self.version = 0
        self.tls13 = False
        self.alpn: str | None = None
        self.resumed = False
        self.enc_pms: bytes | None = None
        self.transcript: list[bytes] | None = []  # handshake messages until ClientKeyExchange (for EMS)
        self.session_hash: bytes | None = None
        self.master: bytes | None = None
        self.keys_ready = False  # both directions' application data can be decrypted
        self.settled = False  # every secret this session can use is known: it waits for no key
        self.ticket: bytes | None = None
        self.unsupported: str | None = None
        self.failure: str | None = None
        self.had_gap = False
        self.no_handshake = False
        self.late_key = False
        self.key_lag: float | None = None  # ClientHello to the secret that made the session decryptable
        self.hold_state: str | None = None  # how holding ended: unlocked, expired, evicted (None: never held)
        self.records_decrypted = 0
        self.records_failed = 0
        self.records_skipped = 0
        self.renegotiations = 0
        self.resyncs = 0  # times a side found its records again after a TCP gap
        self.held_bytes = 0  # ciphertext held and plaintext queued by this session (the budgets count both)
        # what the hold budgets charge this session: held_bytes plus the overhead of each held record and,
        # once its flow ended while it holds, of the session itself (HELD_RECORD_OVERHEAD, ENDED_SESSION_...)
        self.charge = 0
        self._ended = False
        self.held_dropped_bytes = 0
        self.held_since: float | None = None  # packet time of the oldest thing held now (None: none)
        self.drop_reasons: list[str] = []  # why held ciphertext was given up (budget, key wait)
        self.wait_idents: list[bytes] = []  # idents this session waits on (client random, session id, ...)
        self.registered = 0  # how many of them the engine has registered
        self.closed = False
        self.out: list[TlsEvent] = []  # events for the engine, in order
        self.queue: list[Any] = []  # events (and held records) waiting behind a held record
        self._sink: list[Any] | None = None  # where a held record being decided puts what it yields
        self._queued_plain = 0  # plaintext bytes in ``queue``
        self.user: Any = None  # the engine's attachment (e.g. the HTTP parser fed by this session)
        self.picked_up = False  # decrypted from mid-stream (handshake not seen), keys found by pickup
        self.pickup_done = False  # pickup succeeded or was given up: no more trials
        self.pickup_sni: str | None = None  # picked up: the server name of the handshake facts
        self.pickup_tries = 0  # application-data records tried for a pickup
        self.pickup_budget = PICKUP_BUDGET
        # TLS 1.3 pickup: per role, the secrets after KeyUpdates that side's first record may be under
        self._pickup_alts: list[list[tuple[bytes, RecordDecryptor]]] | None = None
        # TLS 1.3 pickup without facts: the secrets tried on the last record and their decryptors
        self._pickup_opts: tuple[list[bytes], list[_Option13]] | None = None

    @property
    def version_name(self) -> str | None:
        return hs.version_name(self.version) if self.version else None

    @property
    def sni(self) -> str | None:
        """The server name: of the ClientHello, else (picked up mid-stream) of the handshake facts."""
        return self.ch.sni if self.ch is not None else self.pickup_sni

    @property
    def blocked(self) -> bool:
        """Is something held that later events must wait for (a record whose key may still come)?"""
        return bool(self.queue)

    # ------------------------------------------------------------------ output
    def _emit(self, ev: Any) -> None:
        sink = self._sink
        if sink is not None:
            sink.append(ev)
        elif self.queue:
            self.queue.append(ev)
        else:
            self.out.append(ev)
            return
        if type(ev) is TlsPlaintext:
            n = len(ev.data)
            self._queued_plain += n
            self._add_held(n)

    def _add_held(self, n: int) -> None:
        self.held_bytes += n
        self.charge += n
        ctx = self.ctx
        ctx.held_bytes += n
        ctx.charge += n

    def _unhold(self, n: int) -> None:
        self.held_bytes -= n
        self.charge -= n
        ctx = self.ctx
        ctx.held_bytes -= n
        ctx.charge -= n

    def _unhold_record(self, h: _Held) -> None:
        """A held record's bytes are no longer kept: uncharge them and the record's overhead."""
        n = h.size
        if n:
            self._unhold(n)
            self.charge -= HELD_RECORD_OVERHEAD
            self.ctx.charge -= HELD_RECORD_OVERHEAD
            h.size = 0
        h.frag = b""

    def ended(self) -> None:
        """The TCP flow ended while this session holds records for its keys: it is kept until they come
        (or the key wait or a budget gives them up). Free what no more input needs, charge the rest."""
        if self.closed or self._ended:
            return
        self._ended = True
        self.charge += ENDED_SESSION_OVERHEAD
        self.ctx.charge += ENDED_SESSION_OVERHEAD
        for st in self.dirs:
            st.buf = bytearray()  # a record cut off by the end of the stream never completes

    def _flush(self) -> None:
        """Pass on what is decided at the head of the queue; note the time of the oldest thing held."""
        q = self.queue
        if q:
            out = self.out
            freed = 0
            i = 0
            n = len(q)
            while i < n:
                item = q[i]
                if type(item) is _Held:
                    if not item.done:
                        break
                    evs = item.events
                    if evs is not None:
                        for ev in evs:
                            out.append(ev)
                            if type(ev) is TlsPlaintext:
                                freed += len(ev.data)
                        item.events = None
                else:
                    out.append(item)
                    if type(item) is TlsPlaintext:
                        freed += len(item.data)
                i += 1
            if i:
                del q[:i]
            if freed:
                self._queued_plain -= freed
                self._unhold(freed)
        since: float | None = None
        if q:
            since = q[0].ts
        for st in self.dirs:
            if st.parked:
                t = st.parked[0].ts
                if since is None or t < since:
                    since = t
        self.held_since = since

    # ------------------------------------------------------------------ input
    def data(self, tcp_dir: int, data: bytes, ts: float) -> None:
        if not self._dir_fixed:
            self._fix_direction(tcp_dir, data)
        d = tcp_dir ^ self.client_dir
        st = self.dirs[d]
        if st.broken is not None:
            return
        buf = st.buf
        if not buf:
            fast = self._fast_decryptor(st)
            if fast is not None:
                used = self._fast_records(d, fast, data, ts)
                if used == len(data):
                    return
                data = data[used:]
        buf += data
        if st.seek:
            start = self._seek(d, st, buf)
            if start < 0:
                if st.broken is not None:
                    del buf[:]
                return
            del buf[:start]
        n = len(buf)
        off = 0
        if n >= 3 and buf[0] & 0x80 and d == 0 and self.ch is None and buf[2] == hs.CLIENT_HELLO:
            off = self._sslv2_hello(buf)
            if off < 0:
                return
        while n - off >= 5:
            ctype = buf[off]
            ver = (buf[off + 1] << 8) | buf[off + 2]
            length = (buf[off + 3] << 8) | buf[off + 4]
            if not (20 <= ctype <= 24) or buf[off + 1] != 3 or length > MAX_RECORD:
                self._set_failure(f"record framing lost ({'client' if d == 0 else 'server'} side)")
                if not st.encrypted and self.ch is None and self.sh is None and not self.pickup_done:
                    # mid-record and no handshake seen: find the record framing, then pick up
                    found, keep = _reframe(buf, off + 1)
                    if found >= 0:
                        off = found
                        continue
                    del buf[:keep]
                    return
                st.broken = "not a TLS record"
                del buf[:]
                return
            end = off + 5 + length
            if end > n:
                break
            frag = bytes(buf[off + 5:end])
            off = end
            try:
                self._record(d, ctype, ver, frag, ts)
            except _RolesSwapped:
                d ^= 1
            except UnsupportedError as exc:
                self.unsupported = str(exc)
            except TlsError as exc:
                self._set_failure(str(exc))
        if off:
            del buf[:off]

    def _fast_decryptor(self, st: _Direction) -> RecordDecryptor | None:
        """The decryptor of a direction in its steady state (application keys in force, nothing held
        ahead), else None."""
        if not st.encrypted or st.pending or self.queue or st.seek or self.unsupported is not None:
            return None
        if self.tls13:
            if st.app_ok and not st.resync and st.stage == E_APP:
                return st.keys[E_APP]
            return None
        if st.inflate is None:
            return st.dec
        return None

    def _fast_records(self, d: int, dec: RecordDecryptor, data: bytes, ts: float) -> int:
        """Decrypt the whole application-data records at the start of ``data``; return how many bytes
        were used (the rest goes through the general path)."""
        n = len(data)
        off = 0
        flow = self.flow
        out = self.out
        while n - off >= 5:
            if data[off] != CT_APPDATA or data[off + 1] != 3:
                break
            end = off + 5 + ((data[off + 3] << 8) | data[off + 4])
            if end > n or end - off > MAX_RECORD + 5:
                break
            try:
                # a bytes slice, not a memoryview: compiled, cheaper for TLS-sized records
                itype, pt = dec.decrypt(CT_APPDATA, (3 << 8) | data[off + 2], data[off + 5:end])
            except DecryptError:
                self.records_failed += 1
                self._set_failure(f"{'client' if d == 0 else 'server'} record failed authentication")
                off = end
                continue
            except TlsError:
                break  # let the general path report it
            off = end
            self.records_decrypted += 1
            if itype == CT_APPDATA:
                if pt:
                    out.append(TlsPlaintext(flow, d, ts, pt))
            else:
                st = self.dirs[d]
                try:
                    if self.tls13:
                        self._inner13(d, st, E_APP, itype, pt, ts)
                    else:
                        self._inner12(d, st, itype, pt, ts)
                except UnsupportedError as exc:
                    self.unsupported = str(exc)
                except TlsError as exc:
                    self._set_failure(str(exc))
                if self._fast_decryptor(st) is not dec:
                    break  # keys changed (KeyUpdate, renegotiation)
        return off

    def _sslv2_hello(self, buf: bytearray) -> int:
        """Parse an SSLv2-compatible ClientHello at the start of ``buf``; bytes used, or -1."""
        length = ((buf[0] & 0x7F) << 8) | buf[1]
        if len(buf) < 2 + length:
            return -1
        try:
            self.ch = hs.parse_sslv2_client_hello(bytes(buf[2:2 + length]))
        except TlsError as exc:
            self.dirs[0].broken = "bad SSLv2 hello"
            self._set_failure(str(exc))
            return -1
        self._wait_for(self.ch.random)
        if self.transcript is not None:
            self.transcript.append(bytes(buf[2:2 + length]))
        return 2 + length

    def gap(self, tcp_dir: int, size: int, ts: float) -> None:
        d = tcp_dir ^ self.client_dir
        st = self.dirs[d]
        self.had_gap = True
        if st.broken is None:
            del st.buf[:]
            if self._can_seek(st):
                st.seek += size  # find the next whole record after the hole and carry on
            else:
                st.broken = "gap"
        self._emit(TlsGap(self.flow, d, ts, size))

    def _can_seek(self, st: _Direction) -> bool:
        """After a gap, can this side's records be found again? Its application keys must be in force,
        and records must not chain across the hole (TLS 1.0 / SSL 3.0 CBC IVs, RC4, compression)."""
        if not st.encrypted or st.pending or st.inflate is not None or self.unsupported is not None:
            return False
        if self.tls13:
            return st.app_ok and not st.resync and st.stage == E_APP and st.keys[E_APP] is not None
        suite = self.suite
        if st.dec is None or suite is None:
            return False
        return suite.mac == "AEAD" or (suite.block_size > 1 and self.version >= 0x0302)

    def _seek(self, d: int, st: _Direction, buf: bytearray) -> int:
        """Where the first whole record after a gap starts in ``buf`` (its sequence number set), or -1
        while more bytes are needed. Candidates are headers the decryptor's tag or MAC confirms."""
        dec = st.keys[E_APP] if self.tls13 else st.dec
        assert dec is not None
        base = dec.seq
        most = min(SEEK_MAX_RECORDS, st.seek // MIN_PROTECTED_RECORD + 2)
        explicit = not self.tls13 and self.suite is not None and self.suite.mac == "AEAD" and \
            self.suite.cipher != "CHACHA20_POLY1305"
        n = len(buf)
        pos = 0
        while True:
            o = buf.find(b"\x17\x03", pos)
            if o < 0 or n - o < 5:
                break
            pos = o + 1
            length = (buf[o + 3] << 8) | buf[o + 4]
            end = o + 5 + length
            if buf[o + 2] > 4 or length > MAX_RECORD or end > n:
                continue
            frag = bytes(buf[o + 5:end])
            ver = (3 << 8) | buf[o + 2]
            guesses: list[int] = []
            if explicit and length >= 8:
                guesses.append(int.from_bytes(frag[:8], "big"))  # most stacks send the sequence number
            guesses.extend(base + k for k in range(most + 1))
            for seq in guesses:
                dec.seq = seq
                try:
                    dec.decrypt(CT_APPDATA, ver, frag)
                except TlsError:
                    continue
                dec.seq = seq  # the record is decrypted again by the normal path
                st.seek = 0
                self.resyncs += 1
                return o
            dec.seq = base
            if self._pickup_alts is not None and self._seek_alts(d, st, ver, frag, most):
                st.seek = 0
                return o
        if n > SEEK_LIMIT:
            st.broken = "gap"
            st.seek = 0
            self._set_failure(f"{'client' if d == 0 else 'server'} records could not be found again after a gap")
        return -1

    def keys_changed(self, ts: float) -> None:
        """A secret this session waits for has arrived (at ``ts``): use what it unlocks."""
        if self.sh is None or self.settled:
            return
        self._try_keys(ts)

    def give_up(self, reason: str, before: float | None = None, *, evicted: bool = False) -> int:
        """Stop waiting for keys: held records since ``before`` or earlier (all when None) are given up,
        oldest first; returns the ciphertext bytes dropped.

        They are remembered as a run of a known count, so that if the key still comes, the records after
        them decrypt (TLS <= 1.2: their sequence numbers are known; TLS 1.3: found again by trial), and a
        :class:`TlsGap` takes their place in the output. Parked handshake records go without a trace.
        """
        dropped = 0
        gave = False
        for d, st in enumerate(self.dirs):
            if st.parked:
                keep: list[_Held] = []
                for h in st.parked:
                    if before is not None and h.ts > before:
                        keep.append(h)
                        continue
                    size = h.size
                    self._unhold_record(h)
                    if h.done:
                        self.records_skipped += 1  # a handshake record whose key never came
                    else:  # early data
                        gave = True
                        dropped += size
                        h.sink().append(TlsGap(self.flow, d, h.ts, size))
                        h.done = True
                st.parked = keep
            pend = st.pending
            n = 0
            while n < len(pend) and (before is None or pend[n].ts <= before):
                n += 1
            if not n:
                continue
            gave = True
            count = lost = 0
            for h in pend[:n]:
                if h.count:
                    count += h.count
                    lost += h.lost
                else:
                    count += 1
                    lost += h.size
                    dropped += h.size
                    self._unhold_record(h)
                h.done = True
            pend[0].sink().append(TlsGap(self.flow, d, pend[0].ts, lost))
            del pend[:n]
            if self.tls13:
                st.resync += count
            else:
                st.skip += count
        if gave:
            self._hold_state(EVICTED if evicted else EXPIRED)
        if dropped:
            self.held_dropped_bytes += dropped
            if reason not in self.drop_reasons:
                self.drop_reasons.append(reason)
        self._flush()
        return dropped

    def _hold_state(self, state: str) -> None:
        if _HOLD_RANK[state] > _HOLD_RANK[self.hold_state]:
            self.hold_state = state

    def close(self, ts: float) -> None:
        if self.closed:
            return
        self.closed = True
        self.give_up("connection ended before the key arrived")
        if self._ended:
            self._ended = False
            self.charge -= ENDED_SESSION_OVERHEAD
            self.ctx.charge -= ENDED_SESSION_OVERHEAD
        self.out.append(self.outcome(ts))

    def missing_secrets(self) -> list[str]:
        """The key log labels this session could still use and does not have (names only)."""
        ch = self.ch
        if ch is None:
            return []
        if not self.tls13:
            return [] if self.keys_ready else [kl.CLIENT_RANDOM]
        missing = []
        for d, st in enumerate(self.dirs):
            for e in range(st.init, 3):
                label = _LABELS13[d][e]
                if label is not None and st.keys[e] is None:
                    missing.append(label)
        return missing

    def _drop_text(self) -> str:
        return ", ".join(self.drop_reasons)

    def outcome(self, ts: float) -> TlsOutcome:
        encrypted_seen = any(st.encrypted for st in self.dirs)
        cr = self.ch.random[:8].hex() + "..." if self.ch else "?"
        if self.unsupported:
            outcome, reason = UNSUPPORTED, self.unsupported
        elif self.no_handshake and self.sh is None and not self.picked_up:
            outcome, reason = NO_HANDSHAKE, "capture started after the TLS handshake"
        elif self.records_failed:
            outcome, reason = DECRYPT_FAILED, self.failure or "records failed authentication"
        elif encrypted_seen and not self.keys_ready:
            outcome = NO_KEY
            reason = f"no secret for client random {cr}"
            client, server = self.dirs
            if self.tls13:
                missing = [m for m in self.missing_secrets() if "TRAFFIC_SECRET_0" in m]
                reason = f"no {' or '.join(missing)} for client random {cr}"
                if client.keys[E_APP] is not None or server.keys[E_APP] is not None:
                    known = "client" if client.keys[E_APP] is not None else "server"
                    reason += f"; the {known}'s side was decrypted"
            elif self.ch is not None:
                reason += " (CLIENT_RANDOM, or a pre-master secret)"
            if self.held_dropped_bytes:
                reason += f"; {self.held_dropped_bytes} bytes of ciphertext dropped ({self._drop_text()})"
        elif self.failure:
            outcome, reason = DECRYPT_FAILED, self.failure
        elif self.had_gap or self.held_dropped_bytes:
            outcome = GAP
            parts = ["TCP gap: bytes missing from the capture"] if self.had_gap else []
            if self.resyncs:
                parts.append(f"records found again after {self.resyncs} gap(s)")
            if self.held_dropped_bytes:
                parts.append(f"{self.held_dropped_bytes} bytes of ciphertext dropped while waiting for the "
                             f"key ({self._drop_text()})")
            reason = "; ".join(parts)
        elif self.ch is None and not self.picked_up:
            outcome, reason = NO_HANDSHAKE, "no ClientHello seen"
        elif self.picked_up:
            outcome, reason = DECRYPTED, "picked up mid-stream: the handshake was not seen"
        else:
            outcome, reason = DECRYPTED, ""
        held = self.hold_state
        if held is None and self.late_key:
            held = UNLOCKED
        return TlsOutcome(
            flow=self.flow, ts=ts, client_dir=self.client_dir, outcome=outcome, reason=reason,
            version=hs.version_name(self.version) if self.version else None,
            suite=self.suite.name if self.suite else None, sni=self.sni,
            alpn=self.alpn, resumed=self.resumed, late_key=self.late_key,
            records_decrypted=self.records_decrypted, records_failed=self.records_failed,
            held_dropped_bytes=self.held_dropped_bytes, held=held, key_lag=self.key_lag,
            picked_up=self.picked_up)

    # ------------------------------------------------------------------ records
    def _fix_direction(self, tcp_dir: int, data: bytes) -> None:
        if len(data) >= 3 and data[0] & 0x80 and data[2] == hs.CLIENT_HELLO:
            self._dir_fixed = True
            self.client_dir = tcp_dir
        elif len(data) >= 6 and data[0] == CT_HANDSHAKE:
            self._dir_fixed = True
            if data[5] == hs.CLIENT_HELLO:
                self.client_dir = tcp_dir
            elif data[5] == hs.SERVER_HELLO:
                self.client_dir = tcp_dir ^ 1
        elif len(data) >= 5:
            self._dir_fixed = True

    def _set_failure(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    def _record(self, d: int, ctype: int, ver: int, frag: bytes, ts: float) -> None:
        st = self.dirs[d]
        if st.encrypted and (ctype == CT_APPDATA or not self.tls13) and ctype != CT_HEARTBEAT:
            if self.unsupported is not None:
                return
            if self.tls13:
                self._record13(d, st, ctype, ver, frag, ts, None)
            else:
                self._record12(d, st, ctype, ver, frag, ts, None)
            return
        if ctype == CT_HANDSHAKE:
            self._handshake_bytes(d, st, frag, ts, st.hs_buf, -1)
        elif ctype == CT_CCS:
            if not self.tls13 and self.sh is not None:
                st.encrypted = True
                st.dec = st.next_dec  # None: keys unknown yet, records are held
                st.next_dec = None
        elif ctype == CT_APPDATA:
            # Application data before any handshake: the capture started mid-connection.
            self.no_handshake = True
            if not self.pickup_done and self.ch is None and self.sh is None:
                self._pickup(d, ver, frag, ts)

    def _hold(self, d: int, st: _Direction, ctype: int, ver: int, frag: bytes, ts: float) -> None:
        """Keep a record whose key may still come, in order; over the per-session budget, give up instead.

        The total budget is the engine's: over it, it gives up the oldest sessions' records
        (:meth:`give_up` with ``evicted``), ended ones first, and counts them."""
        ctx = self.ctx
        size = len(frag) + 5
        limit = ctx.max_hold_bytes_per_session
        if self.charge + size + HELD_RECORD_OVERHEAD <= limit:
            h = _Held(d, ctype, _VERSIONS.get(ver, ver), frag, ts)
            st.pending.append(h)
            self.queue.append(h)
            self._add_held(size)
            self.charge += HELD_RECORD_OVERHEAD
            ctx.charge += HELD_RECORD_OVERHEAD
            if self.held_since is None:
                self.held_since = ts
            return
        why = "hold budget per session exceeded"
        if self._queued_plain:
            # Decrypted data of this connection waits behind what is held: give that up, not the data.
            self.give_up(why, evicted=True)
            if self.charge + size + HELD_RECORD_OVERHEAD <= limit:
                if self.tls13:
                    self._record13(d, st, ctype, ver, frag, ts, None)
                else:
                    self._record12(d, st, ctype, ver, frag, ts, None)
                return
        # Dropped: remembered as (part of) a run of records to skip by sequence number.
        last = st.pending[-1] if st.pending else None
        if last is not None and last.count and self.queue and self.queue[-1] is last:
            last.count += 1
            last.lost += size
        else:
            run = _Held(d, ctype, ver, b"", ts, 1, size)
            st.pending.append(run)
            self.queue.append(run)
            if self.held_since is None:
                self.held_since = ts
        self._hold_state(EVICTED)
        self.held_dropped_bytes += size
        if why not in self.drop_reasons:
            self.drop_reasons.append(why)

    def _decided(self, h: _Held) -> None:
        """A held record has been used (or found to need nothing more)."""
        h.done = True
        self._unhold_record(h)

    # ---- TLS <= 1.2
    def _record12(self, d: int, st: _Direction, ctype: int, ver: int, frag: bytes, ts: float,
                  h: _Held | None) -> None:
        dec = st.dec
        if dec is None or (h is None and st.pending):
            if h is None:
                self._hold(d, st, ctype, ver, frag, ts)
            else:
                st.pending.append(h)
            return
        if h is not None:
            self.late_key = True
            self._sink = h.sink()
        try:
            try:
                itype, pt = dec.decrypt(ctype, ver, frag)
            except DecryptError:
                self.records_failed += 1
                self._set_failure(f"{'client' if d == 0 else 'server'} record failed authentication")
                return
            if st.inflate is not None:
                try:
                    pt = st.inflate.decompress(pt, MAX_RECORD)
                except zlib.error:
                    raise TlsParseError("TLS compression: bad DEFLATE data") from None
            self.records_decrypted += 1
            if itype == CT_APPDATA:
                if pt:
                    self._emit(TlsPlaintext(self.flow, d, ts, pt))
            else:
                self._inner12(d, st, itype, pt, ts)
        finally:
            if h is not None:
                self._sink = None
                self._decided(h)

    def _inner12(self, d: int, st: _Direction, itype: int, pt: bytes, ts: float) -> None:
        """A decrypted TLS <= 1.2 record that is not application data."""
        if itype == CT_HANDSHAKE:
            self._handshake_bytes(d, st, pt, ts, st.hs_buf, -1)
        elif itype == CT_CCS:
            # Renegotiation: the protected CCS puts the new handshake's keys in force.
            st.dec = st.next_dec
            st.next_dec = None
        # alerts, heartbeats: nothing to report

    # ---- TLS 1.3
    def _record13(self, d: int, st: _Direction, ctype: int, ver: int, frag: bytes, ts: float,
                  h: _Held | None) -> None:
        """One protected TLS 1.3 record, in order: decrypt it under its epoch's key, or hold it while
        that key may still come."""
        skip = st.resync
        if st.pending:
            for p in st.pending:
                skip += p.count
        got = self._try13(st, ctype, ver, frag, skip)
        if got is None:
            if self._key_may_come13(d, st):
                if h is None:
                    self._hold(d, st, ctype, ver, frag, ts)
                else:
                    st.pending.append(h)
                return
            # every key this record could be under is known and none fits
            if h is not None:
                self._decided(h)
            if skip:
                st.broken = "lost track of records after dropped ones"
                self.records_failed += 1
                self._set_failure(f"{'client' if d == 0 else 'server'} records lost while waiting for the key: "
                                  "the next one could not be placed")
            elif not st.app_ok:
                self.records_skipped += 1  # a handshake (or rejected 0-RTT) record whose key we lack
            else:
                self.records_failed += 1
                self._set_failure(f"{'client' if d == 0 else 'server'} record failed authentication")
            return
        epoch, itype, pt = got
        if st.pending:
            self._park(d, st, epoch)  # what is held ahead of this record belongs to earlier epochs
        self.records_decrypted += 1
        if h is not None:
            self.late_key = True
            self._sink = h.sink()
        try:
            self._inner13(d, st, epoch, itype, pt, ts)
        finally:
            if h is not None:
                self._sink = None
                self._decided(h)

    def _try13(self, st: _Direction, ctype: int, ver: int, frag: bytes, skip: int) -> tuple[int, int, bytes] | None:
        """Decrypt under the first known key of the epochs this record can be in (the sequence number
        by trial over ``skip`` records given up before it): (epoch, inner type, plaintext), or None."""
        keys = st.keys
        for e in range(st.stage, 3):
            dec = keys[e]
            if dec is None:
                continue
            base = dec.seq
            for k in range(skip + 1):
                dec.seq = base + k
                try:
                    itype, pt = dec.decrypt(ctype, ver, frag)
                except DecryptError:
                    continue
                st.resync = 0
                st.stage = e
                if e == E_APP:
                    st.app_ok = True
                return e, itype, pt
            dec.seq = base
        return None

    def _applies13(self, d: int, e: int) -> bool:
        """Can this direction have records under epoch ``e``'s key?"""
        return e != E_EARLY or (d == 0 and self.ch is not None and self.ch.early_data)

    def _key_may_come13(self, d: int, st: _Direction) -> bool:
        keys = st.keys
        return any(keys[e] is None and self._applies13(d, e) for e in range(st.stage, 3))

    def _park(self, d: int, st: _Direction, bound: int) -> None:
        """The pending records precede one found under epoch ``bound``: they wait for the keys of the
        epochs before it, and hold up the connection only when they may be early data."""
        blocking = d == 0 and st.init == E_EARLY and st.keys[E_EARLY] is None
        may_come = any(st.keys[e] is None and self._applies13(d, e) for e in range(st.init, bound))
        for h in st.pending:
            if h.count:  # records given up: their place in the output is a gap
                h.sink().append(TlsGap(self.flow, d, h.ts, h.lost))
                h.done = True
                continue
            if not may_come:
                self.records_skipped += 1
                self._decided(h)
                continue
            h.bound = bound
            if not blocking:
                h.done = True
            st.parked.append(h)
        st.pending = []

    def _retry_parked(self, d: int, st: _Direction) -> None:
        """Parked records under keys that are known now (early data into its place in the output)."""
        keep: list[_Held] = []
        for h in st.parked:
            got: tuple[int, int, bytes] | None = None
            for e in range(st.init, h.bound):
                dec = st.keys[e]
                if dec is None:
                    continue
                base = dec.seq
                try:
                    itype, pt = dec.decrypt(h.ctype, h.ver, h.frag)
                except TlsError:
                    dec.seq = base
                    continue
                got = (e, itype, pt)
                break
            if got is None:
                if any(st.keys[e] is None and self._applies13(d, e) for e in range(st.init, h.bound)):
                    if not h.done and (d != 0 or st.keys[E_EARLY] is not None):
                        h.done = True  # not early data: it holds nothing up any more
                    keep.append(h)
                else:
                    self.records_skipped += 1
                    self._decided(h)
                continue
            e, itype, pt = got
            self.records_decrypted += 1
            self.late_key = True
            if not h.done:
                self._sink = h.sink()
            try:
                self._inner13(d, st, e, itype, pt, h.ts)
            except UnsupportedError as exc:
                self.unsupported = str(exc)
            except TlsError as exc:
                self._set_failure(str(exc))
            finally:
                self._sink = None
                self._decided(h)
        st.parked = keep

    def _inner13(self, d: int, st: _Direction, epoch: int, itype: int, pt: bytes, ts: float) -> None:
        """A decrypted TLS 1.3 record's content."""
        if itype == CT_APPDATA:
            if pt:
                self._emit(TlsPlaintext(self.flow, d, ts, pt))
        elif itype == CT_HANDSHAKE:
            self._handshake_bytes(d, st, pt, ts, st.ehs[epoch], epoch)
        # alerts, heartbeats: nothing to report

    def _release(self) -> None:
        """Keys became known: decide what was held, both directions in the order it arrived."""
        if self.unsupported is not None:
            return
        for d, st in enumerate(self.dirs):
            if st.parked:
                self._retry_parked(d, st)
        items = [h for h in self.queue if type(h) is _Held and h.bound < 0 and not h.done]
        if items:
            for st in self.dirs:
                st.pending = []
            for h in items:
                d = h.d
                st = self.dirs[d]
                if self.unsupported is not None:
                    self._decided(h)
                    continue
                try:
                    if h.count:
                        self._run(d, st, h)
                    elif self.tls13:
                        self._record13(d, st, h.ctype, h.ver, h.frag, h.ts, h)
                    else:
                        self._record12(d, st, h.ctype, h.ver, h.frag, h.ts, h)
                except UnsupportedError as exc:
                    self.unsupported = str(exc)
                    self._decided(h)
                except TlsError as exc:
                    self._set_failure(str(exc))
                    self._decided(h)
        self._flush()

    def _run(self, d: int, st: _Direction, h: _Held) -> None:
        """A run of records given up, reached with keys: skip them by sequence number, say so."""
        if self.tls13:
            if all(k is None for k in st.keys) or st.pending:
                st.pending.append(h)
                return
            st.resync += h.count
        else:
            if st.dec is None or st.pending:
                st.pending.append(h)
                return
            st.dec.seq += h.count
        h.sink().append(TlsGap(self.flow, d, h.ts, h.lost))
        h.done = True
    # ------------------------------------------------------------------ handshake
    def _handshake_bytes(self, d: int, st: _Direction, data: bytes, ts: float, buf: bytearray, epoch: int) -> None:
        """Handshake messages from ``data`` (``epoch``: the TLS 1.3 epoch it came under, -1: none)."""
        buf += data
        off = 0
        n = len(buf)
        while n - off >= 4:
            mtype = buf[off]
            length = int.from_bytes(buf[off + 1:off + 4], "big")
            if length > MAX_HANDSHAKE_MESSAGE:
                del buf[:]
                raise TlsParseError("handshake message too large")
            end = off + 4 + length
            if end > n:
                break
            msg = bytes(buf[off:end])
            off = end
            self._handshake(d, st, mtype, msg, ts, epoch)
        if off:
            del buf[:off]

    def _handshake(self, d: int, st: _Direction, mtype: int, msg: bytes, ts: float, epoch: int) -> None:
        body = msg[4:]
        if self.transcript is not None and not self.tls13:
            self.transcript.append(msg)
        if mtype == hs.CLIENT_HELLO and d == 0:
            if self.ch is None or (not st.encrypted and self.ch.random == body[2:34]):
                self.ch = hs.parse_client_hello(body)
                self.ts_hello = ts
                self._wait_for(self.ch.random)
            elif st.encrypted and not self.tls13 and self.sh is not None:
                self._renegotiation(hs.parse_client_hello(body), msg)
        elif mtype == hs.SERVER_HELLO and d == 1 and self.sh is None:
            self._server_hello(hs.parse_server_hello(body), ts)
        elif mtype == hs.CLIENT_KEY_EXCHANGE and d == 0 and self.suite is not None:
            if self.suite.kex == "RSA":
                self.enc_pms = hs.parse_rsa_client_key_exchange(body, self.version)
                if len(self.enc_pms) >= 8:
                    self._wait_for(self.enc_pms[:8])
            if self.transcript is not None and self.sh is not None and self.sh.ems:
                self.session_hash = self._transcript_hash()
            self.transcript = None
            if not self.keys_ready:
                self._try_keys(None)
        elif mtype == hs.NEW_SESSION_TICKET and d == 1 and not self.tls13:
            self.ticket = hs.parse_new_session_ticket_12(body)
            if self.master is not None and self.ticket:
                self._resumable(TICKET_PREFIX + self.ticket, self.master)
        elif mtype == hs.ENCRYPTED_EXTENSIONS and d == 1:
            alpn = hs.parse_encrypted_extensions_alpn(body)
            if alpn:
                self.alpn = alpn
                self._facts_alpn()
        elif mtype == hs.FINISHED and self.tls13 and epoch >= 0:
            # This side's handshake is over: its next records are protected with the application key,
            # so from now on a record that fails to decrypt is a failure, not a skipped trial.
            if st.stage < E_APP:
                st.stage = E_APP
            st.app_ok = True
        elif mtype == hs.END_OF_EARLY_DATA and self.tls13 and d == 0:
            if st.stage < E_HS:
                st.stage = E_HS
        elif mtype == hs.KEY_UPDATE and self.tls13 and st.app_secret and self.suite is not None:
            st.app_secret = tls13_next_secret(self.suite, st.app_secret)
            st.keys[E_APP] = tls13_decryptor(self.suite, st.app_secret)

    def _renegotiation(self, ch: hs.ClientHello, msg: bytes) -> None:
        """A ClientHello inside an established TLS <= 1.2 session: new keys at the next CCS."""
        self.renegotiations += 1
        self.ch = ch
        self.sh = None
        self.enc_pms = None
        self.transcript = [msg]
        self.session_hash = None
        self.master = None
        self.keys_ready = False
        self.settled = False
        self._wait_for(ch.random)

    def _transcript_hash(self) -> bytes:
        assert self.suite is not None and self.transcript is not None
        if self.version >= 0x0303:
            h = hashlib.new(self.suite.prf_hash)
            for m in self.transcript:
                h.update(m)
            return h.digest()
        md5 = hashlib.md5()
        sha1 = hashlib.sha1()
        for m in self.transcript:
            md5.update(m)
            sha1.update(m)
        return md5.digest() + sha1.digest()

    def _server_hello(self, sh: hs.ServerHello, ts: float) -> None:
        if sh.is_hrr:
            return
        first = self.version == 0
        self.sh = sh
        self.version = sh.version
        self.suite = suite_for(sh.suite)
        self.tls13 = sh.version == 0x0304
        if self.tls13:
            self.transcript = None
            early = self.ch is not None and self.ch.early_data
            for d, st in enumerate(self.dirs):
                st.encrypted = True
                st.init = st.stage = E_EARLY if d == 0 and early else E_HS
        else:
            if sh.alpn:
                self.alpn = sh.alpn
            ch = self.ch
            if ch is not None and sh.session_id and sh.session_id == ch.session_id:
                self.resumed = True
            if sh.session_id:
                self._wait_for(sh.session_id)
            if self.ctx.share_resumption and ch is not None:  # another sensor's state may resume it
                if self.resumed:
                    self._wait_for(resumption_key(ID_PREFIX + sh.session_id))
                if ch.ticket:
                    self._wait_for(resumption_key(TICKET_PREFIX + ch.ticket))
        if self.tls13:
            if sh.alpn:
                self.alpn = sh.alpn
            self.resumed = sh.psk  # the server accepted a pre-shared key: a resumed session
        if self.ch is None:
            self.no_handshake = True
        if sh.compression == 1 and not self.tls13:
            for st in self.dirs:
                st.inflate = zlib.decompressobj()
        elif sh.compression != 0:
            self.unsupported = f"TLS compression method {sh.compression} is not supported"
        if not self.suite.supported:
            self.unsupported = f"cipher suite {self.suite.name} is not supported"
        elif self.version < 0x0300 or self.version > 0x0304:
            self.unsupported = f"protocol version 0x{self.version:04x} is not supported"
        if first:
            self._emit(TlsHandshake(self.flow, ts, self.client_dir, hs.version_name(self.version),
                                    self.suite.name, self.ch.sni if self.ch else None,
                                    self.alpn, self.resumed))
            if self.ch is not None and self.unsupported is None:
                self._facts(sh, ts)
        self._try_keys(None)

    def _facts(self, sh: hs.ServerHello, ts: float) -> None:
        """The handshake facts of this connection: kept in the context (the same sensor picks the
        connection up again if its flow is lost) and emitted for other sensors."""
        assert self.ch is not None
        flow = self.flow
        c = self.client_dir
        facts = HandshakeFacts(flow.addr[c], flow.port[c], flow.addr[c ^ 1], flow.port[c ^ 1], self.ch.random,
                               sh.random, self.version, sh.suite, sh.ems, sh.etm, self.alpn, ts, self.ch.sni)
        self.ctx.facts.add(facts)
        self._emit(facts)

    def _facts_alpn(self) -> None:
        """TLS 1.3: the ALPN comes in EncryptedExtensions, after the facts (ServerHello): the facts again,
        with it, so a sensor picking the connection up reports it."""
        ch, sh = self.ch, self.sh
        old = self.ctx.facts.get(ch.random) if ch is not None else None
        if old is not None and sh is not None and old.alpn != self.alpn and old.server_random == sh.random:
            self._facts(sh, old.ts)

    def _resumable(self, ident: bytes, master: bytes) -> None:
        """A session id or ticket (``ident``: prefixed) of this session met its master secret: cache it,
        and emit it for other sensors when asked to (not a session id this connection resumed)."""
        key = self.ctx.cache.put(ident, master)
        if self.ctx.share_resumption and self.sh is not None and not (self.resumed and ident[:3] == ID_PREFIX):
            self._emit(ResumptionState("id" if ident[:3] == ID_PREFIX else "ticket", key[3:], master,
                                       self.version, self.sh.suite, self.sh.ems, self.ts_hello or 0.0))

    def _wait_for(self, ident: bytes) -> None:
        if ident and ident not in self.wait_idents:
            self.wait_idents.append(ident)

    # ------------------------------------------------------------------ keys
    def _try_keys(self, ts: float | None) -> None:
        """Use the secrets known now (``ts``: when one arrived; None: while reading records)."""
        if self.settled or self.unsupported or self.sh is None or self.ch is None or self.suite is None:
            return
        was_ready = self.keys_ready
        try:
            if self.tls13:
                if not self._learn13():
                    return
                client, server = self.dirs
                self.keys_ready = client.keys[E_APP] is not None and server.keys[E_APP] is not None
                self.settled = not self.missing_secrets()
            else:
                if not self._keys12():
                    return
                self.keys_ready = self.settled = True
        except UnsupportedError as exc:
            self.unsupported = str(exc)
            return
        if self.keys_ready and not was_ready and self.ts_hello is not None:
            self.key_lag = self._lag(ts)
        self._release()

    def _lag(self, ts: float | None) -> float | None:
        """Time from the ClientHello to the secret that made the application data decryptable."""
        hello = self.ts_hello
        assert hello is not None and self.ch is not None
        if ts is None:  # known before the records needed it: when it was stored (None: from a file)
            labels = (kl.CLIENT_TRAFFIC_SECRET_0, kl.SERVER_TRAFFIC_SECRET_0) if self.tls13 else (kl.CLIENT_RANDOM,)
            stamps = [self.ctx.store.stamp(label, self.ch.random) for label in labels]
            if any(s is None for s in stamps):
                return None
            ts = max(s for s in stamps if s is not None)
        return ts - hello if ts > hello else 0.0

    def _keys12(self) -> bool:
        ch, sh, suite, store = self.ch, self.sh, self.suite, self.ctx.store
        assert ch is not None and sh is not None and suite is not None
        master = store.get(kl.CLIENT_RANDOM, ch.random)
        if master is None and sh.session_id:
            master = store.get(kl.RSA_SESSION, sh.session_id)
        if master is None and self.resumed:
            master = self.ctx.cache.get(ID_PREFIX + sh.session_id)
        if master is None and ch.ticket:
            master = self.ctx.cache.get(TICKET_PREFIX + ch.ticket)
            if master is not None:
                self.resumed = True
        if master is None:
            pms = store.get(kl.PMS_CLIENT_RANDOM, ch.random)
            if pms is None and self.enc_pms is not None:
                pms = store.get(kl.RSA, self.enc_pms[:8])
                if pms is None:
                    for key in self.ctx.rsa_keys:
                        pms = rsa_decrypt_premaster(key, self.enc_pms, ch.version)
                        if pms is not None:
                            break
            if pms is None:
                return False
            if sh.ems and self.session_hash is None:
                return False  # wait for ClientKeyExchange to close the session hash
            master = master_secret(self.version, suite, pms, ch.random, sh.random,
                                   self.session_hash if sh.ems else None)
        self.master = master
        if sh.session_id:
            self._resumable(ID_PREFIX + sh.session_id, master)
        if self.ticket:
            self._resumable(TICKET_PREFIX + self.ticket, master)
        kb = key_block(self.version, suite, master, ch.random, sh.random)
        etm = sh.etm and suite.mac != "AEAD" and suite.block_size > 1
        for d, st in enumerate(self.dirs):
            dec = decryptor_from_key_block(self.version, suite, kb, d == 0, etm)
            if st.encrypted and st.dec is None:
                dec.seq += st.skip  # records given up while waiting
                st.skip = 0
                st.dec = dec  # this side already switched (CCS seen): its held records use these keys
            else:
                st.next_dec = dec
        return True

    def _learn13(self) -> bool:
        """Decryptors for every epoch whose secret is known now; True when one is new.

        Each side decrypts as soon as its own secrets are known: a key log that lacks one side's line
        (seen in the wild) still yields the other side."""
        ch, suite, store = self.ch, self.suite, self.ctx.store
        assert ch is not None and suite is not None
        cr = ch.random
        new = False
        for d, st in enumerate(self.dirs):
            labels = _LABELS13[d]
            keys = st.keys
            for e in range(st.init, 3):
                label = labels[e]
                if keys[e] is not None or label is None:
                    continue
                secret = store.get(label, cr)
                if secret is None:
                    continue
                keys[e] = tls13_decryptor(suite, secret)
                if e == E_APP:
                    st.app_secret = secret
                new = True
        return new

    # ------------------------------------------------------------------ mid-stream pickup
    def _pickup(self, d: int, ver: int, frag: bytes, ts: float) -> None:
        """An application-data record of a connection whose handshake was not seen (``d``: its role
        under the current guess of who the client is). Find the keys and this record's sequence number
        by trial, confirmed by the AEAD tag or the MAC: from the handshake facts of the connection's
        4-tuple (TLS 1.2: the key block from the master secret; TLS 1.3: the application secrets), else
        (TLS 1.3) from the few application secrets no session has used. Bounded: after
        ``PICKUP_MAX_RECORDS`` records or ``PICKUP_BUDGET`` trials the connection is given up."""
        self.pickup_tries += 1
        if self.pickup_tries > PICKUP_MAX_RECORDS or self.pickup_budget <= 0:
            self.pickup_done = True
            return
        tcp_dir = d ^ self.client_dir
        flow = self.flow
        facts: HandshakeFacts | None = None
        client = self.client_dir
        for c in (client, client ^ 1):
            facts = self.ctx.facts.for_tuple((flow.addr[c], flow.port[c], flow.addr[c ^ 1], flow.port[c ^ 1]))
            if facts is not None:
                client = c
                break
        if facts is not None:
            found = self._pickup_facts(facts, tcp_dir ^ client, ver, frag)
        else:
            found = self._pickup_trial13(ver, frag)
        if found is None:
            return
        role, suite, version, decs, secrets, seq = found
        swapped = role != d
        if swapped:
            self.client_dir ^= 1
            a, b = self.dirs
            self.dirs = (b, a)
        if facts is not None:
            self.pickup_sni = facts.sni
        self._install(role, suite, version, decs, secrets, facts.alpn if facts is not None else None)
        if self.dirs[role ^ 1].buf:
            # what the other side sent before this record, held while its framing was unknown, goes first
            self.data((role ^ 1) ^ self.client_dir, b"", ts)
        dec = decs[role]
        assert dec is not None
        dec.seq = seq
        try:
            # the keys are in force now: this record goes the way of every protected record
            self._record(role, CT_APPDATA, ver, frag, ts)
        except UnsupportedError as exc:
            self.unsupported = str(exc)
        except TlsError as exc:
            self._set_failure(str(exc))
        if swapped:
            raise _RolesSwapped

    def _install(self, first: int, suite: CipherSuite, version: int, decs: list[RecordDecryptor | None],
                 secrets: list[bytes], alpn: str | None) -> None:
        """Keys found by a pickup: both directions in their steady state. The other direction's records
        are found by the search that recovers from a TCP gap (framing and sequence number by trial)."""
        self.picked_up = True
        self.pickup_done = True
        self.ctx.picked_up += 1
        self.suite = suite
        self.version = version
        self.tls13 = version == 0x0304
        if alpn:
            self.alpn = alpn
        self.keys_ready = self.settled = True
        for r, st in enumerate(self.dirs):
            dec = decs[r]
            if dec is None:
                st.broken = "no key for this side"
                continue
            st.encrypted = True
            if self.failure is not None and self.failure.startswith("record framing lost"):
                self.failure = None  # the capture started mid-record: framing was found again
            if self.tls13:
                st.keys[E_APP] = dec
                st.app_secret = secrets[r]
                st.init = st.stage = E_APP
                st.app_ok = True
            else:
                st.dec = dec
            if r != first:
                # its records so far were tried and dropped; the next one is found by the gap search
                st.seek = SEEK_MAX_RECORDS * MIN_PROTECTED_RECORD

    def _seek_alts(self, d: int, st: _Direction, ver: int, frag: bytes, most: int) -> bool:
        """TLS 1.3 pickup: is the first record found of this side under a later secret (KeyUpdates before
        the pickup)? Then that secret is in force."""
        assert self._pickup_alts is not None
        for secret, dec in self._pickup_alts[d]:
            seq = self._trial(dec, ver, frag, list(range(most + 1)))
            if seq >= 0:
                dec.seq = seq
                st.keys[E_APP] = dec
                st.app_secret = secret
                self._pickup_alts[d] = []
                return True
        return False

    @staticmethod
    def _generations(suite: CipherSuite, secret: bytes) -> list[tuple[bytes, RecordDecryptor]]:
        """The secrets (and decryptors) after 1 .. PICKUP_KEY_UPDATES KeyUpdates."""
        out = []
        for _ in range(PICKUP_KEY_UPDATES):
            secret = tls13_next_secret(suite, secret)
            out.append((secret, tls13_decryptor(suite, secret)))
        return out

    def _trial(self, dec: RecordDecryptor, ver: int, frag: bytes, seqs: list[int]) -> int:
        """The sequence number (of ``seqs``) under which ``dec`` authenticates ``frag``, or -1."""
        for seq in seqs:
            if self.pickup_budget <= 0:
                return -1
            self.pickup_budget -= 1
            dec.seq = seq
            try:
                dec.decrypt(CT_APPDATA, ver, frag)
            except TlsError:
                continue
            return seq
        return -1

    def _pickup_facts(self, facts: HandshakeFacts, role: int, ver: int, frag: bytes
                      ) -> tuple[int, CipherSuite, int, list[RecordDecryptor | None], list[bytes], int] | None:
        """Keys from the handshake facts and the key log; None while they do not decrypt this record."""
        suite = suite_for(facts.suite)
        version = facts.version
        if not suite.supported or not 0x0300 <= version <= 0x0304 or suite.tls13 != (version == 0x0304):
            self.unsupported = f"cipher suite {suite.name} is not supported"
            self.pickup_done = True
            return None
        store = self.ctx.store
        cr = facts.client_random
        if version == 0x0304:
            secrets = [store.peek(kl.CLIENT_TRAFFIC_SECRET_0, cr) or b"",
                       store.peek(kl.SERVER_TRAFFIC_SECRET_0, cr) or b""]
            if not secrets[role]:
                return None
            secret = secrets[role]
            for _ in range(PICKUP_KEY_UPDATES + 1):
                dec = tls13_decryptor(suite, secret)
                seq = self._trial(dec, ver, frag, list(range(SEEK_MAX_RECORDS)))
                if seq >= 0:
                    secrets[role] = secret
                    other = secrets[role ^ 1]
                    decs: list[RecordDecryptor | None] = [None, None]
                    decs[role] = dec
                    if other:
                        decs[role ^ 1] = tls13_decryptor(suite, other)
                        self._pickup_alts = [[], []]
                        self._pickup_alts[role ^ 1] = self._generations(suite, other)
                    store.get(kl.CLIENT_TRAFFIC_SECRET_0 if role == 0 else kl.SERVER_TRAFFIC_SECRET_0, cr)
                    if other:
                        store.get(kl.SERVER_TRAFFIC_SECRET_0 if role == 0 else kl.CLIENT_TRAFFIC_SECRET_0, cr)
                    return role, suite, version, decs, secrets, seq
                if self.pickup_budget <= 0:
                    break
                secret = tls13_next_secret(suite, secret)
            return None
        if suite.mac != "AEAD" and (suite.block_size <= 1 or version < 0x0302):
            # RC4 and TLS 1.0 CBC chain their state across records: a record cannot be read without the
            # ones before it
            self.unsupported = f"{suite.name} in {hs.version_name(version)} cannot be picked up mid-stream"
            self.pickup_done = True
            return None
        master = store.get(kl.CLIENT_RANDOM, cr)
        if master is None:
            return None
        kb = key_block(version, suite, master, cr, facts.server_random)
        etm = facts.encrypt_then_mac and suite.mac != "AEAD" and suite.block_size > 1
        decs12: list[RecordDecryptor | None] = [decryptor_from_key_block(version, suite, kb, r == 0, etm)
                                                for r in (0, 1)]
        first = decs12[role]
        assert first is not None
        guesses: list[int] = []
        if suite.mac == "AEAD" and suite.cipher != "CHACHA20_POLY1305" and len(frag) >= 8:
            guesses.append(int.from_bytes(frag[:8], "big"))  # most stacks send the sequence number
        guesses.extend(range(SEEK_MAX_RECORDS))
        seq = self._trial(first, ver, frag, guesses)
        if seq < 0:
            return None
        return role, suite, version, decs12, [b"", b""], seq

    def _pickup_trial13(self, ver: int, frag: bytes
                        ) -> tuple[int, CipherSuite, int, list[RecordDecryptor | None], list[bytes], int] | None:
        """TLS 1.3 without facts: each unused application secret (either side, the suites its length
        allows) against this record, sequence numbers from 0; the tag says which one it is."""
        store = self.ctx.store
        if len(frag) < 17:
            return None
        candidates = store.unbound13(PICKUP_MAX_SECRETS)
        if not candidates:
            return None
        labels = (kl.CLIENT_TRAFFIC_SECRET_0, kl.SERVER_TRAFFIC_SECRET_0)
        cached = self._pickup_opts
        if cached is not None and cached[0] == candidates:
            options = cached[1]  # the same secrets as for the record before: the same decryptors
        else:
            options = self._options13(candidates)
            self._pickup_opts = (candidates, options)
        if not options:
            return None
        # a record may spend a quarter of what is left: later ones (keys that came late) still get a try
        most = min(SEEK_MAX_RECORDS, max(1, self.pickup_budget // (4 * len(options))))
        for seq in range(most):
            for role, cr, suite, secret, dec in options:
                if self._trial(dec, ver, frag, [seq]) < 0:
                    continue
                self._pickup_opts = None
                other = store.get(labels[role ^ 1], cr)
                store.get(labels[role], cr)
                decs: list[RecordDecryptor | None] = [None, None]
                secrets = [b"", b""]
                decs[role] = dec
                secrets[role] = secret
                if other is not None:
                    decs[role ^ 1] = tls13_decryptor(suite, other)
                    secrets[role ^ 1] = other
                    self._pickup_alts = [[], []]
                    self._pickup_alts[role ^ 1] = self._generations(suite, other)
                return role, suite, 0x0304, decs, secrets, seq
        return None

    def _options13(self, candidates: list[bytes]) -> list[_Option13]:
        """A decryptor per unused application secret and suite its length allows (each costs a trial)."""
        store = self.ctx.store
        labels = (kl.CLIENT_TRAFFIC_SECRET_0, kl.SERVER_TRAFFIC_SECRET_0)
        options: list[_Option13] = []
        for cr in candidates:
            for role in (0, 1):
                secret = store.peek(labels[role], cr)
                if secret is None:
                    continue
                for code in _SUITES13.get(len(secret), ()):
                    suite = suite_for(code)
                    if suite.supported:
                        options.append((role, cr, suite, secret, tls13_decryptor(suite, secret)))
                        self.pickup_budget -= 1
        return options
