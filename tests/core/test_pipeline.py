"""The engine's timing: secrets that come late (or never), the key-wait time bound, hold budgets, and
property tests (reordered / duplicated / re-split segments, random and mutated input) on real sessions."""

from __future__ import annotations

import io
import json
import math
import random
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.pcapwriter import Pcapng, ethernet, segment_packet, tcp_conversation, write_capture
from tests.support.tlspair import TlsTranscript, run_session
from tests.support.tlsruns import REQUESTS, RESPONSES, Run, assert_decrypted, segments
from tlsmirror.calls import ApiCall
from tlsmirror.frames.events import TcpSegment
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.shell.offline.decrypt import DecryptRun
from tlsmirror.tls.events import TlsGap, TlsOutcome, TlsPlaintext
from tlsmirror.tls.session import ENDED_SESSION_OVERHEAD, HELD_RECORD_OVERHEAD

CASES = {
    "tls12-gcm": ("1.2", "ECDHE-RSA-AES128-GCM-SHA256"),
    "tls12-cbc": ("1.2", "ECDHE-RSA-AES256-SHA"),
    "tls13": ("1.3", None),
}
MSS = 1460


@cache
def _tmp() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="tlsmirror-engine-"))


@cache
def transcript(name: str) -> TlsTranscript:
    """One real session per case, shared by the tests of this module (hypothesis included)."""
    version, cipher = CASES[name]
    t, _ = run_session(tls_version=version, cipher=cipher, requests=REQUESTS, responses=RESPONSES,
                       tmpdir=_tmp())
    return t


def first_request_flight(t: TlsTranscript) -> int:
    """Index of the client flight carrying the first request (both Finished flights start with CCS)."""
    return next(i for i, (d, data) in enumerate(t.flights) if d == 0 and data[0] == 23)


def segments_before(t: TlsTranscript, flight: int) -> int:
    """How many segments of ``segments(t)`` carry the TCP handshake and the flights before ``flight``."""
    return 3 + sum(math.ceil(len(data) / MSS) for _, data in t.flights[:flight])


# ============================================================================ late keys


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("when", ["before", "mid", "after", "never"])
def test_key_timing(name: str, when: str) -> None:
    t = transcript(name)
    segs = segments(t)
    mid = segments_before(t, first_request_flight(t))
    run = Run.new()
    if when == "before":
        run.keys(t.keylog)
    run.segments(segs[:mid])
    if when != "before":
        assert not run.of(TlsPlaintext)
    if when == "mid":
        run.keys(t.keylog, ts=segs[mid - 1].ts)
        assert not run.outcomes
    run.segments(segs[mid:])
    if when == "after":
        assert not run.outcomes  # the connection ended (FIN) but its key may still come
        assert run.engine.tls.held_bytes > 0 and run.engine.sessions_waiting == 1
        run.keys(t.keylog, ts=segs[-1].ts + 0.5)
        assert len(run.outcomes) == 1  # reported as soon as the key made it decryptable
    run.finish()
    engine = run.engine
    assert engine.tls.held_bytes == 0 and engine.tls.charge == 0
    assert engine.sessions_waiting == 0 and not engine._waiting
    if when == "never":
        o = run.outcome
        assert o.outcome == "no_key", o
        assert o.held_dropped_bytes > 0 and "ciphertext dropped" in o.reason
        assert run.plaintext() == (b"", b"")
        assert o.ts == segs[-2].ts  # the time the connection ended (FIN), not the time we gave up
        return
    o = assert_decrypted(run, t, late_key=when in ("mid", "after"))
    assert o.ts == segs[-2].ts


def test_late_key_through_pcapng_secrets_block_after_the_traffic(tmp_path: Path) -> None:
    t = transcript("tls12-gcm")
    segs = segments(t)
    png = Pcapng().interface(1, tsresol=9)
    for s in segs:
        png.packet(s.ts, ethernet(segment_packet(s)))
    png.secrets(t.keylog)
    path = write_capture(tmp_path / "late.pcapng", png.to_bytes())
    out = io.StringIO()
    run = DecryptRun(Engine(), out, str(tmp_path))
    run.run(path)
    assert out.getvalue().count("\n") == 1  # reported when the block was read, before finish()
    run.finish()
    (rec,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (rec["outcome"], rec["late_key"], rec["version"]) == ("decrypted", True, "TLS1.2")
    assert (tmp_path / f"conn{rec['id']:06d}-c2s.bin").read_bytes() == t.app_c2s
    assert (tmp_path / f"conn{rec['id']:06d}-s2c.bin").read_bytes() == t.app_s2c
    assert run.summary() == "1 TLS connections: 1 decrypted"


def test_late_key_reaches_http() -> None:
    t = transcript("tls13")
    run = Run.new(EngineConfig(http=True)).segments(segments(t))
    assert not run.of(ApiCall)
    run.keys(t.keylog, ts=10.0).finish()
    calls = run.of(ApiCall)
    assert [(c.exchange.method, c.exchange.status) for c in calls] == [("POST", 201), ("GET", 200)]
    assert calls[0].connection.tls_version == "TLS1.3"
    assert run.outcome.late_key


# ============================================================================ the key-wait time bound


def _at(s: TcpSegment, ts: float) -> TcpSegment:
    """The segment at another capture time."""
    return TcpSegment(ts, s.src, s.dst, s.sport, s.dport, s.seq, s.ack, s.flags, s.payload)


def _shift(segs: list[TcpSegment], start: int, dt: float) -> list[TcpSegment]:
    return segs[:start] + [_at(s, s.ts + dt) for s in segs[start:]]


@pytest.mark.parametrize("name", list(CASES))
def test_key_wait_drops_held_records_and_later_records_still_decrypt(name: str) -> None:
    t = transcript(name)
    segs = segments(t)
    second = next(i for i, (d, data) in enumerate(t.flights) if d == 0 and data[0] == 23
                  and i > first_request_flight(t))
    cut = segments_before(t, second)
    segs = _shift(segs, cut, 100.0)  # the second request comes 100 s later
    run = Run.new(EngineConfig(key_wait=30.0))
    run.segments(segs[:cut])
    held = run.engine.tls.held_bytes
    assert held > 0
    run.segments(segs[cut:cut + 1])  # 100 s later: what was held is given up
    engine = run.engine
    assert engine.tls.held_bytes == len(segs[cut].payload)  # only the new record is held
    run.keys(t.keylog, ts=segs[cut].ts + 1)
    run.segments(segs[cut + 1:]).finish()
    o = run.outcome
    assert o.outcome == "gap" and "no key within 30 s" in o.reason, o
    assert o.held_dropped_bytes == held and o.late_key
    c2s, s2c = run.plaintext()
    assert c2s == REQUESTS[1] and s2c == RESPONSES[1]
    gaps = run.of(TlsGap)
    assert {g.direction for g in gaps} == {0, 1} and sum(g.size for g in gaps) == held
    assert engine.tls.held_bytes == 0


def test_key_wait_ends_a_closed_connection_without_waiting_for_finish() -> None:
    t = transcript("tls12-cbc")
    other = transcript("tls13")
    run = Run.new(EngineConfig(key_wait=5.0)).segments(segments(t))
    assert not run.outcomes and run.engine.sessions_waiting == 1
    # Another connection's packets move packet time on: 10 s later the first one is given up.
    later = segments(other, client=("10.0.0.9", 40000), ts=20.0)
    run.keys(other.keylog).segments(later[:1])
    (o,) = run.outcomes
    assert o.outcome == "no_key" and "no key within 5 s" in o.reason
    assert run.engine.tls.held_bytes == 0 and run.engine.sessions_waiting == 0
    run.segments(later[1:]).finish()
    assert [x.outcome for x in run.outcomes] == ["no_key", "decrypted"]
    # A key that comes after that changes nothing (and does not fail).
    run.keys(t.keylog, ts=40.0)
    assert len(run.outcomes) == 2


def test_key_wait_bookkeeping_is_per_waiting_session() -> None:
    """Only sessions that hold ciphertext are tracked; many connections with keys cost nothing there."""
    t = transcript("tls13")
    run = Run.new(EngineConfig(key_wait=30.0)).keys(t.keylog)
    for i in range(20):
        run.segments(segments(t, client=("10.0.1.1", 30000 + i), ts=1.0 + i))
    assert run.engine.sessions_waiting == 0 and not run.engine._holding
    lost = transcript("tls12-gcm")
    run.segments(segments(lost, client=("10.0.1.2", 30000), ts=30.0))
    assert len(run.engine._holding) == 1
    run.finish()
    assert [o.outcome for o in run.outcomes].count("decrypted") == 20
    assert run.engine.tls.held_bytes == 0 and not run.engine._holding


# ============================================================================ hold budgets


def _charge(engine: Engine) -> int:
    """What the hold budgets should count now, recomputed from the sessions (records, ended sessions)."""
    records = ended = 0
    sessions = set(engine._holding) | set(engine._deferred)
    for sess in sessions:
        records += sum(1 for d in sess.dirs for h in d.pending + d.parked if h.size)
        ended += sess._ended
    return engine.tls.held_bytes + records * HELD_RECORD_OVERHEAD + ended * ENDED_SESSION_OVERHEAD


def test_total_hold_budget_gives_up_the_oldest_ended_sessions_first() -> None:
    names = ["tls12-gcm", "tls12-cbc", "tls13"]
    budget = 80_000  # one session is charged ~50 kB (its ciphertext, its records, having ended): one fits
    run = Run.new(EngineConfig(max_hold_bytes_total=budget))
    peak = 0
    for i, name in enumerate(names):
        for s in segments(transcript(name), client=("10.0.2.1", 30000 + i), ts=1.0 + i):
            run.segments([s])
            engine = run.engine
            assert engine.tls.charge == _charge(engine)
            peak = max(peak, engine.tls.charge)
    assert budget // 2 < peak <= budget
    # The two older connections (ended, waiting for keys) were given up to make room, and reported at
    # once: counted, each saying what it lost and why.
    evicted = {o.flow.port[0] - 30000: o for o in run.outcomes}
    assert sorted(evicted) == [0, 1]
    for o in evicted.values():
        assert (o.outcome, o.held) == ("no_key", "evicted") and "total hold budget exceeded" in o.reason
        assert o.held_dropped_bytes > 0
    tls = run.engine.tls
    assert tls.evicted_sessions == 2 and tls.evicted_bytes == sum(o.held_dropped_bytes for o in evicted.values())
    # The newest one, within the budget, lost nothing: its late keys decrypt all of it.
    run.keys("".join(transcript(n).keylog for n in names), ts=10.0).finish()
    last = run.outcomes[-1]
    assert last.flow.port[0] == 30002
    assert_decrypted(run, transcript("tls13"), flow_id=last.flow.id, late_key=True)
    assert len(run.outcomes) == 3
    assert tls.held_bytes == 0 and tls.charge == 0 and run.engine.sessions_waiting == 0


def test_total_hold_budget_gives_up_the_oldest_open_session() -> None:
    """Two open connections hold (neither ended): over the budget, the one holding longest loses its
    held records, counted; later records of both are held again and the younger one loses nothing."""
    t = transcript("tls12-gcm")
    a = segments(t, client=("10.0.3.1", 31000), ts=1.0)
    b = segments(t, client=("10.0.3.2", 31001), ts=1.5)
    a_open, b_open = a[:-3], b[:-3]  # without the FIN exchange: both stay open
    budget = 60_000
    run = Run.new(EngineConfig(max_hold_bytes_total=budget))
    run.segments(a_open)
    held_a = run.engine.tls.held_bytes
    assert held_a > 0 and run.engine.tls.charge <= budget
    run.segments(b_open)
    tls = run.engine.tls
    assert tls.charge <= budget and tls.evicted_sessions == 1 and 0 < tls.evicted_bytes <= held_a
    run.keys(t.keylog, ts=3.0)
    run.segments(a[-3:]).segments(b[-3:]).finish()
    outs = {o.flow.port[0]: o for o in run.outcomes}
    older, younger = outs[31000], outs[31001]
    assert older.held == "evicted" and older.held_dropped_bytes == tls.evicted_bytes
    assert "total hold budget exceeded" in older.reason
    assert_decrypted(run, t, flow_id=younger.flow.id, late_key=True)
    assert tls.held_bytes == 0 and tls.charge == 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(10_000, 200_000), st.integers(0, 2**32 - 1), st.booleans())
def test_hold_budget_properties(budget: int, seed: int, keys_late: bool) -> None:
    """Interleaved connections under any total budget: the charge is what the sessions hold, within the
    budget after every segment (no session alone exceeds it), and every connection is reported once."""
    rnd = random.Random(seed)
    names = [rnd.choice(list(CASES)) for _ in range(4)]
    runs = [segments(transcript(n), client=("10.0.4.1", 32000 + i), ts=1.0) for i, n in enumerate(names)]
    order = [i for i, r in enumerate(runs) for _ in r]
    rnd.shuffle(order)
    pos = [0] * len(runs)
    run = Run.new(EngineConfig(max_hold_bytes_total=budget, max_hold_bytes_per_session=min(budget, 50_000)))
    for k, i in enumerate(order):
        seg = runs[i][pos[i]]
        pos[i] += 1
        run.segments([_at(seg, 1.0 + k * 0.001)])
        engine = run.engine
        assert engine.tls.charge == _charge(engine) <= budget
    if keys_late:
        run.keys("".join(transcript(n).keylog for n in names), ts=10.0)
    run.finish()
    ids = [o.flow.id for o in run.outcomes]
    assert len(ids) == len(set(ids)) == 4
    assert sum(o.held == "evicted" for o in run.outcomes) <= run.engine.tls.evicted_sessions
    assert run.engine.tls.charge == 0 and run.engine.tls.held_bytes == 0


def test_an_ended_session_is_charged_until_it_is_reported() -> None:
    t = transcript("tls13")
    run = Run.new().segments(segments(t))
    engine = run.engine
    (sess,) = engine._deferred
    assert sess._ended and engine.tls.charge == _charge(engine) > engine.tls.held_bytes + ENDED_SESSION_OVERHEAD
    assert all(not d.buf for d in sess.dirs)
    run.keys(t.keylog, ts=5.0)
    assert_decrypted(run, t, late_key=True)
    assert engine.tls.charge == 0 and not engine._deferred


@pytest.mark.parametrize("name", list(CASES))
def test_per_session_hold_budget(name: str) -> None:
    t = transcript(name)
    run = Run.new(EngineConfig(max_hold_bytes_per_session=8000)).segments(segments(t))
    assert run.engine.tls.held_bytes <= 8000
    run.keys(t.keylog, ts=5.0).finish()
    o = run.outcome
    assert o.outcome == "gap" and "per session" in o.reason and o.late_key, o
    c2s, s2c = run.plaintext()
    # What was held decrypts; after the loss the client's later records (sequence numbers known) do too.
    assert c2s == t.app_c2s
    assert 0 < len(s2c) < len(t.app_s2c)
    assert t.app_s2c.endswith(s2c[-1000:]) or t.app_s2c.startswith(s2c)
    assert run.engine.tls.held_bytes == 0


# ============================================================================ properties


def reshaped(t: TlsTranscript, rnd: random.Random) -> list[TcpSegment]:
    """The session's segments re-split at random, shuffled within each one-direction run, some duplicated."""
    chunks: list[tuple[int, bytes]] = []
    for d, data in t.flights:
        i = 0
        while i < len(data):
            n = rnd.choice((1, 5, 7, rnd.randint(1, 3000)))
            chunks.append((d, data[i:i + n]))
            i += n
    segs = tcp_conversation(chunks, mss=1 << 16)
    head, body, tail = segs[:3], segs[3:-3], segs[-3:]
    runs: list[list[TcpSegment]] = []
    for s in body:
        if runs and runs[-1][0].sport == s.sport:
            runs[-1].append(s)
        else:
            runs.append([s])
    out: list[TcpSegment] = list(head)
    for r in runs:
        rnd.shuffle(r)
        for s in r:
            out.append(s)
            if rnd.random() < 0.1:
                out.append(s)  # retransmission
    out.extend(tail)
    return [_at(s, 1.0 + i * 0.001) for i, s in enumerate(out)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(CASES)), st.integers(0, 2**32 - 1), st.booleans())
def test_reordered_duplicated_resplit_segments_decrypt_the_same(name: str, seed: int, late: bool) -> None:
    t = transcript(name)
    run = Run.new()
    if not late:
        run.keys(t.keylog)
    run.segments(reshaped(t, random.Random(seed)))
    if late:
        run.keys(t.keylog, ts=100.0)
    run.finish()
    assert_decrypted(run, t, late_key=late)


def _check_invariants(engine: Engine, events: list[Any]) -> None:
    outcomes = [e for e in events if type(e) is TlsOutcome]
    ids = [o.flow.id for o in outcomes]
    assert len(ids) == len(set(ids)) == engine.stats["tls_flows"]
    assert engine.tls.held_bytes == 0 and engine.tls.charge == 0 and engine.sessions_waiting == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 101, 113, 0, 276, 147]), st.binary(max_size=200)), max_size=30))
def test_random_frames_only_make_events(frames: list[tuple[int, bytes]]) -> None:
    engine = Engine()
    events: list[Any] = []
    for i, (linktype, data) in enumerate(frames):
        events += engine.feed_frame(linktype, data, 1.0 + i)
    events += engine.finish()
    _check_invariants(engine, events)


_TLSISH = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda ct, body: bytes([ct, 3, 3]) + len(body).to_bytes(2, "big") + body,
              st.integers(20, 24), st.binary(max_size=200)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), _TLSISH), min_size=1, max_size=12), st.booleans())
def test_random_tls_like_streams_only_make_events(chunks: list[tuple[int, bytes]], handshake: bool) -> None:
    engine = Engine()
    events: list[Any] = []
    for s in tcp_conversation([(d, b) for d, b in chunks if b], handshake=handshake):
        events += engine.feed_segment(s)
    events += engine.finish()
    _check_invariants(engine, events)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(list(CASES)), st.integers(0, 2**32 - 1), st.integers(1, 12), st.booleans())
def test_mutated_real_captures_only_make_events(name: str, seed: int, mutations: int, keys: bool) -> None:
    t = transcript(name)
    rnd = random.Random(seed)
    frames = [(s.ts, bytearray(ethernet(segment_packet(s)))) for s in segments(t)]
    for _ in range(mutations):
        _, frame = rnd.choice(frames)
        what = rnd.random()
        pos = rnd.randrange(len(frame))
        if what < 0.6:
            frame[pos] ^= 1 << rnd.randrange(8)
        elif what < 0.8:
            del frame[pos:pos + rnd.randint(1, 40)]
        else:
            frame[pos:pos] = rnd.randbytes(rnd.randint(1, 40))
    if rnd.random() < 0.3:
        rnd.shuffle(frames)
    engine = Engine()
    events: list[Any] = []
    if keys:
        events += Run(engine).keys(t.keylog).events
    for ts, frame in frames:
        events += engine.feed_frame(1, bytes(frame), ts)
    events += engine.finish()
    _check_invariants(engine, events)
    for e in events:
        if type(e) is TlsPlaintext:  # what decrypts is authentic: part of what was sent
            assert e.data in (t.app_c2s, t.app_s2c)[e.direction]
