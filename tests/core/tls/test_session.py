"""The decryption engine against real OpenSSL sessions: TCP segments / frames in, plaintext and outcomes out.

Every test runs a real TLS session between two OpenSSL endpoints (tests/support/tlspair.py), turns the
recorded bytes into TCP segments or captured frames (tests/support/pcapwriter.py) and feeds them through
:class:`tlsmirror.pipeline.Engine`; the decrypted bytes per direction must equal what the session sent.
The helpers at the top are shared with tests/test_engine.py and tests/test_cli_decrypt.py.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import tlspair
from tests.support.pcapwriter import (
    ethernet,
    ipv4,
    segment_packet,
    tcp_conversation,
    udp,
    vxlan,
)
from tests.support.tlspair import run_session, server_rsa_key_pem
from tests.support.tlsruns import (
    NATIVE,
    OPENSSL_CODES,
    REQUESTS,
    RESPONSES,
    VERSION_NAMES,
    Run,
    assert_decrypted,
    cleartext_handshake,
    decrypt,
    keylog_only,
    records,
    rsa_premaster,
    segments,
    session,
    tls12_suites,
    tls13_suites,
)
from tlsmirror.pipeline import EngineConfig
from tlsmirror.tls.events import TlsGap, TlsHandshake
from tlsmirror.tls.handshake import HRR_RANDOM, parse_client_hello, parse_server_hello
from tlsmirror.tls.suites import suite_for


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("session")


# ============================================================================ every suite


def _tls12_cases() -> list[Any]:
    cases = []
    for name in tls12_suites():
        block = suite_for(OPENSSL_CODES[name]).block_size > 1
        for etm in (True, False) if block else (True,):
            cases.append(pytest.param(name, etm, id=f"{name}-{'etm' if etm else 'mte'}"))
    return cases


@pytest.mark.parametrize(("cipher", "etm"), _tls12_cases())
def test_tls12_suite(cipher: str, etm: bool, tmp: Path) -> None:
    t = session(tmp, tls_version="1.2", cipher=cipher, encrypt_then_mac=etm)
    suite = suite_for(OPENSSL_CODES[cipher])
    run = decrypt(t)
    if not suite.supported:
        o = run.outcome
        assert o.outcome == "unsupported" and suite.name in o.reason
        assert run.plaintext() == (b"", b"")
        return
    o = assert_decrypted(run, t)
    hs = run.of(TlsHandshake)
    assert len(hs) == 1 and hs[0].suite == suite.name and hs[0].version == "TLS1.2"
    assert o.records_decrypted >= 6


@pytest.mark.parametrize("cipher", tls13_suites())
def test_tls13_suite(cipher: str, tmp: Path) -> None:
    if not NATIVE and "CCM" in cipher:
        pytest.skip("choosing TLS 1.3 suites needs the ctypes route to OpenSSL")
    t = session(tmp, tls_version="1.3", cipher=cipher if NATIVE else None, alpn=["h2", "http/1.1"])
    if NATIVE:
        assert t.cipher == cipher
    o = assert_decrypted(decrypt(t), t)
    assert o.alpn == "h2"


@pytest.mark.parametrize("ems", [True, False])
@pytest.mark.parametrize("etm", [True, False])
def test_tls12_etm_and_ems(etm: bool, ems: bool, tmp: Path) -> None:
    t = session(tmp, tls_version="1.2", cipher="ECDHE-RSA-AES256-SHA384", encrypt_then_mac=etm,
                extended_master_secret=ems)
    sh = next(body for mtype, body in cleartext_handshake(t.stream_s2c) if mtype == 2)
    assert (b"\x00\x16\x00\x00" in sh) == etm and (b"\x00\x17\x00\x00" in sh) == ems
    assert_decrypted(decrypt(t), t)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
@pytest.mark.parametrize("cipher", ["ECDHE-RSA-AES128-SHA", "AES256-SHA", "DHE-RSA-CAMELLIA128-SHA",
                                    "ECDHE-ECDSA-AES256-SHA", "NULL-SHA"])
@pytest.mark.parametrize("etm", [True, False])
def test_old_versions(version: str, cipher: str, etm: bool, tmp: Path) -> None:
    try:
        t = session(tmp, tls_version=version, cipher=cipher, encrypt_then_mac=etm)
    except ssl.SSLError as exc:  # pragma: no cover - depends on the local OpenSSL build
        pytest.skip(f"local OpenSSL refuses TLS {version} {cipher}: {exc}")
    assert_decrypted(decrypt(t), t)


# ============================================================================ resumption


def _no_ticket_dir(tmp: Path, cipher: str) -> Path:
    """A tmpdir whose cached server context issues no tickets (resumption by session id)."""
    d = tmp / "no-ticket"
    d.mkdir(exist_ok=True)
    server, _, _ = tlspair._contexts("1.2", cipher, None, True, True, d)
    server.options |= ssl.OP_NO_TICKET
    return d


@pytest.mark.parametrize("by", ["session_id", "ticket"])
@pytest.mark.parametrize("cipher", ["ECDHE-RSA-AES128-GCM-SHA256", "AES256-SHA"])
def test_tls12_resumption_uses_the_cache(by: str, cipher: str, tmp: Path) -> None:
    d = _no_ticket_dir(tmp, cipher) if by == "session_id" else tmp
    t1, sess = run_session(tls_version="1.2", cipher=cipher, tmpdir=d)
    assert sess is not None and sess.has_ticket == (by == "ticket")
    t2, _ = run_session(tls_version="1.2", cipher=cipher, session=sess, requests=REQUESTS,
                        responses=RESPONSES, tmpdir=d)
    assert t2.session_reused
    ch2 = parse_client_hello(next(body for mtype, body in cleartext_handshake(t2.stream_c2s) if mtype == 1))
    sh1 = parse_server_hello(next(body for mtype, body in cleartext_handshake(t1.stream_s2c) if mtype == 2))
    if by == "ticket":
        assert ch2.ticket and not sh1.session_id  # nothing to find by session id: the ticket it is
    else:
        assert not ch2.ticket and ch2.session_id == sh1.session_id == sess.id
    # Only the first connection's master secret is known: the second must come from the cache.
    keylog = "".join(line + "\n" for line in (t1.keylog + t2.keylog).splitlines()
                     if t2.client_random.hex() not in line)
    assert t2.client_random.hex() not in keylog
    run = Run.new().keys(keylog)
    run.segments(segments(t1))
    run.segments(segments(t2, client=("10.0.0.1", 40001), ts=2.0))
    run.finish()
    first, second = sorted(run.outcomes, key=lambda o: o.flow.id)
    assert_decrypted(run, t1, flow_id=first.flow.id, resumed=False)
    assert_decrypted(run, t2, flow_id=second.flow.id, resumed=True)

    # Without the first connection, the second has no key.
    alone = Run.new().keys(keylog).segments(segments(t2)).finish()
    assert alone.outcome.outcome == "no_key"
    assert alone.plaintext() == (b"", b"")


def test_tls13_resumption(tmp: Path) -> None:
    t1, sess = run_session(tls_version="1.3", tmpdir=tmp)
    t2, _ = run_session(tls_version="1.3", session=sess, requests=REQUESTS, responses=RESPONSES, tmpdir=tmp)
    assert t2.session_reused
    run = Run.new().keys(t1.keylog + t2.keylog)
    run.segments(segments(t1)).segments(segments(t2, client=("10.0.0.1", 40001), ts=2.0)).finish()
    first, second = sorted(run.outcomes, key=lambda o: o.flow.id)
    assert_decrypted(run, t1, flow_id=first.flow.id)
    assert_decrypted(run, t2, flow_id=second.flow.id, resumed=True)


# ============================================================================ TLS 1.3 specifics


@pytest.mark.skipif(not NATIVE, reason="KeyUpdate needs the ctypes route to OpenSSL")
@pytest.mark.parametrize("cipher", ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"])
def test_tls13_key_update(cipher: str, tmp: Path) -> None:
    t = session(tmp, tls_version="1.3", cipher=cipher, key_update=True)
    assert "TRAFFIC_SECRET_N" not in keylog_only(t.keylog, "CLIENT_TRAFFIC_SECRET_0")
    assert_decrypted(decrypt(t), t)


def test_tls13_hello_retry_request(tmp: Path) -> None:
    d = tmp / "hrr"
    d.mkdir(exist_ok=True)
    server, _, _ = tlspair._contexts("1.3", None, None, True, True, d)
    server.set_ecdh_curve("prime256v1")  # the client's key share is X25519: the server asks again
    t = session(d, tls_version="1.3")
    first_server = records(t.flights[1][1])
    assert t.flights[1][0] == 1 and tlspair_hrr(first_server[0][2])
    hs = assert_decrypted(decrypt(t), t)
    assert hs.resumed is False


def tlspair_hrr(fragment: bytes) -> bool:
    return fragment[0] == 2 and fragment[6:38] == HRR_RANDOM


def test_tls13_only_application_traffic_secrets(tmp: Path) -> None:
    t = session(tmp, tls_version="1.3", alpn=["http/1.1"])
    keylog = keylog_only(t.keylog, "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0")
    assert len(keylog.splitlines()) == 2
    # (the ALPN answer is in the EncryptedExtensions, which cannot be read without handshake secrets)
    assert_decrypted(decrypt(t, keylog), t, alpn=None)
    # One of the two is not enough for the connection, but that side is decrypted (nothing held back
    # that could be read), and the outcome says which secret is missing.
    run = decrypt(t, keylog_only(t.keylog, "CLIENT_TRAFFIC_SECRET_0"))
    assert run.outcome.outcome == "no_key" and run.plaintext() == (t.app_c2s, b"")
    assert "no SERVER_TRAFFIC_SECRET_0" in run.outcome.reason and "client's side was decrypted" in run.outcome.reason
    run = decrypt(t, keylog_only(t.keylog, "SERVER_TRAFFIC_SECRET_0"))
    assert run.outcome.outcome == "no_key" and run.plaintext() == (b"", t.app_s2c)


# ============================================================================ static RSA


@pytest.mark.parametrize("ems", [True, False])
@pytest.mark.parametrize(("version", "cipher"), [("1.2", "AES128-GCM-SHA256"), ("1.2", "AES256-SHA256"),
                                                 ("1.0", "AES128-SHA")])
def test_static_rsa(version: str, cipher: str, ems: bool, tmp: Path) -> None:
    t = session(tmp, tls_version=version, cipher=cipher, extended_master_secret=ems)
    enc, pms = rsa_premaster(t)
    cr = t.client_random.hex()
    # 1. the server's private key, no key log at all
    assert_decrypted(decrypt(t, "", rsa_pem=server_rsa_key_pem()), t)
    # 2. an "RSA <first 8 bytes of the encrypted pre-master> <pre-master>" line
    assert_decrypted(decrypt(t, f"RSA {enc[:8].hex()} {pms.hex()}\n"), t)
    # 3. a "PMS_CLIENT_RANDOM <client random> <pre-master>" line
    assert_decrypted(decrypt(t, f"PMS_CLIENT_RANDOM {cr} {pms.hex()}\n"), t)
    # 4. a wrong server key: no key
    other = rsa.generate_private_key(65537, 1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    run = decrypt(t, "", rsa_pem=other)
    assert run.outcome.outcome == "no_key" and run.plaintext() == (b"", b"")


def test_static_rsa_key_is_not_used_for_ecdhe(tmp: Path) -> None:
    t = session(tmp, tls_version="1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256")
    run = decrypt(t, "", rsa_pem=server_rsa_key_pem())
    assert run.outcome.outcome == "no_key"


# ============================================================================ what goes wrong


def test_mid_stream_capture_is_no_handshake_unless_picked_up(tmp: Path) -> None:
    for version in ("1.2", "1.3"):
        t = session(tmp, tls_version=version)
        first_app = next(i for i, (_, data) in enumerate(t.flights) if i > 1 and data[0] == 23
                         and (version == "1.2" or i > 3))
        run = Run.new().keys(t.keylog).segments(tcp_conversation(t.flights[first_app:], handshake=False))
        o = run.finish().outcome
        if version == "1.3":  # the key log's unused application secrets pick it up (see test_pickup.py)
            assert (o.outcome, o.picked_up) == ("decrypted", True), o
            continue
        assert o.outcome == "no_handshake", o  # TLS 1.2 needs the handshake facts
        assert run.plaintext() == (b"", b"")


def test_missing_key_is_no_key(tmp: Path) -> None:
    for version in ("1.2", "1.3"):
        t = session(tmp, tls_version=version)
        run = decrypt(t, "")
        o = run.outcome
        assert o.outcome == "no_key" and t.client_random[:8].hex() in o.reason
        assert run.plaintext() == (b"", b"")
        assert o.version == VERSION_NAMES[t.version] and o.sni == "api.example.test"
        assert run.engine.tls.held_bytes == 0
        # the reason never carries more than a prefix of the client random
        assert t.client_random.hex() not in o.reason


def _corrupt_app_record(stream: bytes, which: int) -> bytes:
    """Flip one ciphertext bit in the ``which``-th application data record (after the handshake)."""
    recs = [(off, frag) for off, ctype, frag in records(stream) if ctype == 23]
    off, frag = recs[which]
    pos = off + 5 + len(frag) // 2
    return stream[:pos] + bytes([stream[pos] ^ 0x01]) + stream[pos + 1:]


@pytest.mark.parametrize(("version", "cipher"), [("1.2", "ECDHE-RSA-AES128-GCM-SHA256"),
                                                 ("1.2", "ECDHE-RSA-AES128-SHA"), ("1.3", None)])
def test_corrupted_record_is_decrypt_failed(version: str, cipher: str | None, tmp: Path) -> None:
    t = session(tmp, tls_version=version, cipher=cipher)
    # The first client flight that starts with application data carries the first request (the client's
    # Finished flight starts with a ChangeCipherSpec record in both versions).
    idx = next(i for i, (d, data) in enumerate(t.flights) if d == 0 and data[0] == 23)
    flights = list(t.flights)
    flights[idx] = (0, _corrupt_app_record(flights[idx][1], 0))
    run = Run.new().keys(t.keylog).segments(tcp_conversation(flights)).finish()
    o = run.outcome
    assert o.outcome == "decrypt_failed", o
    assert o.records_failed == 1 and "client" in o.reason
    c2s, s2c = run.plaintext()
    assert s2c == t.app_s2c  # the other direction is untouched
    assert c2s == t.app_c2s[len(REQUESTS[0]):]  # the bad record is missing, the next one decrypts


def _cut_out_middle(whole: bytes, got: bytes) -> tuple[int, int]:
    """``got`` is ``whole`` with one run removed: (kept prefix, kept suffix) lengths."""
    a = 0
    while a < min(len(whole), len(got)) and whole[a] == got[a]:
        a += 1
    suffix = got[a:]
    assert whole.endswith(suffix), "bytes after the hole are not the original's tail"
    return a, len(suffix)


@pytest.mark.parametrize(("version", "cipher"), [("1.2", "ECDHE-RSA-AES128-GCM-SHA256"),
                                                 ("1.2", "ECDHE-RSA-CHACHA20-POLY1305"),
                                                 ("1.2", "ECDHE-RSA-AES128-SHA256"),
                                                 ("1.3", None)])
def test_dropped_segment_is_a_gap_and_records_are_found_again(version: str, cipher: str | None, tmp: Path) -> None:
    """A lost segment costs the records it touched, not the rest of the connection."""
    t = session(tmp, tls_version=version, cipher=cipher, responses=[
        RESPONSES[0], b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n" + bytes(range(256)) * 156 + b"x" * 64])
    # small records, as a busy API server writes them: many records per segment
    segs = segments(t)
    big = [i for i, s in enumerate(segs) if s.sport == 443 and len(s.payload) == 1460]
    del segs[big[len(big) // 2]]
    run = Run.new().keys(t.keylog).segments(segs).finish()
    o = run.outcome
    assert o.outcome == "gap", o
    c2s, s2c = run.plaintext()
    assert c2s == t.app_c2s
    prefix, suffix = _cut_out_middle(t.app_s2c, s2c)
    assert prefix > 0 and suffix > 0 and prefix + suffix < len(t.app_s2c)
    assert len(t.app_s2c) - prefix - suffix <= 2 * 16_384 + 1460  # at most the records the hole touched
    assert [g.direction for g in run.of(TlsGap)] == [1]
    assert "found again" in o.reason


def test_dropped_segment_in_tls10_cbc_stops_that_side(tmp: Path) -> None:
    """TLS 1.0 CBC chains IVs across records: after a hole the rest of that side cannot be read."""
    t = session(tmp, tls_version="1.0", cipher="ECDHE-RSA-AES128-SHA:@SECLEVEL=0")
    segs = segments(t)
    big = [i for i, s in enumerate(segs) if s.sport == 443 and len(s.payload) == 1460]
    del segs[big[len(big) // 2]]
    run = Run.new().keys(t.keylog).segments(segs).finish()
    assert run.outcome.outcome == "gap"
    _c2s, s2c = run.plaintext()
    assert t.app_s2c.startswith(s2c) and 0 < len(s2c) < len(t.app_s2c)


# ============================================================================ where TLS hides


def test_starttls(tmp: Path) -> None:
    t = session(tmp, tls_version="1.2", cipher="ECDHE-RSA-CHACHA20-POLY1305")
    chunks = [(1, b"220 mail.example.test ESMTP\r\n"), (0, b"EHLO client\r\n"),
              (1, b"250-mail.example.test\r\n250 STARTTLS\r\n"), (0, b"STARTTLS\r\n"),
              (1, b"220 2.0.0 Ready to start TLS\r\n"), *t.flights]
    run = Run.new().keys(t.keylog).segments(tcp_conversation(chunks, server=("10.0.0.2", 25))).finish()
    assert_decrypted(run, t)
    assert run.engine.stats["starttls_flows"] == 1


def test_starttls_client_hello_in_pieces(tmp: Path) -> None:
    t = session(tmp, tls_version="1.3")
    (d0, hello), rest = t.flights[0], t.flights[1:]
    chunks = [(1, b"* OK IMAP4rev1 ready\r\n"), (0, b"a1 STARTTLS\r\n"), (1, b"a1 OK begin TLS\r\n"),
              (d0, hello[:1]), (d0, hello[1:4]), (d0, hello[4:]), *rest]
    run = Run.new().keys(t.keylog).segments(tcp_conversation(chunks, server=("10.0.0.2", 143))).finish()
    assert_decrypted(run, t)


@pytest.mark.parametrize("sizes", [(1,), (1, 1, 1, 1, 1), (2, 3), (5,)])
def test_tls_recognised_from_tiny_first_segments(sizes: tuple[int, ...], tmp: Path) -> None:
    """The first bytes of a stream may come in pieces smaller than a record header."""
    t = session(tmp, tls_version="1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256")
    (d0, hello), rest = t.flights[0], t.flights[1:]
    chunks = []
    off = 0
    for n in sizes:
        chunks.append((d0, hello[off:off + n]))
        off += n
    chunks.append((d0, hello[off:]))
    run = Run.new().keys(t.keylog).segments(tcp_conversation([*chunks, *rest])).finish()
    assert_decrypted(run, t)
    assert run.engine.stats["tls_flows"] == 1 and run.engine.stats["other_flows"] == 0


def test_tiny_streams_are_still_classified(tmp: Path) -> None:
    """A flow that ends before 6 bytes were seen still gets its outcome (TLS) or none (other)."""
    run = Run.new().segments(tcp_conversation([(0, b"\x16\x03\x01")])).finish()
    assert run.outcome.outcome == "no_handshake" and run.engine.stats["tls_flows"] == 1
    run = Run.new().segments(tcp_conversation([(0, b"hi")])).finish()
    assert run.outcomes == [] and run.engine.stats["other_flows"] == 1


def test_odd_port_and_port_filter(tmp: Path) -> None:
    t = session(tmp, tls_version="1.3")
    segs = segments(t, server=("10.0.0.2", 31337), client=("10.0.0.1", 50123))
    assert_decrypted(Run.new().keys(t.keylog).segments(segs).finish(), t)
    narrowed = Run.new(EngineConfig(ports=[443])).keys(t.keylog).segments(segs).finish()
    assert narrowed.events == [] and narrowed.engine.stats["filtered"] == len(segs)
    kept = Run.new(EngineConfig(ports=[31337])).keys(t.keylog).segments(segs).finish()
    assert_decrypted(kept, t)


def test_ipv6_frames(tmp: Path) -> None:
    t = session(tmp, tls_version="1.2", cipher="ECDHE-ECDSA-AES256-GCM-SHA384")
    segs = segments(t, client=("2001:db8::10", 40000), server=("2001:db8::443", 443))
    frames = [(s.ts, ethernet(segment_packet(s))) for s in segs]
    run = Run.new().keys(t.keylog).frames(frames).finish()
    assert_decrypted(run, t)
    assert run.outcome.flow.addr[0] == bytes.fromhex("20010db8" + "0" * 22 + "10")


@pytest.mark.parametrize("wrap", ["vlan", "qinq", "vxlan"])
def test_wrapped_frames(wrap: str, tmp: Path) -> None:
    t = session(tmp, tls_version="1.3")
    frames = []
    for s in segments(t):
        inner = ethernet(segment_packet(s))
        if wrap == "vlan":
            frame = ethernet(segment_packet(s), vlans=[100])
        elif wrap == "qinq":
            frame = ethernet(segment_packet(s), vlans=[(0x88A8, 10), 20])
        else:
            frame = ethernet(ipv4(udp(vxlan(inner, vni=7), sport=51000, dport=4789),
                                  src="192.168.0.1", dst="192.168.0.2", proto=17))
        frames.append((s.ts, frame))
    assert_decrypted(Run.new().keys(t.keylog).frames(frames).finish(), t)


def test_many_connections_in_one_engine(tmp: Path) -> None:
    """Interleaved connections of different versions: each decrypts on its own."""
    ts: Sequence[tuple[str, str | None]] = [("1.2", "ECDHE-RSA-AES128-GCM-SHA256"), ("1.3", None),
                                            ("1.2", "DHE-RSA-AES256-SHA256"), ("1.0", "AES128-SHA")]
    transcripts = [session(tmp, tls_version=v, cipher=c) for v, c in ts]
    convs = [segments(t, client=("10.0.0.1", 41000 + i), ts=1.0 + i * 0.0001)
             for i, t in enumerate(transcripts)]
    merged = sorted((s for c in convs for s in c), key=lambda s: s.ts)
    run = Run.new().keys("".join(t.keylog for t in transcripts)).segments(merged).finish()
    assert len(run.outcomes) == len(transcripts)
    for o in run.outcomes:
        t = transcripts[o.flow.port[0] - 41000]
        assert_decrypted(run, t, flow_id=o.flow.id)
