"""Server-sent events end to end: a real event-stream server (HTTP/1.1 chunked, events sent 0.15 s apart)
behind the TLS terminator, a real client on a keep-alive connection, captured and replayed: every event with
its id, type, data and the time of the packet that completed it; the next call on the connection intact."""

from __future__ import annotations

import http.client
import itertools
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.sniff import Sniffer, tcpdump_usable
from tests.support.tlsterm import TlsTerminator
from tlsmirror.shell.commands import main as cli_main

pytestmark = pytest.mark.slow

EVENTS = [(str(i), "tick" if i % 2 else None, json.dumps({"n": i, "pad": "x" * (i * 150)})) for i in range(6)]


class _Events(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path == "/after":
            body = b'{"ok":true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(b": hello\n\nretry: 1000\n\n")
        for ev_id, ev_type, data in EVENTS:
            time.sleep(0.15)
            text = f"id: {ev_id}\n" + (f"event: {ev_type}\n" if ev_type else "") + f"data: {data}\n\n"
            self._chunk(text.encode())
        self.wfile.write(b"0\r\n\r\n")


def test_event_stream_events_with_times(tmp_path: Path) -> None:
    why = tcpdump_usable()
    if why:
        pytest.skip(why)
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Events)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    keylog = tmp_path / "keys.log"
    keylog.touch()
    pcap = tmp_path / "sse.pcap"
    try:
        with TlsTerminator(backend.server_address[1], keylog, alpn=["http/1.1"]) as term, \
                Sniffer(str(pcap), term.port):
            ctx = ssl.create_default_context(cadata=term.cert_pem.decode())
            conn = http.client.HTTPSConnection("localhost", term.port, context=ctx, timeout=10)
            conn.request("GET", "/events", headers={"Accept": "text/event-stream"})
            assert b"id: 5" in conn.getresponse().read()
            conn.request("GET", "/after")
            assert conn.getresponse().read() == b'{"ok":true}'
            conn.close()
    finally:
        backend.shutdown()
    out = tmp_path / "calls.jsonl"
    assert cli_main(["replay", str(pcap), "--keylog", str(keylog), "-o", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == ["/events", "/after"]
    sse = records[0]["sse"]
    assert (sse["events"], sse["last_id"], sse["complete"], sse["flags"]) == (6, "5", True, [])
    got = [(e["id"], e["event"], e["data"]) for e in sse["list"]]
    assert got == EVENTS
    assert [e["data_size"] for e in sse["list"]] == [len(d) for _, _, d in EVENTS]
    times = [e["ts"] for e in sse["list"]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.1 < g < 1.0 for g in gaps), gaps
    assert records[0]["response_start_ts"] < times[0] <= records[0]["response_end_ts"]
    assert "sse" not in records[1] and records[1]["status"] == 200
