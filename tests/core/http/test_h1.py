"""HTTP/1.x pairing (tlsmirror.http.h1 via HttpConnection): synthetic streams and real traffic."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import itertools
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsmirror.http.connection import HttpConnection
from tlsmirror.http.events import Exchange, HttpProblem

Chunks = list[tuple[int, bytes, float]]


def run(chunks: Chunks, step: int = 0, body_limit: int = 128 * 1024, alpn: str | None = None,
        close_ts: float = 99.0) -> list[Exchange | HttpProblem]:
    c = HttpConnection(alpn=alpn, body_limit=body_limit)
    out: list[Exchange | HttpProblem] = []
    for d, data, ts in chunks:
        if step:
            for i in range(0, len(data), step):
                out += c.feed(d, data[i:i + step], ts)
        else:
            out += c.feed(d, data, ts)
    out += c.close(close_ts)
    return out


def exchanges(out: list[Exchange | HttpProblem]) -> list[Exchange]:
    return [e for e in out if isinstance(e, Exchange)]


def same_whole_and_bytewise(chunks: Chunks, **kw: object) -> list[Exchange | HttpProblem]:
    whole = run(chunks, **kw)  # type: ignore[arg-type]
    assert run(chunks, step=1, **kw) == whole  # type: ignore[arg-type]
    assert run(chunks, step=7, **kw) == whole  # type: ignore[arg-type]
    return whole


REQS = (b"GET /a?x=1 HTTP/1.1\r\nHost: ex.com\r\nAccept: */*\r\nAccept: text/html\r\n\r\n"
        b"HEAD /h HTTP/1.1\r\nHost: ex.com\r\n\r\n"
        b"POST /p HTTP/1.1\r\nHost: ex.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t1\r\n\r\n"
        b"DELETE /d HTTP/1.1\r\nHost: ex.com\r\n\r\n"
        b"GET /nc HTTP/1.1\r\nHost: ex.com\r\n\r\n")
RESPS = (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
         b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\nS-T: 2\r\n\r\n"
         b"HTTP/1.1 204 No Content\r\nContent-Length: 99\r\n\r\n"
         b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")


def test_pipelined_keepalive_head_204_304_chunked_trailers() -> None:
    out = same_whole_and_bytewise([(0, REQS, 1.0), (1, RESPS, 2.0)])
    ex = exchanges(out)
    assert [(e.method, e.path, e.status) for e in ex] == [
        ("GET", "/a?x=1", 200), ("HEAD", "/h", 200), ("POST", "/p", 201), ("DELETE", "/d", 204),
        ("GET", "/nc", 304)]
    get, head, post, delete, nc = ex
    assert get.request_headers == (("Host", "ex.com"), ("Accept", "*/*"), ("Accept", "text/html"))
    assert get.authority == "ex.com" and get.scheme is None and get.http_version == "1.1"
    assert get.response_body is not None and get.response_body.data == b"abc"
    assert get.request_body is None and get.reason == "OK"
    assert head.response_body is None and head.response_headers[0] == ("Content-Length", "1000")
    assert post.request_body is not None and post.request_body.data == b"hello world"
    assert post.request_trailers == (("X-Trailer", "t1"),)
    assert post.response_body is not None and post.response_body.data == b"xyz"
    assert post.response_trailers == (("S-T", "2"),)
    assert delete.response_body is None and nc.response_body is None
    assert all(e.flags == frozenset() for e in ex)
    assert [e for e in out if isinstance(e, HttpProblem)] == []


def test_timestamps_and_read_until_close() -> None:
    out = same_whole_and_bytewise([
        (0, b"GET / HTTP/1.0\r\n", 1.0), (0, b"\r\n", 1.5),
        (1, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npart1 ", 2.0),
        (1, b"part2", 3.0)], close_ts=4.0)
    (e,) = exchanges(out)
    assert e.http_version == "1.0" and e.request_ts == 1.0 and e.request_end_ts == 1.5
    assert e.response_ts == 2.0 and e.response_end_ts == 4.0
    assert e.response_body is not None and e.response_body.data == b"part1 part2"
    assert not e.flags


def test_no_response_and_response_without_request() -> None:
    (e,) = exchanges(run([(0, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", 1.0)]))
    assert e.method == "GET" and e.status is None and "no_response" in e.flags
    (e,) = exchanges(run([(1, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 1.0)]))
    assert e.status == 404 and e.method is None and "response_without_request" in e.flags


def test_100_continue_is_interim() -> None:
    out = same_whole_and_bytewise([
        (0, b"PUT /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n", 1.0),
        (1, b"HTTP/1.1 100 Continue\r\n\r\n", 2.0),
        (0, b"data", 3.0),
        (1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 4.0)])
    (e,) = exchanges(out)
    assert e.status == 200 and e.request_body is not None and e.request_body.data == b"data"
    assert e.response_ts == 4.0 and "interim_response" in e.flags


def test_websocket_upgrade_stops_parsing_without_error() -> None:
    out = same_whole_and_bytewise([
        (0, b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 1.0),
        (1, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            b"\x81\x05hello", 2.0),
        (0, b"\x81\x85\x00\x00\x00\x00hello", 3.0)])
    assert not [e for e in out if isinstance(e, HttpProblem)]
    (e,) = exchanges(out)
    assert e.status == 101 and e.path == "/ws" and "upgrade" in e.flags


def test_refused_upgrade_keeps_http() -> None:
    out = same_whole_and_bytewise([
        (0, b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 1.0),
        (0, b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n", 1.1),
        (1, b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2.0)])
    assert [(e.path, e.status) for e in exchanges(out)] == [("/ws", 426), ("/next", 200)]


def test_connect_tunnel() -> None:
    out = same_whole_and_bytewise([
        (0, b"CONNECT api.ex.com:443 HTTP/1.1\r\nHost: api.ex.com:443\r\n\r\n", 1.0),
        (1, b"HTTP/1.1 200 Connection Established\r\n\r\n", 2.0),
        (0, b"\x16\x03\x01\x00\x05hello", 3.0), (1, b"\x16\x03\x03 binary", 4.0)])
    assert not [e for e in out if isinstance(e, HttpProblem)]
    (e,) = exchanges(out)
    assert e.method == "CONNECT" and e.authority == "api.ex.com:443" and e.path is None
    assert e.status == 200 and {"upgrade", "connect"} <= e.flags and e.response_body is None


def test_absolute_form_target() -> None:
    (e,) = exchanges(run([(0, b"GET http://ex.com:8080/p?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", 1.0),
                          (1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2.0)]))
    assert (e.scheme, e.authority, e.path) == ("http", "ex.com:8080", "/p?q=1")


def test_gzip_response_and_body_limit() -> None:
    payload = ('{"k": "välue"}' * 1000).encode()
    enc = gzip.compress(payload)
    out = same_whole_and_bytewise([
        (0, b"GET /j HTTP/1.1\r\nHost: h\r\n\r\n", 1.0),
        (1, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            + f"Content-Length: {len(enc)}\r\n\r\n".encode() + enc, 2.0)], body_limit=1001)
    (e,) = exchanges(out)
    b = e.response_body
    assert b is not None and b.size == len(payload) and b.wire_size == len(enc) and b.truncated
    assert payload.startswith(b.data) and len(b.data) <= 1001
    b.data.decode()  # not split inside a character
    assert "body_truncated" in e.flags


def test_gap_inside_content_length_body_resyncs() -> None:
    c = HttpConnection()
    out = c.feed(0, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n", 1.0)
    out += c.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", 2.0)
    out += c.gap(1, 5, 2.1)
    out += c.feed(1, b"cde", 2.2)
    out += c.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 3.0)
    out += c.close(4.0)
    first, second = exchanges(out)
    assert first.path == "/1" and "gap" in first.flags
    assert first.response_body is not None and first.response_body.data == b"ab"
    assert first.response_body.wire_size == 10 and first.response_body.truncated
    assert second.path == "/2" and second.status == 200 and not second.flags
    assert not [e for e in out if isinstance(e, HttpProblem)]


def test_gap_in_chunked_data_and_unrecoverable_gap() -> None:
    c = HttpConnection()
    out = c.feed(0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 1.0)
    out += c.feed(1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nab", 2.0)
    out += c.gap(1, 4, 2.1)
    out += c.feed(1, b"ghij\r\n0\r\n\r\n", 2.2)
    (e,) = exchanges(out)
    assert "gap" in e.flags and e.response_body is not None and e.response_body.data == b"ab"
    # a hole in a message head: that message is lost, parsing resumes at the next request line
    c = HttpConnection()
    out = c.feed(0, b"GET / HTTP/1.1\r\nHo", 1.0) + c.gap(0, 10, 1.1) + c.feed(0, b"x\r\n\r\n", 1.2)
    assert not [p for p in out if isinstance(p, HttpProblem)] and not exchanges(out)
    out = c.feed(0, b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n", 1.3)
    out += c.feed(1, b"HTTP/1.1 204 No Content\r\n\r\n", 1.4)
    (e,) = exchanges(out)
    assert (e.path, e.status) == ("/next", 204)


def test_parse_error_ends_connection_keeps_completed() -> None:
    out = run([(0, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nGET /bad HTTP/1.1\r\nHost: h\r\n\r\n", 1.0),
               (1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nNOT HTTP AT ALL\r\n\r\n", 2.0)])
    ok = exchanges(out)
    assert ok[0].path == "/ok" and ok[0].status == 200 and not ok[0].flags
    assert ok[1].path == "/bad" and "no_response" in ok[1].flags
    problems = [p for p in out if isinstance(p, HttpProblem)]
    assert len(problems) == 1 and problems[0].reason.startswith("server: llhttp")


def test_truncated_at_close() -> None:
    (e,) = exchanges(run([(0, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345", 1.0)]))
    assert {"truncated", "no_response"} <= e.flags
    assert e.request_body is not None and e.request_body.data == b"12345"


# -- property tests ------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts_c=st.lists(st.integers(0, len(REQS)), max_size=6),
       cuts_s=st.lists(st.integers(0, len(RESPS)), max_size=6))
def test_random_split_points_give_identical_exchanges(cuts_c: list[int], cuts_s: list[int]) -> None:
    def split(data: bytes, cuts: list[int], d: int, ts: float) -> Chunks:
        bounds = [0, *sorted(set(cuts)), len(data)]
        return [(d, data[a:b], ts) for a, b in itertools.pairwise(bounds) if b > a]
    expected = run([(0, REQS, 1.0), (1, RESPS, 2.0)])
    assert run(split(REQS, cuts_c, 0, 1.0) + split(RESPS, cuts_s, 1, 2.0)) == expected


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_and_random_input_only_yields_events(data: st.DataObject) -> None:
    req = bytearray(REQS)
    resp = bytearray(RESPS)
    for buf in (req, resp):
        for _ in range(data.draw(st.integers(0, 4))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] = data.draw(st.integers(0, 255))
    extra = data.draw(st.binary(max_size=64))
    out = run([(0, bytes(req), 1.0), (1, bytes(resp) + extra, 2.0)],
              step=data.draw(st.sampled_from([0, 1, 13])))
    for ev in out:
        assert isinstance(ev, (Exchange, HttpProblem))
        if isinstance(ev, HttpProblem):
            assert not ev.reason.startswith("internal error"), ev.reason


# -- real traffic: http.server + http.client / curl through a recording proxy --------------------

BIG = bytes(range(256)) * 1200  # 300 KiB, above the default body limit
JSON = ('{"name": "tlsmirror", "ok": true, "list": [1, 2, 3]}' * 50).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(JSON)))
        self.send_header("Content-Type", "application/json")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for part in (b"first ", b"second ", b"third"):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\nX-Checksum: abc\r\n\r\n")
        elif self.path == "/gzip":
            body = gzip.compress(JSON)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/empty":
            self.send_response(204)
            self.end_headers()
        elif self.path == "/cached":
            self.send_response(304)
            self.send_header("ETag", '"v1"')
            self.end_headers()
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BIG)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(BIG)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(JSON)))
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(JSON)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RecordingProxy:
    """Relays TCP connections on 127.0.0.1 to ``target`` and records both directions."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.recordings: list[Chunks] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            rec: Chunks = []
            with self.lock:
                self.recordings.append(rec)
            for d, src, dst in ((0, client, server), (1, server, client)):
                t = threading.Thread(target=self._pump, args=(d, src, dst, rec), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, d: int, src: socket.socket, dst: socket.socket, rec: Chunks) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    rec.append((d, data, time.monotonic()))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture(scope="module")
def proxy():  # type: ignore[no-untyped-def]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p = RecordingProxy(("127.0.0.1", server.server_address[1]))
    yield p
    p.close()
    server.shutdown()
    server.server_close()


def _feed_recording(rec: Chunks) -> list[Exchange | HttpProblem]:
    with_close = [*rec]
    last_ts = with_close[-1][2] if with_close else 0.0
    return run(with_close, close_ts=last_ts + 0.001)


def test_real_http_client_traffic(proxy: RecordingProxy) -> None:
    before = len(proxy.recordings)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    got: dict[str, tuple[int, bytes]] = {}
    for method, path, body in [("GET", "/json", None), ("GET", "/chunked", None),
                               ("GET", "/gzip", None), ("HEAD", "/json", None),
                               ("GET", "/empty", None), ("GET", "/cached", None),
                               ("POST", "/echo?x=1", b"posted body"), ("GET", "/big", None)]:
        conn.request(method, path, body=body, headers={"X-Test": "1"})
        r = conn.getresponse()
        got[f"{method} {path}"] = (r.status, r.read())
    conn.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with proxy.lock:
            recs = proxy.recordings[before:]
            if recs and sum(len(d) for _, d, _ in recs[0]) > len(BIG):
                break
        time.sleep(0.01)
    time.sleep(0.1)
    (rec,) = proxy.recordings[before:]
    out = _feed_recording(rec)
    assert not [e for e in out if isinstance(e, HttpProblem)]
    ex = exchanges(out)
    assert [f"{e.method} {e.path}" for e in ex] == list(got)
    for e in ex:
        status, body = got[f"{e.method} {e.path}"]
        assert e.status == status and e.authority == f"127.0.0.1:{proxy.port}"
        assert ("X-Test", "1") in e.request_headers
        assert e.request_ts is not None and e.response_end_ts is not None
        assert e.request_ts <= e.response_end_ts
        if e.method == "HEAD" or e.status in (204, 304):
            assert e.response_body is None
        elif e.path == "/gzip":
            assert e.response_body is not None and e.response_body.data == JSON
            assert body == gzip.compress(JSON) or gzip.decompress(body) == JSON
        elif e.path == "/big":
            b = e.response_body
            assert b is not None and b.size == len(BIG) and b.data == BIG[:128 * 1024] and b.truncated
        else:
            assert e.response_body is not None and e.response_body.data == body
    chunked = ex[1]
    assert chunked.response_trailers == (("X-Checksum", "abc"),)
    post = ex[6]
    assert post.request_body is not None and post.request_body.data == b"posted body"
    # the same recording, byte by byte, gives the same exchanges
    bytewise: Chunks = [(d, data[i:i + 1], ts) for d, data, ts in rec for i in range(len(data))]
    assert _feed_recording(bytewise) == out


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not on PATH")
def test_real_curl_traffic(proxy: RecordingProxy) -> None:
    before = len(proxy.recordings)
    url = f"http://127.0.0.1:{proxy.port}"
    res = subprocess.run(["curl", "-sS", "--compressed", "-o", "/dev/null", f"{url}/gzip",
                          "-o", "/dev/null", f"{url}/chunked", "--next", "-d", "a=1&b=2",
                          "-o", "/dev/null", f"{url}/form"],
                         capture_output=True, timeout=20, check=False)
    assert res.returncode == 0, res.stderr
    time.sleep(0.2)
    recs = proxy.recordings[before:]
    ex: list[Exchange] = []
    for rec in recs:
        out = _feed_recording(rec)
        assert not [e for e in out if isinstance(e, HttpProblem)]
        ex += exchanges(out)
    by_path = {e.path: e for e in ex}
    assert by_path["/gzip"].response_body is not None
    assert by_path["/gzip"].response_body.data == JSON
    assert any(k.lower() == "user-agent" and v.startswith("curl/")
               for k, v in by_path["/gzip"].request_headers)
    assert by_path["/chunked"].response_body is not None
    assert by_path["/chunked"].response_body.data == b"first second third"
    form = by_path["/form"]
    assert form.method == "POST" and form.request_body is not None
    assert form.request_body.data == b"a=1&b=2" and form.status == 201


def test_keep_alive_after_a_server_gap_pairs_by_time() -> None:
    """A response lost in a hole: the next response answers the newest request sent before it."""
    c = HttpConnection()
    out = c.feed(0, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", 1.0)
    out += c.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1.5)
    out += c.feed(0, b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n", 2.0)
    out += c.feed(1, b"HTTP/1.1 200 OK\r\nContent-Len", 2.5)  # the response to /b, cut by a hole
    out += c.gap(1, 300, 2.6)
    out += c.feed(1, b"xxxxxx lost tail of /b's body", 2.7)
    out += c.feed(0, b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n", 4.0)
    out += c.feed(1, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 5.0)
    out += c.close(6.0)
    got = {(e.path, e.status, "no_response" in e.flags) for e in exchanges(out)}
    assert got == {("/a", 200, False), ("/b", None, True), ("/c", 404, False)}
    assert not [p for p in out if isinstance(p, HttpProblem)]


def test_client_gap_loses_only_the_request_in_the_hole() -> None:
    c = HttpConnection()
    out = c.feed(0, b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\nabc", 1.0)
    out += c.gap(0, 6000, 1.1)  # the rest of /a's body and the start of the next request
    out += c.feed(1, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 1.5)
    out += c.feed(0, b"tail of something\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n", 2.0)
    out += c.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2.5)
    out += c.close(3.0)
    ex = exchanges(out)
    assert [(e.path, e.status) for e in ex] == [("/a", 201), ("/b", 200)]
    assert "gap" in ex[0].flags and ex[0].request_body is not None and ex[0].request_body.wire_size == 5000


def test_field_text_utf8_and_latin1_per_field() -> None:
    """Fields are UTF-8 where they can be; a field that is not (Latin-1 on the wire) is read as Latin-1."""
    out = same_whole_and_bytewise([
        (0, "GET /u HTTP/1.1\r\nHost: h\r\nX-Name: caf\u00e9\r\nX-Empty:\r\n\r\n".encode(), 1.0),
        (1, b"HTTP/1.1 200 OK\r\nX-Old: caf\xe9\r\nX-New: \xe2\x9c\x93\r\nContent-Length: 0\r\n\r\n", 2.0),
    ])
    (ex,) = exchanges(out)
    assert ex.request_headers == (("Host", "h"), ("X-Name", "caf\u00e9"), ("X-Empty", ""))
    assert ex.response_headers == (("X-Old", "caf\u00e9"), ("X-New", "\u2713"), ("Content-Length", "0"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(eols=st.lists(st.sampled_from(["\r\n", "\n"]), min_size=16, max_size=16), step=st.sampled_from([0, 1, 5]))
def test_lf_only_line_ends_read_like_crlf(eols: list[str], step: int) -> None:
    """Heads with any mix of LF and CRLF line ends give the exchanges their CRLF forms give."""
    it = iter(eols)

    def msg(lines: list[str], body: str = "") -> bytes:
        return ("".join(line + next(it) for line in lines) + next(it) + body).encode()

    req = (msg(["GET /a HTTP/1.1", "Host: h", "X-A: 1"])
           + msg(["POST /b HTTP/1.1", "Host: h", "Content-Length: 2"], "ok"))
    resp = (msg(["HTTP/1.1 200 OK", "Content-Length: 3"], "abc") + msg(["HTTP/1.1 204 No Content"]))

    def crlf(data: bytes) -> bytes:
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def fields(out: list[Exchange | HttpProblem]) -> list[tuple[object, ...]]:
        return [(e.method, e.path, e.status, e.request_headers, e.response_headers,
                 e.response_body.data if e.response_body else None) for e in exchanges(out)]

    want = fields(run([(0, crlf(req), 1.0), (1, crlf(resp), 2.0)]))
    got = run([(0, req, 1.0), (1, resp, 2.0)], step=step)
    assert fields(got) == want and len(want) == 2


def test_header_names_any_case_and_many_distinct_names() -> None:
    """Framing fields are found in any case, also among many distinct names."""
    conn = HttpConnection()
    names = "".join(f"X-Field-{i}: v\r\n" for i in range(1500))
    req = (f"POST /a HTTP/1.1\r\nHost: h\r\n{names}CONTENT-LENGTH: 2\r\n\r\nok"
           "POST /b HTTP/1.1\r\nHost: h\r\ncontent-length: 3\r\n\r\nabc").encode()
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh: 2\r\n\r\nyz"
    out = conn.feed(0, req, 1.0) + conn.feed(1, resp, 2.0) + conn.close(3.0)
    exs = [e for e in out if isinstance(e, Exchange)]
    assert [(e.path, e.request_body.data if e.request_body else None, e.response_body.data if e.response_body else None)
            for e in exs] == [("/a", b"ok", b"x"), ("/b", b"abc", b"yz")]


def test_transfer_encoding_before_content_length_and_http10_versions() -> None:
    """llhttp refuses Transfer-Encoding with Content-Length unless lenient (the field order matters: with
    TE first it refuses at the CL field, also in a head that is still incomplete): such heads are parsed
    again leniently, whole or byte by byte, and chunked wins. Versions read from the bytes: 1.0 and 1.1."""
    reqs = (b"POST /te HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
            b"GET /old HTTP/1.0\r\nHost: h\r\n\r\n")
    resps = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1000\r\n\r\n2\r\nok\r\n0\r\n\r\n"
             b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx")
    ex = exchanges(same_whole_and_bytewise([(0, reqs, 1.0), (1, resps, 2.0)]))
    assert [(e.method, e.path, e.status, e.http_version) for e in ex] == [
        ("POST", "/te", 200, "1.1"), ("GET", "/old", 200, "1.0")]
    assert ex[0].request_body is not None and ex[0].request_body.data == b"abc"
    assert ex[0].response_body is not None and ex[0].response_body.data == b"ok"
