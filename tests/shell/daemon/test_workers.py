"""The worker's outbox: messages reach the parent intact and in order over a real pipe, pickled through
one reused buffer into a fixed ring, and the outbox is bounded by the bytes it holds."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import threading
from typing import Any

from tlsmirror.calls import ApiCall, Connection
from tlsmirror.http.events import Body, Exchange
from tlsmirror.shell.daemon.messages import CallBatch, WorkerStats
from tlsmirror.shell.daemon.workers import MessageBuffer, Outbox


def api_call(i: int, body: int = 300) -> ApiCall:
    conn = Connection(id=i, client_ip="10.0.0.1", client_port=40000 + i, server_ip="10.0.0.2", server_port=443,
                      tls=True, tls_version="TLS 1.3", tls_suite="TLS_AES_128_GCM_SHA256", sni="api.example")
    ex = Exchange(http_version="HTTP/1.1", method="POST", scheme="https", authority="api.example",
                  path=f"/items/{i}", status=200, reason="OK",
                  request_headers=(("host", "api.example"), ("content-type", "application/json")),
                  response_headers=(("content-type", "application/json"),), request_trailers=(),
                  response_trailers=(), request_body=Body(b"q" * body, body, body, False),
                  response_body=Body(b"r" * body, body, body, False), request_ts=1.0, request_end_ts=1.0,
                  response_ts=1.5, response_end_ts=1.5, stream_id=None, flags=frozenset())
    return ApiCall(conn, ex)


def receive(conn: Any, n: int) -> list[Any]:
    return [pickle.loads(conn.recv_bytes()) for _ in range(n)]


def test_messages_of_every_size_arrive_in_order_through_one_buffer() -> None:
    r, w = mp.Pipe(duplex=False)
    out = Outbox(w, size=64)
    sizes = [1, 40, 3, 200, 17, 90, 5]  # calls per batch: message sizes up and down
    msgs = [CallBatch(0, [api_call(i * 1000 + k) for k in range(n)]) for i, n in enumerate(sizes)]
    msgs.append(WorkerStats(0, {"packets": 12}))
    for m in msgs:
        assert out.put(m, block=True, timeout=5)
    got = receive(r, len(msgs))
    assert got == msgs
    out.close()
    assert out.sent == len(msgs) and out.pending_bytes == 0
    assert len(out.buffer.buf) == 256 << 10  # the largest message (~100 KB) fitted the first buffer


def test_a_message_larger_than_the_limit_is_sent_and_the_buffer_shrinks_back() -> None:
    r, w = mp.Pipe(duplex=False)
    out = Outbox(w, size=8)
    big = CallBatch(1, [api_call(k, body=100_000) for k in range(20)])  # ~4 MB pickled
    small = CallBatch(1, [api_call(99)])
    reader = threading.Thread(target=lambda: got.extend(receive(r, 3)))
    got: list[Any] = []
    reader.start()
    for m in (small, big, small):
        assert out.put(m, block=True, timeout=5)
    reader.join(10)
    out.close()
    assert got == [small, big, small]
    assert len(out.buffer.buf) == out.buffer.size  # not kept at the burst's 4 MB


def test_message_buffer_grows_only_past_its_size_and_keeps_what_was_written() -> None:
    b = MessageBuffer(size=16, limit=64)
    for chunk in (b"abc", b"x" * 20, b"yz"):
        b.write(chunk)
    assert bytes(b.view()) == b"abc" + b"x" * 20 + b"yz" and len(b.buf) == 32
    assert not b.reset() and b.n == 0 and len(b.buf) == 32
    b.write(b"z" * 100)
    assert b.reset() and len(b.buf) == 16


def test_outbox_is_bounded_by_bytes_and_drains_when_the_parent_reads() -> None:
    r, w = mp.Pipe(duplex=False)
    out = Outbox(w, size=1000, max_bytes=1 << 20)
    msg = CallBatch(0, [api_call(k, body=60_000) for k in range(4)])  # ~480 KB: more than the pipe takes
    size = len(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
    assert 480_000 < size < 500_000
    accepted = 0
    while out.put(msg):
        accepted += 1
        assert accepted < 10
    # the first message is being sent (the sender waits for the reader), one more fits the 1 MiB ring
    assert accepted == 2 and out.pending_bytes == 2 * size
    assert not out.put(msg, block=True, timeout=0.2)  # still full
    got = receive(r, 1)
    assert got == [msg]
    assert out.put(msg, block=True, timeout=5)  # room again once the reader took the first message
    got += receive(r, 2)
    out.close()
    assert got == [msg] * 3 and out.pending_bytes == 0 and out.qsize() == 0


def test_a_message_larger_than_the_ring_goes_alone_when_the_outbox_is_idle() -> None:
    r, w = mp.Pipe(duplex=False)
    out = Outbox(w, size=8, max_bytes=64 << 10)
    big = CallBatch(2, [api_call(k, body=50_000) for k in range(2)])  # ~200 KB
    small = WorkerStats(2, {"packets": 1})
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.extend(receive(r, 4)))
    reader.start()
    for m in (small, big, small, big):
        assert out.put(m, block=True, timeout=5)
    reader.join(10)
    out.close()
    assert got == [small, big, small, big]


def test_ring_wraps_around_and_keeps_the_order() -> None:
    r, w = mp.Pipe(duplex=False)
    out = Outbox(w, size=100, max_bytes=200 << 10)
    msgs = [CallBatch(0, [api_call(k, body=2_000 + 997 * (k % 13))] * (1 + k % 5)) for k in range(300)]
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.extend(receive(r, len(msgs))))
    reader.start()
    for m in msgs:  # ~40 MB through a 200 KiB ring
        assert out.put(m, block=True, timeout=5)
    reader.join(30)
    out.close()
    assert got == msgs and out.sent == len(msgs)
