"""One TLS connection seen from the side: records in both directions, keys when they come, plaintext out.

The session never reads a clock or a global. Secrets come from the :class:`TlsContext` it is given;
when they are missing, encrypted records are held (bounded) and :meth:`TlsSession.keys_changed`
decrypts them once the engine learns a secret this session waits for (``wait_idents``).
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

from ..keys import events as kl
from ..keys.rsa import rsa_decrypt_premaster
from ..tcp.events import Flow
from . import handshake as hs
from .ciphers import RecordDecryptor, decryptor_from_key_block, tls13_decryptor
from .context import TlsContext
from .errors import DecryptError, TlsError, TlsParseError, UnsupportedError
from .events import (
    DECRYPT_FAILED,
    DECRYPTED,
    GAP,
    NO_HANDSHAKE,
    NO_KEY,
    UNSUPPORTED,
    TlsGap,
    TlsHandshake,
    TlsOutcome,
    TlsPlaintext,
)
from .schedule import key_block, master_secret, tls13_next_secret
from .suites import CipherSuite, suite_for

CT_CCS = 20
CT_ALERT = 21
CT_HANDSHAKE = 22
CT_APPDATA = 23
CT_HEARTBEAT = 24

_CLIENT_RANDOM_LABELS = tuple(sorted(kl.LABELS - {kl.RSA, kl.RSA_SESSION}))

MAX_RECORD = (1 << 14) + 2048
SEEK_LIMIT = 256 << 10  # bytes searched for the first whole record after a gap before giving up
SEEK_MAX_RECORDS = 4096  # records a gap may have swallowed that a trial covers
MIN_PROTECTED_RECORD = 22  # header + the smallest protected record (TLS 1.3: type byte + tag)
MAX_HANDSHAKE_MESSAGE = 1 << 20


def looks_like_tls(data: bytes) -> bool:
    """Does a stream start with a TLS record header, or an SSLv2-compatible ClientHello (any port)?"""
    n = len(data)
    if n >= 3 and 20 <= data[0] <= 24 and data[1] == 3 and data[2] <= 4:
        return True
    return n >= 5 and data[0] & 0x80 != 0 and data[2] == hs.CLIENT_HELLO and data[3] == 3 and data[4] <= 3


def looks_like_client_hello(data: bytes) -> bool:
    """A TLS handshake record that starts with a ClientHello (STARTTLS: TLS begins mid-stream)."""
    return len(data) >= 6 and data[0] == CT_HANDSHAKE and data[1] == 3 and data[2] <= 4 and data[5] == 1


class _Direction:
    """Per-direction record state (TLS roles: 0 = client, 1 = server)."""

    __slots__ = ("app_ok", "app_secret", "broken", "buf", "cands", "dec", "encrypted", "held",
                 "held_bytes", "hs_buf", "inflate", "next_dec", "resync", "seek", "stage")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.hs_buf = bytearray()
        self.encrypted = False  # records from here on are protected
        self.dec: RecordDecryptor | None = None  # TLS <= 1.2: keys in force (None after CCS: waiting)
        self.next_dec: RecordDecryptor | None = None  # TLS <= 1.2: keys that the next CCS puts in force
        self.cands: list[RecordDecryptor] = []  # TLS 1.3: candidate decryptors in key order
        self.stage = 0  # index into cands
        self.app_ok = False  # TLS 1.3: a record decrypted with the application key
        self.app_secret = b""
        # Records waiting for keys, in order: (type, version, fragment, ts), or a run of records that
        # were dropped (budget, key wait): (-bytes, count, b"", ts), skipped by sequence number later.
        self.held: list[tuple[int, int, bytes, float]] = []
        self.held_bytes = 0  # ciphertext bytes in ``held`` (dropped runs not counted)
        self.resync = 0  # TLS 1.3: records dropped unseen; the next one is found by trial over them
        self.seek = 0  # bytes lost in a TCP gap: record framing and sequence number are being found again
        self.broken: str | None = None  # record framing lost (gap, garbage)
        self.inflate: Any = None  # zlib decompressor when the session uses TLS compression (DEFLATE)


class TlsSession:
    """Passive TLS 1.0-1.3 decryption for one TCP connection."""

    def __init__(self, flow: Flow, ctx: TlsContext, ts: float) -> None:
        self.flow = flow
        self.ctx = ctx
        self.ts_first = ts
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
        self.keys_ready = False
        self.ticket: bytes | None = None
        self.unsupported: str | None = None
        self.failure: str | None = None
        self.had_gap = False
        self.no_handshake = False
        self.late_key = False
        self.records_decrypted = 0
        self.records_failed = 0
        self.records_skipped = 0
        self.renegotiations = 0
        self.resyncs = 0  # times a side found its records again after a TCP gap
        self.held_dropped_bytes = 0
        self.held_since: float | None = None  # packet time of the oldest record held now (None: none)
        self.drop_reasons: list[str] = []  # why held ciphertext was dropped (budget, key wait)
        self.wait_idents: list[bytes] = []  # idents this session waits on (client random, session id, ...)
        self.closed = False
        self.user: Any = None  # the engine's attachment (e.g. the HTTP parser fed by this session)

    @property
    def version_name(self) -> str | None:
        return hs.version_name(self.version) if self.version else None

    # ------------------------------------------------------------------ input
    def data(self, tcp_dir: int, data: bytes, ts: float, out: list[Any]) -> None:
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
                used = self._fast_records(d, fast, data, ts, out)
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
        if n >= 3 and buf[0] & 0x80 and d == 0 and self.ch is None:
            off = self._sslv2_hello(buf)
            if off < 0:
                return
        while n - off >= 5:
            ctype = buf[off]
            ver = (buf[off + 1] << 8) | buf[off + 2]
            length = (buf[off + 3] << 8) | buf[off + 4]
            if not (20 <= ctype <= 24) or buf[off + 1] != 3 or length > MAX_RECORD:
                st.broken = "not a TLS record"
                self._set_failure(f"record framing lost ({'client' if d == 0 else 'server'} side)")
                del buf[:]
                return
            end = off + 5 + length
            if end > n:
                break
            frag = bytes(buf[off + 5:end])
            off = end
            try:
                self._record(d, ctype, ver, frag, ts, out)
            except UnsupportedError as exc:
                self.unsupported = str(exc)
            except TlsError as exc:
                self._set_failure(str(exc))
        if off:
            del buf[:off]

    def _fast_decryptor(self, st: _Direction) -> RecordDecryptor | None:
        """The decryptor of a direction in its steady state (application keys in force), else None."""
        if not st.encrypted or st.held or st.seek or self.unsupported is not None:
            return None
        if self.tls13:
            cands = st.cands
            if st.app_ok and not st.resync and st.stage == len(cands) - 1:
                return cands[-1]
            return None
        if st.inflate is None:
            return st.dec
        return None

    def _fast_records(self, d: int, dec: RecordDecryptor, data: bytes, ts: float, out: list[Any]) -> int:
        """Decrypt the whole application-data records at the start of ``data``; return how many bytes
        were used (the rest goes through the general path)."""
        n = len(data)
        off = 0
        flow = self.flow
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
                try:
                    self._inner(d, self.dirs[d], itype, pt, ts, out)
                except UnsupportedError as exc:
                    self.unsupported = str(exc)
                except TlsError as exc:
                    self._set_failure(str(exc))
                if self._fast_decryptor(self.dirs[d]) is not dec:
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

    def gap(self, tcp_dir: int, size: int, ts: float, out: list[Any]) -> None:
        d = tcp_dir ^ self.client_dir
        st = self.dirs[d]
        self.had_gap = True
        if st.broken is None:
            del st.buf[:]
            if self._can_seek(st):
                st.seek += size  # find the next whole record after the hole and carry on
            else:
                st.broken = "gap"
        out.append(TlsGap(self.flow, d, ts, size))

    def _can_seek(self, st: _Direction) -> bool:
        """After a gap, can this side's records be found again? Its application keys must be in force,
        and records must not chain across the hole (TLS 1.0 / SSL 3.0 CBC IVs, RC4, compression)."""
        if not st.encrypted or st.held or st.inflate is not None or self.unsupported is not None:
            return False
        if self.tls13:
            return st.app_ok and not st.resync and st.stage == len(st.cands) - 1
        suite = self.suite
        if st.dec is None or suite is None:
            return False
        return suite.mac == "AEAD" or (suite.block_size > 1 and self.version >= 0x0302)

    def _seek(self, d: int, st: _Direction, buf: bytearray) -> int:
        """Where the first whole record after a gap starts in ``buf`` (its sequence number set), or -1
        while more bytes are needed. Candidates are headers the decryptor's tag or MAC confirms."""
        dec = st.cands[-1] if self.tls13 else st.dec
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
        if n > SEEK_LIMIT:
            st.broken = "gap"
            st.seek = 0
            self._set_failure(f"{'client' if d == 0 else 'server'} records could not be found again after a gap")
        return -1

    def keys_changed(self, ts: float, out: list[Any]) -> None:
        """A secret this session waits for has arrived: derive keys and decrypt what was held."""
        if self.sh is None or self.keys_ready:
            return
        self._try_keys(out)

    def close(self, ts: float, out: list[Any]) -> None:
        if self.closed:
            return
        self.closed = True
        self.drop_held("connection ended before the key arrived")
        for st in self.dirs:
            st.held = []
        out.append(self.outcome(ts))

    def keys_incomplete(self) -> bool:
        """Some secret for this session's client random is known, yet not enough to decrypt.

        Key logs write all lines of a session at about the same time, so the missing ones are not
        late but absent: waiting for them after the connection ended would only delay the outcome.
        """
        ch = self.ch
        if ch is None:
            return False
        has = self.ctx.store.has
        return any(has(label, ch.random) for label in _CLIENT_RANDOM_LABELS)

    def drop_held(self, reason: str, before: float | None = None) -> int:
        """Give up on held ciphertext (its key is too late); returns the bytes dropped.

        Drops the records held since ``before`` or earlier (all when None), oldest first. They are
        remembered as a run of a known count, so that if the key still comes, the records after them
        decrypt (TLS <= 1.2: their sequence numbers are known; TLS 1.3: found again by trial) and a
        :class:`TlsGap` marks the loss.
        """
        dropped = 0
        oldest: float | None = None
        for st in self.dirs:
            if not st.held_bytes:
                continue
            held = st.held
            n = len(held)
            i = 0
            while i < n and (held[i][0] < 0 or before is None or held[i][3] <= before):
                i += 1
            size = count = 0
            for rec in held[:i]:
                if rec[0] < 0:
                    size -= rec[0]
                    count += rec[1]
                else:
                    size += len(rec[2]) + 5
                    count += 1
            if i:
                run_bytes = size - sum(-rec[0] for rec in held[:i] if rec[0] < 0)
                st.held = [(-size, count, b"", held[0][3]), *held[i:]]
                st.held_bytes -= run_bytes
                self.ctx.held_bytes -= run_bytes
                dropped += run_bytes
            if i < n and (oldest is None or held[i][3] < oldest):
                oldest = held[i][3]
        self.held_since = oldest
        if dropped:
            self.held_dropped_bytes += dropped
            if reason not in self.drop_reasons:
                self.drop_reasons.append(reason)
        return dropped

    def _drop_text(self) -> str:
        return ", ".join(self.drop_reasons)

    def outcome(self, ts: float) -> TlsOutcome:
        encrypted_seen = any(st.encrypted for st in self.dirs)
        if self.unsupported:
            outcome, reason = UNSUPPORTED, self.unsupported
        elif self.no_handshake and self.sh is None:
            outcome, reason = NO_HANDSHAKE, "capture started after the TLS handshake"
        elif self.records_failed:
            outcome, reason = DECRYPT_FAILED, self.failure or "records failed authentication"
        elif encrypted_seen and not self.keys_ready:
            outcome = NO_KEY
            reason = "no secret for client random " + (self.ch.random[:8].hex() + "..." if self.ch else "?")
            if self.tls13 and (self.dirs[0].cands or self.dirs[1].cands):
                known = "client" if self.dirs[0].cands else "server"
                other = "server" if known == "client" else "client"
                reason = (f"no {other} traffic secret for client random {self.ch.random[:8].hex() if self.ch else '?'}"
                          f"...; the {known}'s side was decrypted")
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
        elif self.ch is None:
            outcome, reason = NO_HANDSHAKE, "no ClientHello seen"
        else:
            outcome, reason = DECRYPTED, ""
        return TlsOutcome(
            flow=self.flow, ts=ts, client_dir=self.client_dir, outcome=outcome, reason=reason,
            version=hs.version_name(self.version) if self.version else None,
            suite=self.suite.name if self.suite else None, sni=self.ch.sni if self.ch else None,
            alpn=self.alpn, resumed=self.resumed, late_key=self.late_key,
            records_decrypted=self.records_decrypted, records_failed=self.records_failed,
            held_dropped_bytes=self.held_dropped_bytes)

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

    def _record(self, d: int, ctype: int, ver: int, frag: bytes, ts: float, out: list[Any]) -> None:
        st = self.dirs[d]
        if st.encrypted and (ctype == CT_APPDATA or not self.tls13) and ctype != CT_HEARTBEAT:
            if self.unsupported is not None:
                return
            if not st.cands if self.tls13 else st.dec is None:
                self._hold(st, ctype, ver, frag, ts)
                return
            self._decrypt(d, st, ctype, ver, frag, ts, out)
            return
        if ctype == CT_HANDSHAKE:
            self._handshake_bytes(d, st, frag, ts, out)
        elif ctype == CT_CCS:
            if not self.tls13 and self.sh is not None:
                st.encrypted = True
                st.dec = st.next_dec  # None: keys unknown yet, records are held
                st.next_dec = None
        elif ctype == CT_APPDATA:
            # Application data before any handshake: the capture started mid-connection.
            self.no_handshake = True

    def _hold(self, st: _Direction, ctype: int, ver: int, frag: bytes, ts: float) -> None:
        ctx = self.ctx
        size = len(frag) + 5
        held = st.held
        if self.dirs[0].held_bytes + self.dirs[1].held_bytes + size > ctx.max_hold_bytes_per_session:
            why = "hold budget per session exceeded"
        elif ctx.held_bytes + size > ctx.max_hold_bytes_total:
            why = "total hold budget exceeded"
        else:
            held.append((ctype, ver, frag, ts))
            st.held_bytes += size
            ctx.held_bytes += size
            if self.held_since is None:
                self.held_since = ts
            return
        # Dropped: remembered as (part of) a run of records to skip by sequence number.
        if held and held[-1][0] < 0:
            last = held[-1]
            held[-1] = (last[0] - size, last[1] + 1, b"", last[3])
        else:
            held.append((-size, 1, b"", ts))
        self.held_dropped_bytes += size
        if why not in self.drop_reasons:
            self.drop_reasons.append(why)

    def _decrypt(self, d: int, st: _Direction, ctype: int, ver: int, frag: bytes, ts: float,
                 out: list[Any]) -> None:
        if self.tls13:
            result = self._decrypt13(d, st, ctype, ver, frag)
            if result is None:
                return
            itype, pt = result
        else:
            dec = st.dec
            assert dec is not None
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
                out.append(TlsPlaintext(self.flow, d, ts, pt))
        else:
            self._inner(d, st, itype, pt, ts, out)

    def _inner(self, d: int, st: _Direction, itype: int, pt: bytes, ts: float, out: list[Any]) -> None:
        """A decrypted record that is not application data."""
        if itype == CT_HANDSHAKE:
            self._handshake_bytes(d, st, pt, ts, out)
        elif itype == CT_CCS and not self.tls13:
            # Renegotiation: the protected CCS puts the new handshake's keys in force.
            st.dec = st.next_dec
            st.next_dec = None
        # alerts, heartbeats: nothing to report

    def _decrypt13(self, d: int, st: _Direction, ctype: int, ver: int,
                   frag: bytes) -> tuple[int, bytes] | None:
        cands = st.cands
        if st.resync:
            return self._resync13(d, st, ctype, ver, frag)
        i = st.stage
        last = len(cands) - 1
        for j in range(i, last + 1):
            dec = cands[j]
            try:
                result = dec.decrypt(ctype, ver, frag)
            except DecryptError:
                dec.seq -= 1  # a trial, not a record this key protected
                continue
            if j != i:
                st.stage = j
            if j == last:
                st.app_ok = True
            return result
        if not st.app_ok:
            # Before the first application record: a handshake (or rejected 0-RTT) record whose key we lack.
            self.records_skipped += 1
            return None
        cands[i].seq += 1
        self.records_failed += 1
        self._set_failure(f"{'client' if d == 0 else 'server'} record failed authentication")
        return None

    def _resync13(self, d: int, st: _Direction, ctype: int, ver: int,
                  frag: bytes) -> tuple[int, bytes] | None:
        """The first record after ``st.resync`` dropped ones: find its key and sequence number by trial."""
        skip, st.resync = st.resync, 0
        cands = st.cands
        last = len(cands) - 1
        for j in range(last, st.stage - 1, -1):  # most likely under the application key
            dec = cands[j]
            base = dec.seq
            for k in range(skip + 1):
                dec.seq = base + k
                try:
                    result = dec.decrypt(ctype, ver, frag)
                except DecryptError:
                    continue
                st.stage = j
                if j == last:
                    st.app_ok = True
                return result
            dec.seq = base
        st.broken = "lost track of records after dropped ones"
        self.records_failed += 1
        self._set_failure(f"{'client' if d == 0 else 'server'} records lost while waiting for the key: "
                          "the next one could not be placed")
        return None

    # ------------------------------------------------------------------ handshake
    def _handshake_bytes(self, d: int, st: _Direction, data: bytes, ts: float, out: list[Any]) -> None:
        buf = st.hs_buf
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
            self._handshake(d, st, mtype, msg, ts, out)
        if off:
            del buf[:off]

    def _handshake(self, d: int, st: _Direction, mtype: int, msg: bytes, ts: float, out: list[Any]) -> None:
        body = msg[4:]
        if self.transcript is not None and not self.tls13:
            self.transcript.append(msg)
        if mtype == hs.CLIENT_HELLO and d == 0:
            if self.ch is None or (not st.encrypted and self.ch.random == body[2:34]):
                self.ch = hs.parse_client_hello(body)
                self._wait_for(self.ch.random)
            elif st.encrypted and not self.tls13 and self.sh is not None:
                self._renegotiation(hs.parse_client_hello(body), msg)
        elif mtype == hs.SERVER_HELLO and d == 1 and self.sh is None:
            self._server_hello(hs.parse_server_hello(body), ts, out)
        elif mtype == hs.CLIENT_KEY_EXCHANGE and d == 0 and self.suite is not None:
            if self.suite.kex == "RSA":
                self.enc_pms = hs.parse_rsa_client_key_exchange(body, self.version)
                if len(self.enc_pms) >= 8:
                    self._wait_for(self.enc_pms[:8])
            if self.transcript is not None and self.sh is not None and self.sh.ems:
                self.session_hash = self._transcript_hash()
            self.transcript = None
            if not self.keys_ready:
                self._try_keys(out)
        elif mtype == hs.NEW_SESSION_TICKET and d == 1 and not self.tls13:
            self.ticket = hs.parse_new_session_ticket_12(body)
            if self.master is not None and self.ticket:
                self.ctx.cache.put(b"tk:" + self.ticket, self.master)
        elif mtype == hs.ENCRYPTED_EXTENSIONS and d == 1:
            alpn = hs.parse_encrypted_extensions_alpn(body)
            if alpn:
                self.alpn = alpn
        elif mtype == hs.FINISHED and self.tls13:
            # This side's handshake is over: its next records are protected with the application key,
            # so from now on a record that fails to decrypt is a failure, not a skipped trial.
            if st.cands:
                st.stage = len(st.cands) - 1
                st.app_ok = True
        elif mtype == hs.END_OF_EARLY_DATA and self.tls13 and d == 0:
            if st.cands and st.stage == 0 and len(st.cands) > 2:
                st.stage = 1
        elif mtype == hs.KEY_UPDATE and self.tls13 and st.app_secret and self.suite is not None:
            st.app_secret = tls13_next_secret(self.suite, st.app_secret)
            st.cands[-1] = tls13_decryptor(self.suite, st.app_secret)

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

    def _server_hello(self, sh: hs.ServerHello, ts: float, out: list[Any]) -> None:
        if sh.is_hrr:
            return
        first = self.version == 0
        self.sh = sh
        self.version = sh.version
        self.suite = suite_for(sh.suite)
        self.tls13 = sh.version == 0x0304
        if self.tls13:
            self.transcript = None
            for st in self.dirs:
                st.encrypted = True
        else:
            if sh.alpn:
                self.alpn = sh.alpn
            ch = self.ch
            if ch is not None and sh.session_id and sh.session_id == ch.session_id:
                self.resumed = True
            if sh.session_id:
                self._wait_for(sh.session_id)
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
            out.append(TlsHandshake(self.flow, ts, self.client_dir, hs.version_name(self.version),
                                    self.suite.name, self.ch.sni if self.ch else None,
                                    self.alpn, self.resumed))
        self._try_keys(out)

    def _wait_for(self, ident: bytes) -> None:
        if ident and ident not in self.wait_idents:
            self.wait_idents.append(ident)

    # ------------------------------------------------------------------ keys
    def _try_keys(self, out: list[Any]) -> None:
        if self.keys_ready or self.unsupported or self.sh is None or self.ch is None or self.suite is None:
            return
        try:
            ready = self._keys13() if self.tls13 else self._keys12()
        except UnsupportedError as exc:
            self.unsupported = str(exc)
            return
        if not ready:
            if self.tls13 and (self.dirs[0].cands or self.dirs[1].cands):
                self._release_held(out)  # one side's secret is known: decrypt that side now
            return
        self.keys_ready = True
        self._release_held(out)

    def _keys12(self) -> bool:
        ch, sh, suite, store = self.ch, self.sh, self.suite, self.ctx.store
        assert ch is not None and sh is not None and suite is not None
        master = store.get(kl.CLIENT_RANDOM, ch.random)
        if master is None and sh.session_id:
            master = store.get(kl.RSA_SESSION, sh.session_id)
        if master is None and self.resumed:
            master = self.ctx.cache.get(b"id:" + sh.session_id)
        if master is None and ch.ticket:
            master = self.ctx.cache.get(b"tk:" + ch.ticket)
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
            self.ctx.cache.put(b"id:" + sh.session_id, master)
        if self.ticket:
            self.ctx.cache.put(b"tk:" + self.ticket, master)
        kb = key_block(self.version, suite, master, ch.random, sh.random)
        etm = sh.etm and suite.mac != "AEAD" and suite.block_size > 1
        for d, st in enumerate(self.dirs):
            dec = decryptor_from_key_block(self.version, suite, kb, d == 0, etm)
            if st.encrypted and st.dec is None:
                st.dec = dec  # this side already switched (CCS seen): its held records use these keys
            else:
                st.next_dec = dec
        return True

    def _keys13(self) -> bool:
        ch, suite, store = self.ch, self.suite, self.ctx.store
        assert ch is not None and suite is not None
        cr = ch.random
        client, server = self.dirs
        # Each side decrypts as soon as its own traffic secret is known: a key log that lacks one
        # side's line (seen in the wild) still yields the other side.
        for d, st, app_label, hs_label in ((0, client, kl.CLIENT_TRAFFIC_SECRET_0, kl.CLIENT_HANDSHAKE_TRAFFIC_SECRET),
                                           (1, server, kl.SERVER_TRAFFIC_SECRET_0, kl.SERVER_HANDSHAKE_TRAFFIC_SECRET)):
            if st.cands:
                continue
            app = store.get(app_label, cr)
            if app is None:
                continue
            if d == 0 and ch.early_data:
                early = store.get(kl.CLIENT_EARLY_TRAFFIC_SECRET, cr)
                if early is not None:
                    st.cands.append(tls13_decryptor(suite, early))
            secret = store.get(hs_label, cr)
            if secret is not None:
                st.cands.append(tls13_decryptor(suite, secret))
            st.cands.append(tls13_decryptor(suite, app))
            st.app_secret = app
        return bool(client.cands) and bool(server.cands)

    def _release_held(self, out: list[Any]) -> None:
        """Decrypt the records held by every side whose keys are now known."""
        for d, st in enumerate(self.dirs):
            held = st.held
            if not held or (self.tls13 and not st.cands):
                continue
            self.late_key = True
            st.held = []
            self.ctx.held_bytes -= st.held_bytes
            st.held_bytes = 0
            for ctype, ver, frag, ts in held:
                if self.unsupported is not None:
                    break
                if ctype < 0:
                    # Records dropped while waiting: skip them by sequence number and say so.
                    if self.tls13:
                        st.resync += ver  # handshake or application records: the next record tells
                    elif st.dec is not None:
                        st.dec.seq += ver
                    out.append(TlsGap(self.flow, d, ts, -ctype))
                    continue
                try:
                    self._decrypt(d, st, ctype, ver, frag, ts, out)
                except UnsupportedError as exc:
                    self.unsupported = str(exc)
                except TlsError as exc:
                    self._set_failure(str(exc))
        if not self.dirs[0].held and not self.dirs[1].held:
            self.held_since = None
