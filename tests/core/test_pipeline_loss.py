"""Packet loss on a keep-alive connection costs the API calls in the hole, not the rest of the connection.

Real TLS (OpenSSL through Python's ssl), real HTTP/1.1 messages, one server segment dropped mid-way:
TLS finds its records again after the gap and HTTP/1 starts again at the next message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.pcapwriter import tcp_conversation
from tests.support.tlspair import run_session
from tlsmirror.calls import ApiCall
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.pipeline import Engine, EngineConfig

N = 24


def _body(i: int) -> bytes:
    return (f"{{\"item\": {i}, \"pad\": \"".encode() + b"z" * (1500 + 97 * i) + b"\"}")


REQUESTS = [f"GET /items/{i} HTTP/1.1\r\nHost: api.example.test\r\n\r\n".encode() for i in range(N)]
RESPONSES = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(_body(i))
             + _body(i) for i in range(N)]


@pytest.mark.parametrize(("version", "cipher"), [("1.3", None), ("1.2", "ECDHE-RSA-AES256-GCM-SHA384"),
                                                 ("1.2", "ECDHE-RSA-CHACHA20-POLY1305"),
                                                 ("1.2", "ECDHE-RSA-AES128-SHA256")])
def test_one_lost_segment_costs_only_the_calls_it_touched(version: str, cipher: str | None, tmp_path: Path) -> None:
    t, _ = run_session(tls_version=version, cipher=cipher, requests=REQUESTS, responses=RESPONSES, tmpdir=tmp_path)
    segs = tcp_conversation(t.flights)
    server_data = [i for i, s in enumerate(segs) if s.sport == 443 and len(s.payload) == 1460]
    del segs[server_data[len(server_data) // 2]]

    engine = Engine(EngineConfig(http=True))
    engine.add_secrets(parse_keylog(t.keylog)[0], 0.0)
    events: list[object] = []
    for seg in segs:
        events += engine.feed_segment(seg)
    events += engine.finish()
    calls = [e.exchange for e in events if isinstance(e, ApiCall)]

    assert sorted(c.path or "" for c in calls) == sorted(f"/items/{i}" for i in range(N))  # every request
    intact = [c for c in calls if not c.flags]
    hit = [c for c in calls if c.flags]
    assert 1 <= len(hit) <= 2, [(c.path, sorted(c.flags)) for c in hit]  # the one or two the hole touched
    for c in intact:
        i = int((c.path or "").rsplit("/", 1)[1])
        assert c.status == 200 and c.response_body is not None and c.response_body.data == _body(i)
    for c in hit:
        assert "gap" in c.flags
