"""Resumption state between engines (issue 14): an engine asked to (``EngineConfig.share_resumption``) emits a
:class:`ResumptionState` for each resumable TLS 1.2 session it sees (session id, or ticket: by digest), and an
engine that takes it (``Engine.add_resumption``) decrypts the abbreviated handshake resuming that session
without a key log line of its own.

Real TLS: OpenSSL through Python's ssl, resumption by ticket (OpenSSL's default) and by session id (a server
with ``OP_NO_TICKET``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.core.tls.test_pickup import N, cut, first_run, second_run, transcript
from tests.core.tls.test_session import _no_ticket_dir
from tests.support.tlspair import TlsTranscript, run_session
from tests.support.tlsruns import (
    REQUESTS,
    RESPONSES,
    Run,
    assert_decrypted,
    cleartext_handshake,
    openssl_suite_name,
    segments,
)
from tlsmirror.calls import ApiCall
from tlsmirror.pipeline import EngineConfig
from tlsmirror.tls.events import HandshakeFacts, ResumptionState, TlsGap, TlsPlaintext
from tlsmirror.tls.handshake import parse_client_hello
from tlsmirror.tls.suites import suite_for

CIPHERS = ["ECDHE-RSA-AES128-GCM-SHA256", "AES256-SHA"]  # AEAD, and CBC (encrypt-then-MAC) with RSA


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resumption")


def _pair(tmp: Path, by: str, cipher: str) -> tuple[TlsTranscript, TlsTranscript, bytes]:
    """A full handshake and the abbreviated one resuming it; the ident (session id or ticket) resumed."""
    d = _no_ticket_dir(tmp, cipher) if by == "id" else tmp / f"tickets-{cipher}"
    d.mkdir(exist_ok=True)
    t1, sess = run_session(tls_version="1.2", cipher=cipher, tmpdir=d)
    assert sess is not None and sess.has_ticket == (by == "ticket")
    t2, _ = run_session(tls_version="1.2", cipher=cipher, session=sess, requests=REQUESTS, responses=RESPONSES,
                        tmpdir=d)
    assert t2.session_reused
    ch2 = parse_client_hello(next(body for mtype, body in cleartext_handshake(t2.stream_c2s) if mtype == 1))
    ident = ch2.ticket if by == "ticket" else sess.id
    assert ident
    return t1, t2, ident


def _full_only(t1: TlsTranscript) -> str:
    """The full handshake's key log line only (what sensor A is given)."""
    return "".join(line + "\n" for line in t1.keylog.splitlines() if line.startswith("CLIENT_RANDOM"))


def _states(t1: TlsTranscript, mss: int = 1460) -> list[ResumptionState]:
    run = Run.new(EngineConfig(share_resumption=True)).keys(_full_only(t1))
    run.segments(segments(t1, mss=mss, step=1e-5)).finish()
    assert_decrypted(run, t1, resumed=False)
    return run.of(ResumptionState)


@pytest.mark.parametrize("by", ["id", "ticket"])
@pytest.mark.parametrize("cipher", CIPHERS)
def test_the_state_of_a_full_handshake_decrypts_its_resumption_on_another_engine(
        by: str, cipher: str, tmp: Path) -> None:
    t1, t2, ident = _pair(tmp, by, cipher)
    states = _states(t1)
    master = bytes.fromhex(_full_only(t1).split()[2])
    assert [(s.kind, s.digest, s.master) for s in states] == [(by, hashlib.sha256(ident).digest(), master)]
    st = states[0]
    assert (st.version, suite_for(st.suite).name, st.extended_master_secret) == (
        0x0303, openssl_suite_name(cipher), True)
    assert 1.0 < st.ts < 1.01  # the ClientHello's packet time
    assert master.hex() not in repr(st) and ident.hex() not in repr(st)
    assert st == ResumptionState(st.kind, st.digest, st.master, st.version, st.suite, True, st.ts)
    assert st != ResumptionState(st.kind, st.digest, b"\0" * 48, st.version, st.suite, True, st.ts)

    # Engine B: only the resumed connection's packets, no key log line for it; the state before the packets.
    b = Run.new(EngineConfig(share_resumption=True))
    b.events += b.engine.add_resumption(states, 0.0)
    b.segments(segments(t2)).finish()
    assert_decrypted(b, t2, resumed=True)
    assert not b.of(ResumptionState)  # a resumed session id is not new; a resumed ticket brings none here

    # Without it: no key.
    alone = Run.new(EngineConfig(share_resumption=True)).segments(segments(t2)).finish()
    assert alone.outcome.outcome == "no_key"


@pytest.mark.parametrize("by", ["id", "ticket"])
def test_byte_by_byte_and_the_state_arriving_after_the_records(by: str, tmp: Path) -> None:
    t1, t2, ident = _pair(tmp, by, CIPHERS[0])
    states = _states(t1, mss=1)
    assert [s.digest for s in states] == [hashlib.sha256(ident).digest()]
    b = Run.new(EngineConfig(share_resumption=True))
    b.segments(segments(t2, mss=1, close=False, step=1e-5))  # 45,000 segments within the key wait
    assert not b.of(TlsPlaintext) and not b.of(TlsGap)  # held
    b.events += b.engine.add_resumption(states, 5.0)  # it comes late: the held records are decrypted
    b.finish()
    assert_decrypted(b, t2, resumed=True, late_key=True)


def test_offline_engines_emit_nothing_and_unknown_states_are_ignored(tmp: Path) -> None:
    t1, t2, _ = _pair(tmp, "ticket", CIPHERS[0])
    run = Run.new().keys(_full_only(t1)).segments(segments(t1)).finish()
    assert not run.of(ResumptionState)  # not asked to: the offline path pays nothing
    states = _states(t1)
    odd = [ResumptionState("psk", s.digest, s.master, s.version, s.suite, True) for s in states]
    short = [ResumptionState(s.kind, s.digest[:16], s.master, s.version, s.suite, True) for s in states]
    b = Run.new(EngineConfig(share_resumption=True))
    b.events += b.engine.add_resumption(odd + short, 0.0)
    b.segments(segments(t2)).finish()
    assert b.outcome.outcome == "no_key"


# ---------------------------------------------------------------------- TLS 1.3: the facts again with the ALPN
def test_tls13_facts_are_emitted_again_with_the_alpn_and_a_picked_up_call_reports_it() -> None:
    """Not resumption, but the same fabric path (issue 14, point 4): a TLS 1.3 connection's facts are made at
    the ServerHello, before the ALPN (EncryptedExtensions) is known; they are emitted again with it."""
    t = transcript("tls13")
    first = first_run(t)
    facts = first.of(HandshakeFacts)
    assert [f.alpn for f in facts] == [None, "http/1.1"]
    assert facts[0].client_random == facts[1].client_random and facts[0].ts == facts[1].ts
    second = second_run(t, cut(t, 2), facts[-1:])
    calls = second.of(ApiCall)
    assert len(calls) == N - 2 and {c.connection.alpn for c in calls} == {"http/1.1"}
    tls12 = first_run(transcript("tls12-gcm")).of(HandshakeFacts)
    assert [f.alpn for f in tls12] == ["http/1.1"]  # known at the ServerHello: once
