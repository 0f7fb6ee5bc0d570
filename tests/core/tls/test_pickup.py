"""Mid-stream pickup: a connection whose handshake this engine never saw is decrypted from where its capture
starts, with the key log's secrets (TLS 1.3) or with the handshake facts a first engine emitted (TLS 1.2).

Real TLS sessions (OpenSSL through Python's ssl, key log from ``keylog_filename``): the capture of the
second engine starts after the handshake (and the first exchanges), without SYN.
"""

from __future__ import annotations

import tempfile
import time
from functools import cache
from pathlib import Path

import hpack
import pytest
from hyperframe.frame import HeadersFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.tls.test_key_race import _h2_data, _h2_headers
from tests.support.pcapwriter import tcp_conversation
from tests.support.tlspair import TlsTranscript, run_session
from tests.support.tlsruns import NATIVE, Run
from tlsmirror.calls import ApiCall
from tlsmirror.frames.events import ACK, PSH, TcpSegment
from tlsmirror.http.h2 import PREFACE
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.record import call_to_dict
from tlsmirror.tls.events import HandshakeFacts, TlsOutcome
from tlsmirror.tls.session import PICKUP_MAX_SECRETS
from tlsmirror.tls.suites import suite_for

N = 6  # request/response pairs per session
REQUESTS = [b"GET /v1/items/%d HTTP/1.1\r\nHost: api.example.test\r\n\r\n" % i for i in range(N - 1)] + [
    b"POST /v1/items HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 11\r\n\r\n{\"id\": 42}\n"]
RESPONSES = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"n\": %d}" % i
             for i in range(N - 1)] + [b"HTTP/1.1 201 Created\r\nContent-Length: 40000\r\n\r\n" + b"x" * 40000]
HANDSHAKE_FLIGHTS = 4  # TLS 1.2 and 1.3 alike (1.3: the server's tickets are the fourth)

# name -> (TLS version, OpenSSL cipher, ALPN)
CASES = {
    "tls13": ("1.3", None, "http/1.1"),
    "tls12-gcm": ("1.2", "ECDHE-RSA-AES128-GCM-SHA256", "http/1.1"),
    "tls12-cbc": ("1.2", "ECDHE-RSA-AES256-SHA", "http/1.1"),
    "tls12-cbc-no-etm": ("1.2", "ECDHE-RSA-AES128-SHA256", "http/1.1"),
    "tls12-chacha": ("1.2", "ECDHE-RSA-CHACHA20-POLY1305", "http/1.1"),
}


@cache
def transcript(name: str) -> TlsTranscript:
    version, cipher, alpn = CASES[name]
    t, _ = run_session(tls_version=version, cipher=cipher, requests=REQUESTS, responses=RESPONSES, alpn=[alpn],
                       tmpdir=Path(tempfile.mkdtemp(prefix="tlsmirror-pickup-")),
                       encrypt_then_mac=name != "tls12-cbc-no-etm")
    assert len(t.flights) == HANDSHAKE_FLIGHTS + 2 * N + 2, [(d, len(b)) for d, b in t.flights]
    return t


def first_run(t: TlsTranscript) -> Run:
    """The engine that saw the whole connection, handshake included."""
    return Run.new(EngineConfig(http=True)).keys(t.keylog).segments(tcp_conversation(t.flights)).finish()


def cut(t: TlsTranscript, exchanges: int, **kw: object) -> list[TcpSegment]:
    """The connection's segments after the handshake and the first ``exchanges`` request/response pairs,
    no SYN (the capture starts there)."""
    return tcp_conversation(t.flights[HANDSHAKE_FLIGHTS + 2 * exchanges:], handshake=False, **kw)  # type: ignore[arg-type]


def second_run(t: TlsTranscript, segs: list[TcpSegment], facts: list[HandshakeFacts] | None = None,
               keylog: str | None = None) -> Run:
    run = Run.new(EngineConfig(http=True)).keys(t.keylog if keylog is None else keylog)
    if facts:
        run.engine.add_facts(facts)
    return run.segments(segs).finish()


def views(run: Run) -> list[tuple[str | None, str | None, int | None, list[str]]]:
    return [(c.exchange.method, c.exchange.path, c.exchange.status, sorted(c.exchange.flags))
            for c in run.of(ApiCall)]


def expected(skip: int) -> list[tuple[str | None, str | None, int | None, list[str]]]:
    out: list[tuple[str | None, str | None, int | None, list[str]]] = []
    for i in range(skip, N):
        method, path = REQUESTS[i].split(b" ")[:2]
        status = int(RESPONSES[i].split(b" ")[1])
        out.append((method.decode(), path.decode(), status, ["picked_up"]))
    return out


def test_the_tls_stage_emits_the_facts_of_each_handshake() -> None:
    for name in ("tls12-gcm", "tls12-cbc", "tls13"):
        t = transcript(name)
        run = first_run(t)
        *_, facts = emitted = run.of(HandshakeFacts)  # TLS 1.3: again once the ALPN came (EncryptedExtensions)
        assert len(emitted) == (2 if name == "tls13" else 1)
        assert facts.client_random == t.client_random
        assert (facts.client_addr, facts.client_port, facts.server_addr, facts.server_port) == (
            bytes([10, 0, 0, 1]), 40000, bytes([10, 0, 0, 2]), 443)
        assert facts.version == (0x0304 if name == "tls13" else 0x0303)
        assert suite_for(facts.suite).name == run.outcome.suite
        if name == "tls12-cbc":
            assert facts.extended_master_secret and facts.encrypt_then_mac
        assert facts.alpn == "http/1.1" and emitted[0].alpn == ("http/1.1" if name != "tls13" else None)
        assert facts.sni == "api.example.test" == run.outcome.sni
        assert "picked_up" not in str(views(run)) and not run.outcome.picked_up
        assert run.engine.stats["picked_up"] == 0
        assert len(run.of(ApiCall)) == N


@pytest.mark.parametrize("name", ["tls12-gcm", "tls12-cbc", "tls12-cbc-no-etm", "tls12-chacha"])
def test_tls12_is_picked_up_from_the_facts_of_the_engine_that_saw_the_handshake(name: str) -> None:
    t = transcript(name)
    facts = first_run(t).of(HandshakeFacts)
    run = second_run(t, cut(t, 2), facts)
    assert views(run) == expected(2)
    out = run.outcome
    assert (out.outcome, out.picked_up, out.version, out.alpn) == ("decrypted", True, "TLS1.2", "http/1.1")
    assert run.engine.stats["picked_up"] == 1
    # the server name and ALPN of the facts, as the engine that saw the ClientHello reports them
    first = first_run(t).of(ApiCall)[0].connection
    for call in run.of(ApiCall):
        conn = call.connection
        assert (conn.sni, conn.alpn, conn.tls_version, conn.tls_suite) == (
            "api.example.test", "http/1.1", first.tls_version, first.tls_suite)
        assert call_to_dict(call)["tls"] == call_to_dict(first_run(t).of(ApiCall)[0])["tls"]
    assert out.sni == "api.example.test"
    assert run.plaintext()[1].endswith(b"x" * 40000)


def test_tls12_without_facts_is_no_handshake_as_before() -> None:
    t = transcript("tls12-gcm")
    run = second_run(t, cut(t, 2))
    assert run.of(ApiCall) == []
    assert (run.outcome.outcome, run.outcome.picked_up) == ("no_handshake", False)
    assert run.engine.stats["picked_up"] == 0


@pytest.mark.parametrize("with_facts", [False, True])
def test_tls13_is_picked_up_from_the_key_log(with_facts: bool) -> None:
    t = transcript("tls13")
    facts = first_run(t).of(HandshakeFacts) if with_facts else None
    for skip in (0, 1, 4):
        run = second_run(t, cut(t, skip), facts)
        assert views(run) == expected(skip), skip
        out = run.outcome
        assert (out.outcome, out.picked_up, out.version, out.records_failed) == ("decrypted", True, "TLS1.3", 0)
        assert run.engine.stats["picked_up"] == 1
        # the server name comes with the facts; without them it was in the ClientHello only
        want = "api.example.test" if with_facts else None
        assert out.sni == want and {c.connection.sni for c in run.of(ApiCall)} == {want}


def test_the_capture_may_start_with_the_server_and_ports_that_do_not_say_who_the_client_is() -> None:
    """The first record is a response, the ports are both high: the roles are found by the pickup."""
    for name in ("tls13", "tls12-cbc"):
        t = transcript(name)
        facts = first_run(t).of(HandshakeFacts)
        moved = [HandshakeFacts(f.client_addr, 40000, f.server_addr, 50443, f.client_random, f.server_random,
                                f.version, f.suite, f.extended_master_secret, f.encrypt_then_mac, f.alpn)
                 for f in facts]
        # from the response of exchange 2 on: the response comes first, its request is not seen
        segs = tcp_conversation(t.flights[HANDSHAKE_FLIGHTS + 5:], handshake=False,
                                client=("10.0.0.1", 40000), server=("10.0.0.2", 50443))
        first = segs[0]
        assert (first.sport, first.flags) == (50443, ACK | PSH)
        run = second_run(t, segs, moved if name != "tls13" else None)
        got = views(run)
        assert got[0][:3] == (None, None, 200) and "response_without_request" in got[0][3], got
        assert got[1:] == expected(3), got
        conn = run.of(ApiCall)[-1].connection
        assert (conn.client_port, conn.server_port) == (40000, 50443)
        assert run.outcome.picked_up


def test_tls13_after_a_key_update_is_picked_up_with_the_facts() -> None:
    if not NATIVE:
        pytest.skip("no ctypes route to OpenSSL's SSL_key_update")
    t, _ = run_session(tls_version="1.3", requests=REQUESTS, responses=RESPONSES, alpn=["http/1.1"],
                       key_update=True, tmpdir=Path(tempfile.mkdtemp(prefix="tlsmirror-pickup-")))
    facts = Run.new(EngineConfig(http=True)).keys(t.keylog).segments(tcp_conversation(t.flights)).finish()
    got = facts.of(HandshakeFacts)
    # the KeyUpdate flights come before the first request: cut after the second exchange
    segs = tcp_conversation(t.flights[-(2 * (N - 2) + 2):], handshake=False)
    run = second_run(t, segs, got)
    assert views(run) == expected(2)


def test_too_many_unused_secrets_are_not_tried() -> None:
    t = transcript("tls13")
    noise = "".join(f"CLIENT_TRAFFIC_SECRET_0 {i:064x} {'ab' * 48}\n" for i in range(1, PICKUP_MAX_SECRETS + 1))
    run = second_run(t, cut(t, 2), keylog=t.keylog + noise)
    assert run.of(ApiCall) == []
    assert (run.outcome.outcome, run.engine.stats["picked_up"]) == ("no_handshake", 0)


def test_a_connection_whose_flow_was_lost_is_picked_up_again_from_the_facts_the_engine_kept() -> None:
    """The engine saw the handshake, then lost the flow (ended here as if evicted) while the connection
    went on: its later packets make a new flow, picked up with the facts of the first one."""
    t = transcript("tls12-gcm")
    run = Run.new(EngineConfig(http=True)).keys(t.keylog)
    run.segments(tcp_conversation(t.flights[:HANDSHAKE_FLIGHTS + 2], close=False))
    run.engine.finish()  # the flow is lost (as if evicted); the connection goes on
    run.events = []
    late = tcp_conversation(t.flights[HANDSHAKE_FLIGHTS + 2:], handshake=False, ts=5.0)
    run.segments(late).finish()
    assert views(run) == expected(1)


# ---------------------------------------------------------------------------------------------- HTTP/2

def h2_flights() -> tuple[list[bytes], list[bytes]]:
    """Stream 1 before the cut fills both HPACK tables; after it, stream 3 reuses a dynamic entry
    (unrecoverable), stream 5 sends only static and literal-not-indexed fields (decodable)."""
    ce, se = hpack.Encoder(), hpack.Encoder()
    settings_frame = bytes.fromhex("000000040000000000")
    settings_ack = bytes.fromhex("000000040100000000")
    req = [(":method", "GET"), (":scheme", "https"), (":authority", "api.example.test"), (":path", "/users/1"),
           ("x-tenant", "blue")]
    cli = [PREFACE + settings_frame + _h2_headers(1, ce, req, end=True)]
    srv = [settings_frame + settings_ack + _h2_headers(1, se, [(":status", "200"), ("x-tenant", "blue")])
           + _h2_data(1, b'{"id": 1}', end=True)]
    cli.append(settings_ack + _h2_headers(3, ce, [(":method", "GET"), (":scheme", "https"),
                                                    (":authority", "api.example.test"), (":path", "/users/3"),
                                                    ("x-tenant", "blue")], end=True))
    srv.append(_h2_headers(3, se, [(":status", "200")]) + _h2_data(3, b'{"id": 3}', end=True))
    # static entries and literals without indexing only (static names: 1 :authority, 4 :path, 31 content-type)
    block = bytes([0x83, 0x87]) + _literal(1, b"api.example.test") + _literal(4, b"/users") + _literal(
        31, b"application/json")
    frame = HeadersFrame(5, data=block, flags=["END_HEADERS"])
    cli.append(bytes(frame.serialize()) + _h2_data(5, b'{"name": "ada"}', end=True))
    srv.append(_h2_headers(5, se, [(":status", "201")]) + _h2_data(5, b'{"id": 5}', end=True))
    return cli, srv


def _literal(name_index: int, value: bytes) -> bytes:
    """An HPACK literal field without indexing, the name from the static table (RFC 7541 6.2.2)."""
    head = bytes([name_index]) if name_index < 15 else bytes([15, name_index - 15])
    assert len(value) < 127
    return head + bytes([len(value)]) + value


@cache
def h2_transcript(version: str) -> TlsTranscript:
    cli, srv = h2_flights()
    cipher = "ECDHE-RSA-AES128-GCM-SHA256" if version == "1.2" else None
    t, _ = run_session(tls_version=version, cipher=cipher, requests=cli, responses=srv, alpn=["h2"],
                       tmpdir=Path(tempfile.mkdtemp(prefix="tlsmirror-pickup-")))
    return t


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_h2_streams_whose_headers_decode_are_reported_the_rest_flagged(version: str) -> None:
    t = h2_transcript(version)
    facts = first_run(t).of(HandshakeFacts) if version == "1.2" else None
    assert len(first_run(t).of(ApiCall)) == 3
    run = second_run(t, tcp_conversation(t.flights[HANDSHAKE_FLIGHTS + 2:], handshake=False), facts)
    calls = {c.exchange.stream_id: c.exchange for c in run.of(ApiCall)}
    assert sorted(calls) == [3, 5]
    s3, s5 = calls[3], calls[5]
    # stream 3: what decodes is exact, the field from the table before the cut is missing, never invented
    assert "partial_headers" in s3.flags and "picked_up" in s3.flags
    assert (s3.method, s3.path, s3.status) == ("GET", "/users/3", 200)
    assert ("x-tenant", "blue") not in s3.request_headers
    # stream 5: everything decodes
    assert sorted(s5.flags) == ["picked_up"]
    assert (s5.method, s5.path, s5.authority, s5.status) == ("POST", "/users", "api.example.test", 201)
    assert s5.request_body is not None and s5.request_body.data == b'{"name": "ada"}'
    assert run.outcome.picked_up


# ---------------------------------------------------------------------------------------------- garbage

@cache
def garbage_facts() -> list[HandshakeFacts]:
    return first_run(transcript("tls13")).of(HandshakeFacts) + first_run(transcript("tls12-gcm")).of(HandshakeFacts)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.tuples(st.integers(0, 1), st.binary(min_size=1, max_size=3000)), min_size=1,
                       max_size=12),
       header=st.booleans(), facts=st.booleans())
def test_garbage_mid_stream_never_crashes_never_hangs(chunks: list[tuple[int, bytes]], header: bool,
                                                       facts: bool) -> None:
    t = transcript("tls13")
    known = garbage_facts()
    if header:  # make it look like application data records, so that pickup trials run
        chunks = [(d, b"\x17\x03\x03" + len(b).to_bytes(2, "big") + b) for d, b in chunks]
    engine = Engine(EngineConfig(http=True))
    run = Run(engine).keys(t.keylog + transcript("tls12-gcm").keylog)
    if facts:
        engine.add_facts(known[:1] if chunks[0][0] else known[1:])
    start = time.process_time()
    run.segments(tcp_conversation(chunks, handshake=False)).finish()
    assert time.process_time() - start < 20
    assert run.engine.stats["picked_up"] == 0
    assert all(not o.picked_up for o in run.of(TlsOutcome))


@pytest.mark.parametrize("name", ["tls12-gcm", "tls12-cbc", "tls13"])
def test_a_capture_that_starts_mid_record_finds_the_framing_with_the_facts(name: str) -> None:
    """The first segment of each direction is missing: both start inside a record. The facts say the flow
    is TLS; the session finds two record headers in a row, then picks the connection up."""
    t = transcript(name)
    facts = first_run(t).of(HandshakeFacts)
    segs = cut(t, 2, mss=40)
    firsts = {next(i for i, s in enumerate(segs) if s.sport == port) for port in (40000, 443)}
    segs = [s for i, s in enumerate(segs) if i not in firsts]
    run = second_run(t, segs, facts)
    got = views(run)
    # exchange 2 lost its request's first bytes; the ones after it are whole
    assert got[-3:] == expected(3), got
    assert all("picked_up" in v[3] for v in got)
    out = run.outcome
    assert (out.outcome, out.picked_up, out.records_failed) == ("decrypted", True, 0), out
    # without the facts the flow does not even look like TLS: nothing is invented
    assert second_run(t, segs).of(ApiCall) == []


def test_a_connection_that_never_matches_gives_up_and_is_no_handshake() -> None:
    """The key log has unused TLS 1.3 secrets, none of this connection: every trial fails, within the
    budget, and the connection is reported as before (no_handshake), its bytes never shown."""
    t = transcript("tls13")
    other = h2_transcript("1.3")
    start = time.process_time()
    run = second_run(t, cut(t, 0), keylog=other.keylog)
    assert time.process_time() - start < 10
    assert run.of(ApiCall) == [] and run.plaintext() == (b"", b"")
    assert (run.outcome.outcome, run.outcome.picked_up, run.engine.stats["picked_up"]) == ("no_handshake", False, 0)
