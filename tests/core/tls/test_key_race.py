"""Keys and packets race: whatever order, split, repetition and delay a session's key log lines come in
(within the key wait), the engine reports exactly the API calls it reports when the keys come first.

Real TLS sessions (OpenSSL through Python's ssl, key log from ``keylog_filename``), TLS 1.2 and 1.3,
HTTP/1.1 and HTTP/2 (an HTTP/2 client that resets a stream and sends GOAWAY after the server's
responses: released one direction after the other, those responses would be lost).
"""

from __future__ import annotations

import dataclasses
import json
import random
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import hpack
import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.pcapwriter import Pcapng, ethernet, segment_packet, tcp_conversation, write_capture
from tests.support.tlspair import TlsTranscript, run_session
from tlsmirror.calls import ApiCall
from tlsmirror.frames.events import TcpSegment
from tlsmirror.http.h2 import PREFACE
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.shell.commands import main as cli_main
from tlsmirror.tls.events import TlsOutcome

H1_REQUESTS = [
    b"POST /v1/orders HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 11\r\n\r\n{\"id\": 42}\n",
    b"GET /v1/orders/42 HTTP/1.1\r\nHost: api.example.test\r\n\r\n",
    b"GET /v1/orders/42/items HTTP/1.1\r\nHost: api.example.test\r\n\r\n",
]
H1_RESPONSES = [
    b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + bytes(range(256)) * 78 + b"x" * 32,
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n[1, 2, 3]",
]


def _h2_headers(sid: int, enc: hpack.Encoder, hdrs: list[tuple[str, str]], end: bool = False) -> bytes:
    f = HeadersFrame(sid)
    f.data = enc.encode(hdrs)
    f.flags.add("END_HEADERS")
    if end:
        f.flags.add("END_STREAM")
    return bytes(f.serialize())


def _h2_data(sid: int, payload: bytes, end: bool = False) -> bytes:
    f = DataFrame(sid, data=payload)
    if end:
        f.flags.add("END_STREAM")
    return bytes(f.serialize())


def _req(path: str, method: str = "GET") -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", "api.example.test"), (":path", path)]


def h2_conversation() -> tuple[list[bytes], list[bytes]]:
    """Three concurrent streams answered out of order, then the client cancels a fourth and leaves."""
    ce, se = hpack.Encoder(), hpack.Encoder()
    cli = PREFACE + bytes(SettingsFrame(0).serialize())
    cli += _h2_headers(1, ce, _req("/users/1"), end=True)
    cli += _h2_headers(3, ce, [*_req("/users", "POST"), ("content-type", "application/json")])
    cli += _h2_data(3, b'{"name": "ada"}', end=True)
    cli += _h2_headers(5, ce, _req("/users/2/orders"), end=True)
    cli += _h2_headers(7, ce, _req("/slow"), end=True)
    srv = bytes(SettingsFrame(0).serialize()) + bytes(SettingsFrame(0, flags=["ACK"]).serialize())
    srv += _h2_headers(3, se, [(":status", "201"), ("content-type", "application/json")])
    srv += _h2_data(3, b'{"id": 3}', end=True)
    srv += _h2_headers(5, se, [(":status", "200")]) + _h2_data(5, b"o" * 30000, end=True)
    srv += _h2_headers(1, se, [(":status", "200"), ("content-type", "application/json")])
    srv += _h2_data(1, b'{"id": 1, "name": "grace"}', end=True)
    bye = bytes(SettingsFrame(0, flags=["ACK"]).serialize())
    bye += bytes(RstStreamFrame(7, error_code=8).serialize()) + bytes(GoAwayFrame(0, last_stream_id=0).serialize())
    return [cli, bye], [srv, b""]


# name -> (TLS version, cipher, ALPN, HTTP/2)
CASES: dict[str, tuple[str, str | None, str, bool]] = {
    "tls12-h1": ("1.2", "ECDHE-RSA-AES128-GCM-SHA256", "http/1.1", False),
    "tls12-cbc-h1": ("1.2", "ECDHE-RSA-AES256-SHA", "http/1.1", False),
    "tls13-h1": ("1.3", None, "http/1.1", False),
    "tls12-h2": ("1.2", "ECDHE-RSA-CHACHA20-POLY1305", "h2", True),
    "tls13-h2": ("1.3", None, "h2", True),
}


@cache
def transcript(name: str) -> TlsTranscript:
    version, cipher, alpn, h2 = CASES[name]
    requests, responses = h2_conversation() if h2 else (H1_REQUESTS, H1_RESPONSES)
    t, _ = run_session(tls_version=version, cipher=cipher, requests=requests, responses=responses,
                       alpn=[alpn], tmpdir=Path(tempfile.mkdtemp(prefix="tlsmirror-race-")))
    return t


def key_lines(t: TlsTranscript) -> list[str]:
    return [line for line in t.keylog.splitlines() if line.strip()]


def call_view(call: ApiCall, *, alpn: bool = True) -> str:
    """Everything reported of one API call (the connection's ALPN optional, see the TLS 1.3 note)."""
    conn = call.connection
    if not alpn:
        conn = dataclasses.replace(conn, alpn=None)
    return repr((conn, call.exchange))


def feed(t: TlsTranscript, segs: list[TcpSegment], placements: dict[int, list[str]]) -> list[Any]:
    """Segments in order, with key lines given before segment i (``placements[i]``; ``len(segs)``:
    after the last one), each secret stamped with the time of the segment before it."""
    engine = Engine(EngineConfig(http=True))
    events: list[Any] = []
    for i in range(len(segs) + 1):
        lines = placements.get(i)
        if lines:
            secrets, problems = parse_keylog("\n".join(lines) + "\n")
            assert not problems
            events += engine.add_secrets(secrets, segs[i - 1].ts if i else 0.0)
        if i < len(segs):
            events += engine.feed_segment(segs[i])
    events += engine.finish()
    assert engine.tls.held_bytes == 0 and engine.sessions_waiting == 0 and not engine._waiting
    return events


@cache
def keys_first(name: str, mss: int) -> tuple[list[str], list[str]]:
    t = transcript(name)
    events = feed(t, tcp_conversation(t.flights, mss=mss), {0: key_lines(t)})
    calls = [e for e in events if type(e) is ApiCall]
    return [call_view(c) for c in calls], [call_view(c, alpn=False) for c in calls]


def test_keys_first_reports_every_call() -> None:
    for name, (_, _, _, h2) in CASES.items():
        views, _ = keys_first(name, 1460)
        complete = [v for v in views if "'reset'" not in v and "no_response" not in v]
        assert len(complete) == 3, (name, views)
        assert len(views) == (4 if h2 else 3), (name, views)  # HTTP/2: the stream the client reset


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(list(CASES)), mss=st.sampled_from([200, 1460, 1 << 16]), data=st.data())
def test_any_order_of_key_lines_gives_the_calls_of_keys_first(name: str, mss: int, data: st.DataObject) -> None:
    t = transcript(name)
    segs = tcp_conversation(t.flights, mss=mss)
    lines = key_lines(t)
    n = len(segs)
    placements: dict[int, list[str]] = {}
    first_at: dict[str, int] = {}
    # every line somewhere (before any packet, between any two, after the last), some twice
    for line in data.draw(st.permutations(lines)):
        times = data.draw(st.lists(st.integers(0, n), min_size=1, max_size=2))
        for i in times:
            placements.setdefault(i, []).append(line)
        first_at[line.split()[0]] = min(times)
    events = feed(t, segs, placements)
    calls = [e for e in events if type(e) is ApiCall]
    (outcome,) = [e for e in events if type(e) is TlsOutcome]
    assert outcome.outcome == "decrypted", outcome
    with_alpn, without_alpn = keys_first(name, mss)
    hs, app = first_at.get("SERVER_HANDSHAKE_TRAFFIC_SECRET"), first_at.get("SERVER_TRAFFIC_SECRET_0")
    if hs is None or app is None or hs <= app:
        assert [call_view(c) for c in calls] == with_alpn
    else:
        # TLS 1.3 names the ALPN in the encrypted handshake: read after application data that came first
        assert [call_view(c, alpn=False) for c in calls] == without_alpn


@pytest.mark.parametrize("name", list(CASES))
def test_keys_after_the_traffic_release_both_directions_in_capture_order(name: str) -> None:
    t = transcript(name)
    segs = tcp_conversation(t.flights)
    events = feed(t, segs, {len(segs): key_lines(t)})
    assert [call_view(c) for c in events if type(c) is ApiCall] == keys_first(name, 1460)[0]
    (outcome,) = [e for e in events if type(e) is TlsOutcome]
    assert (outcome.outcome, outcome.late_key, outcome.held) == ("decrypted", True, "unlocked")


@pytest.mark.parametrize("name", ["tls13-h1", "tls13-h2"])
def test_a_connection_that_ended_waits_for_its_last_secret(name: str) -> None:
    t = transcript(name)
    segs = tcp_conversation(t.flights)
    lines = key_lines(t)
    engine = Engine(EngineConfig(http=True, key_wait=30.0))
    events: list[Any] = []
    secrets, _ = parse_keylog("\n".join(lines[:2]) + "\n")  # the handshake secrets only
    events += engine.add_secrets(secrets, 0.0)
    for s in segs:
        events += engine.feed_segment(s)
    assert not [e for e in events if type(e) is TlsOutcome]  # ended (FIN), still waiting
    assert engine.sessions_waiting == 1
    secrets, _ = parse_keylog("\n".join(lines[2:]) + "\n")
    events += engine.add_secrets(secrets, segs[-1].ts + 5.0)  # 5 s after the FIN
    (outcome,) = [e for e in events if type(e) is TlsOutcome]
    assert outcome.outcome == "decrypted" and outcome.ts == segs[-2].ts
    assert outcome.key_lag is not None and outcome.key_lag > 5.0
    assert [call_view(c) for c in events if type(c) is ApiCall] == keys_first(name, 1460)[0]


def test_missing_secrets_are_named_when_the_wait_ends() -> None:
    t = transcript("tls13-h1")
    segs = tcp_conversation(t.flights)
    lines = [line for line in key_lines(t) if not line.startswith("SERVER_TRAFFIC_SECRET_0")]
    events = feed(t, segs, {0: lines})
    (outcome,) = [e for e in events if type(e) is TlsOutcome]
    assert outcome.outcome == "no_key" and "SERVER_TRAFFIC_SECRET_0" in outcome.reason
    assert "CLIENT_TRAFFIC_SECRET_0" not in outcome.reason and outcome.held == "expired"


# ============================================================================ pcapng secrets blocks


def _multi_capture(seed: int, tmp: Path, *, spread: bool) -> tuple[Path, int]:
    """Every case as its own connection, interleaved; each key line in its own Decryption Secrets Block,
    at a random place (30% after the last packet) when ``spread``, else all before the first packet."""
    rnd = random.Random(seed)
    segs: list[TcpSegment] = []
    lines: list[str] = []
    for i, name in enumerate(CASES):
        t = transcript(name)
        segs += tcp_conversation(t.flights, client=("10.0.0.1", 41000 + i), ts=1.0 + i * 0.0003)
        lines += key_lines(t)
    segs.sort(key=lambda s: s.ts)
    png = Pcapng().interface(1, tsresol=9)
    where: dict[int, list[str]] = {}
    for line in lines:
        at = len(segs) if spread and rnd.random() < 0.3 else (rnd.randrange(len(segs)) if spread else 0)
        where.setdefault(at, []).append(line)
    for i in range(len(segs) + 1):
        for line in where.get(i, []):
            png.secrets(line + "\n")
        if i < len(segs):
            png.packet(segs[i].ts, ethernet(segment_packet(segs[i])))
    return Path(write_capture(tmp / f"race-{seed}-{int(spread)}.pcapng", png.to_bytes())), len(lines)


def _replay(path: Path, tmp: Path) -> list[dict[str, Any]]:
    out = tmp / (path.stem + ".jsonl")
    assert cli_main(["replay", str(path), "-o", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def _view(rec: dict[str, Any]) -> str:
    rec = dict(rec)
    rec.get("tls", {}).pop("alpn", None)
    return json.dumps(rec, sort_keys=True)


@pytest.mark.parametrize("seed", range(5))
def test_pcapng_with_every_key_line_in_its_own_block_at_random_places(seed: int, tmp_path: Path) -> None:
    first, _ = _multi_capture(seed, tmp_path, spread=False)
    spread, n = _multi_capture(seed, tmp_path, spread=True)
    expected = _replay(first, tmp_path)
    got = _replay(spread, tmp_path)
    assert len(expected) == 17 and n > 10
    assert sum(1 for r in expected if r.get("status")) == 15
    assert sorted(map(_view, got)) == sorted(map(_view, expected))
