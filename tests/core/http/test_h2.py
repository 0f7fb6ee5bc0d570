"""HTTP/2 (tlsmirror.http.h2 via HttpConnection), with frames from hyperframe and a real hpack.Encoder."""

from __future__ import annotations

import gzip
import itertools

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsmirror.http.connection import HttpConnection
from tlsmirror.http.events import Exchange, HttpProblem
from tlsmirror.http.h2 import PREFACE, PartialHpack

Chunks = list[tuple[int, bytes, float]]


def run(chunks: Chunks, step: int = 0, alpn: str | None = "h2",
        body_limit: int = 128 * 1024) -> list[Exchange | HttpProblem]:
    c = HttpConnection(alpn=alpn, body_limit=body_limit)
    out: list[Exchange | HttpProblem] = []
    for d, data, ts in chunks:
        if step:
            for i in range(0, len(data), step):
                out += c.feed(d, data[i:i + step], ts)
        else:
            out += c.feed(d, data, ts)
    return out + c.close(99.0)


def exchanges(out: list[Exchange | HttpProblem]) -> dict[int | None, Exchange]:
    return {e.stream_id: e for e in out if isinstance(e, Exchange)}


def headers(sid: int, enc: hpack.Encoder, hdrs: list[tuple[str, str]], end: bool = False,
            pad: int = 0, priority: bool = False) -> bytes:
    f = HeadersFrame(sid)
    f.data = enc.encode(hdrs)
    f.flags.add("END_HEADERS")
    if end:
        f.flags.add("END_STREAM")
    if pad:
        f.flags.add("PADDED")
        f.pad_length = pad
    if priority:
        f.flags.add("PRIORITY")
        f.depends_on, f.stream_weight = 0, 15
    return bytes(f.serialize())


def data(sid: int, payload: bytes, end: bool = False, pad: int = 0) -> bytes:
    f = DataFrame(sid)
    f.data = payload
    if end:
        f.flags.add("END_STREAM")
    if pad:
        f.flags.add("PADDED")
        f.pad_length = pad
    return bytes(f.serialize())


def req(path: str, method: str = "GET", extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", "api.ex.com"),
            (":path", path), *(extra or [])]


def conversation() -> tuple[bytes, bytes]:
    ce, se = hpack.Encoder(), hpack.Encoder()
    gz = gzip.compress(b'{"answer": 42}' * 20)
    cli = PREFACE + bytes(SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: 8192}).serialize())
    cli += headers(1, ce, req("/a?q=1", extra=[("user-agent", "t/1"), ("accept", "a"), ("accept", "b")]),
                   end=True, priority=True)
    cli += headers(3, ce, req("/upload", "POST", [("content-type", "application/json")]))
    cli += data(3, b'{"x":', pad=4) + data(3, b"1}") + data(3, b"", end=True)
    cli += headers(5, ce, req("/grpc", "POST", [("te", "trailers")]))
    cli += data(5, b"\x00\x00\x00\x00\x01z") + headers(5, ce, [("x-req-trailer", "1")], end=True)
    cli += headers(7, ce, req("/reset"), end=True)
    cli += bytes(WindowUpdateFrame(0, window_increment=1000).serialize())
    cli += bytes(PingFrame(0, opaque_data=b"12345678").serialize())
    cli += bytes(PriorityFrame(3, depends_on=1).serialize())
    srv = bytes(SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100}).serialize())
    srv += bytes(SettingsFrame(0, flags=["ACK"]).serialize())
    srv += headers(3, se, [(":status", "100")])
    srv += headers(3, se, [(":status", "201"), ("content-encoding", "gzip")], pad=3)
    srv += data(3, gz[:10]) + data(3, gz[10:], end=True)
    srv += headers(1, se, [(":status", "200"), ("content-type", "text/plain")])
    pp = PushPromiseFrame(1, promised_stream_id=2)
    pp.data = se.encode(req("/pushed.css"))
    pp.flags.add("END_HEADERS")
    srv += bytes(pp.serialize())
    srv += data(1, b"hello ") + data(1, b"world", end=True)
    srv += headers(2, se, [(":status", "200")]) + data(2, b"css", end=True)
    srv += headers(5, se, [(":status", "200"), ("content-type", "application/grpc")])
    srv += data(5, b"\x00\x00\x00\x00\x01y") + headers(5, se, [("grpc-status", "0")], end=True)
    srv += bytes(RstStreamFrame(7, error_code=8).serialize())
    srv += bytes(GoAwayFrame(0, last_stream_id=7).serialize())
    return cli, srv


def test_full_conversation() -> None:
    cli, srv = conversation()
    out = run([(0, cli, 1.0), (1, srv, 2.0)])
    assert not [e for e in out if isinstance(e, HttpProblem)]
    ex = exchanges(out)
    assert sorted(ex) == [1, 2, 3, 5, 7]
    a = ex[1]
    assert (a.method, a.scheme, a.authority, a.path, a.status) == (
        "GET", "https", "api.ex.com", "/a?q=1", 200)
    assert a.request_headers == (("user-agent", "t/1"), ("accept", "a"), ("accept", "b"))
    assert a.response_headers == (("content-type", "text/plain"),) and a.http_version == "2"
    assert a.response_body is not None and a.response_body.data == b"hello world" and not a.flags
    up = ex[3]
    assert up.request_body is not None and up.request_body.data == b'{"x":1}'
    assert up.response_body is not None and up.response_body.data == b'{"answer": 42}' * 20
    assert up.status == 201 and "interim_response" in up.flags
    assert ex[2].path == "/pushed.css" and "push" in ex[2].flags and ex[2].response_body is not None
    assert ex[2].response_body.data == b"css"
    grpc = ex[5]
    assert grpc.request_trailers == (("x-req-trailer", "1"),)
    assert grpc.response_trailers == (("grpc-status", "0"),)
    assert "reset" in ex[7].flags and ex[7].status is None


def test_connection_knows_the_preface_without_importing_h2() -> None:
    """http.connection detects HTTP/2 by its own copy of the preface (h2 is imported with the first
    HTTP/2 connection)."""
    from tlsmirror.http import connection

    assert connection.PREFACE == PREFACE


def test_whole_bytewise_and_detection_agree() -> None:
    cli, srv = conversation()
    whole = run([(0, cli, 1.0), (1, srv, 2.0)])
    assert run([(0, cli, 1.0), (1, srv, 2.0)], step=1) == whole
    assert run([(0, cli, 1.0), (1, srv, 2.0)], step=5, alpn=None) == whole  # prior knowledge


def test_continuation_and_many_concurrent_streams() -> None:
    ce, se = hpack.Encoder(), hpack.Encoder()
    cli = PREFACE
    big = req("/c", extra=[(f"x-h{i}", "v" * 50) for i in range(40)])
    block = ce.encode(big)
    h = HeadersFrame(1)
    h.data = block[:100]
    h.flags.add("END_STREAM")
    c1 = ContinuationFrame(1)
    c1.data = block[100:1000]
    c2 = ContinuationFrame(1)
    c2.data = block[1000:]
    c2.flags.add("END_HEADERS")
    cli += bytes(h.serialize()) + bytes(c1.serialize()) + bytes(c2.serialize())
    for sid in range(3, 403, 2):
        cli += headers(sid, ce, req(f"/s{sid}"), end=True)
    srv = b""
    for sid in range(401, 0, -2):
        srv += headers(sid, se, [(":status", "200"), ("x-sid", str(sid))])
        srv += data(sid, str(sid).encode(), True)
    out = run([(0, cli, 1.0), (1, srv, 2.0)])
    ex = exchanges(out)
    assert len(ex) == 201
    assert ex[1].request_headers == tuple(big[4:]) and ex[1].response_body is not None
    for sid, e in ex.items():
        assert sid is not None
        assert e.response_headers == (("x-sid", str(sid)),)
        assert e.response_body is not None and e.response_body.data == str(sid).encode()


def test_table_size_update_and_no_response() -> None:
    ce, se = hpack.Encoder(), hpack.Encoder()
    ce.header_table_size = 256  # emits a dynamic table size update
    cli = PREFACE + headers(1, ce, req("/x", extra=[("cookie", "a" * 100)]), end=True)
    cli += headers(3, ce, req("/y", extra=[("cookie", "a" * 100)]), end=True)
    out = run([(0, cli, 1.0), (1, headers(1, se, [(":status", "204")], end=True), 2.0)])
    ex = exchanges(out)
    assert ex[1].status == 204 and not ex[1].flags
    assert ex[3].path == "/y" and ex[3].request_headers == (("cookie", "a" * 100),)
    assert "no_response" in ex[3].flags


def test_gap_inside_data_keeps_framing_and_hpack() -> None:
    ce, se = hpack.Encoder(), hpack.Encoder()
    cli = PREFACE + headers(1, ce, req("/1"), end=True) + headers(3, ce, req("/2"), end=True)
    srv1 = headers(1, se, [(":status", "200"), ("x-a", "dyn")]) + data(1, b"0123456789", end=True)
    srv2 = headers(3, se, [(":status", "200"), ("x-a", "dyn")]) + data(3, b"ok", end=True)
    c = HttpConnection(alpn="h2")
    out = c.feed(0, cli, 1.0)
    cut = len(srv1) - 7
    out += c.feed(1, srv1[:cut], 2.0)
    out += c.gap(1, 4, 2.1)
    out += c.feed(1, srv1[cut + 4:] + srv2, 2.2)
    out += c.close(3.0)
    ex = exchanges(out)
    assert "gap" in ex[1].flags and ex[1].response_body is not None
    assert ex[1].response_body.data == b"012" and ex[1].response_body.wire_size == 10
    assert ex[3].response_headers == (("x-a", "dyn"),) and not ex[3].flags


def test_gap_across_frames_resyncs_without_wrong_headers() -> None:
    ce, se = hpack.Encoder(), hpack.Encoder()
    cli = PREFACE
    srv = b""
    for sid in range(1, 21, 2):
        cli += headers(sid, ce, req(f"/p{sid}", extra=[("x-common", "same")]), end=True)
        srv += headers(sid, se, [(":status", "200"), ("x-common", "same"), ("x-sid", str(sid))])
        srv += data(sid, b"body%d" % sid, end=True)
    for hole in range(5, len(cli) - 30, 37):
        c = HttpConnection(alpn="h2")
        out = c.feed(0, cli[:hole], 1.0) + c.gap(0, 30, 1.1) + c.feed(0, cli[hole + 30:], 1.2)
        out += c.feed(1, srv, 2.0) + c.close(3.0)
        for e in exchanges(out).values():
            assert e.stream_id is not None
            if e.path is not None:
                assert e.path == f"/p{e.stream_id}"
            for k, v in e.request_headers:
                assert (k, v) == ("x-common", "same")
            assert e.response_headers == (("x-common", "same"), ("x-sid", str(e.stream_id)))


def test_midway_pickup_yields_partial_never_wrong() -> None:
    ce, se = hpack.Encoder(), hpack.Encoder()
    cli = PREFACE
    srv = bytes(SettingsFrame(0).serialize())
    for sid in range(1, 41, 2):
        cli += headers(sid, ce, req(f"/p{sid}", extra=[("authorization", "tok"), ("x-n", str(sid))]),
                       end=True)
        srv += headers(sid, se, [(":status", "200"), ("server", "s1"), ("x-n", str(sid))])
        srv += data(sid, b"r%d" % sid, end=True)
    for start in (len(PREFACE) + 1, len(cli) // 3, len(cli) // 2):
        out = run([(0, cli[start:], 1.0), (1, srv[len(srv) // 3:], 2.0)])
        ex = [e for e in out if isinstance(e, Exchange)]
        assert ex
        known_paths = 0
        for e in ex:
            sid = e.stream_id
            assert sid is not None
            if e.path is not None:
                assert e.path == f"/p{sid}"
            assert set(e.request_headers) <= {("authorization", "tok"), ("x-n", str(sid))}
            assert set(e.response_headers) <= {("server", "s1"), ("x-n", str(sid))}
            if e.response_body is not None and e.response_body.data:
                assert e.response_body.data == b"r%d" % sid
            known_paths += e.path is not None
        # literals (the paths) are recovered; references to entries from before the pickup
        # (the encoder keeps pointing at old names) stay unknown, and flagged
        assert known_paths >= 1
        assert any("partial_headers" in e.flags for e in ex)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "cookie", ":path", "x-long"]),
                          st.text(max_size=20)), min_size=1, max_size=8), st.integers(0, 6),
       st.booleans())
def test_partial_hpack_agrees_with_hpack_when_complete(hdrs: list[tuple[str, str]], skip: int,
                                                       huffman: bool) -> None:
    enc = hpack.Encoder()
    full = hpack.Decoder()
    partial = PartialHpack()
    blocks = [enc.encode(hdrs[i:] + hdrs[:i], huffman=huffman) for i in range(len(hdrs))] * 2
    for n, block in enumerate(blocks):
        expected = full.decode(block, raw=True)
        if n < skip:
            continue  # the partial decoder starts late
        got, complete = partial.decode(block)
        if complete:
            assert got == expected
        else:
            assert all(h in expected for h in got)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts_c=st.lists(st.integers(0, 2000), max_size=6), cuts_s=st.lists(st.integers(0, 2000), max_size=6))
def test_random_split_points_give_identical_exchanges(cuts_c: list[int], cuts_s: list[int]) -> None:
    cli, srv = conversation()

    def split(b: bytes, cuts: list[int], d: int, ts: float) -> Chunks:
        bounds = [0, *sorted({x % len(b) for x in cuts}), len(b)]
        return [(d, b[x:y], ts) for x, y in itertools.pairwise(bounds) if y > x]
    expected = run([(0, cli, 1.0), (1, srv, 2.0)])
    assert run(split(cli, cuts_c, 0, 1.0) + split(srv, cuts_s, 1, 2.0)) == expected


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_and_random_input_only_yields_events(draw: st.DataObject) -> None:
    cli, srv = conversation()
    bufs = [bytearray(cli), bytearray(srv)]
    for buf in bufs:
        for _ in range(draw.draw(st.integers(0, 5))):
            i = draw.draw(st.integers(0, len(buf) - 1))
            buf[i] = draw.draw(st.integers(0, 255))
    if draw.draw(st.booleans()):
        bufs[1] = bufs[1][draw.draw(st.integers(0, len(bufs[1]) - 1)):]
    extra = draw.draw(st.binary(max_size=100))
    out = run([(0, bytes(bufs[0]), 1.0), (1, bytes(bufs[1]) + extra, 2.0)],
              step=draw.draw(st.sampled_from([0, 1, 11])), alpn=draw.draw(st.sampled_from(["h2", None])))
    for ev in out:
        assert isinstance(ev, (Exchange, HttpProblem))
        if isinstance(ev, HttpProblem):
            assert not ev.reason.startswith("internal error"), ev.reason


def test_a_header_block_that_ends_the_stream_means_no_body() -> None:
    """A GET (or a HEAD response) ending on its HEADERS frame has no body: None, as in HTTP/1."""
    from hpack import Encoder
    from hyperframe.frame import HeadersFrame, SettingsFrame

    from tlsmirror.http.connection import HttpConnection
    from tlsmirror.http.events import Exchange

    c = HttpConnection(alpn="h2")
    req = HeadersFrame(1, Encoder().encode([(":method", "GET"), (":scheme", "https"), (":authority", "a"),
                                            (":path", "/")]), flags=["END_HEADERS", "END_STREAM"])
    resp = HeadersFrame(1, Encoder().encode([(":status", "204")]), flags=["END_HEADERS", "END_STREAM"])
    c.feed(0, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize() + req.serialize(), 1.0)
    out = [e for e in c.feed(1, SettingsFrame(0).serialize() + resp.serialize(), 2.0) if isinstance(e, Exchange)]
    assert len(out) == 1
    assert out[0].request_body is None and out[0].response_body is None and out[0].status == 204


def test_an_early_response_then_no_error_reset_keeps_the_request_body_in_flight() -> None:
    """The server answers before the request body is in and resets the stream with NO_ERROR (RFC 9113
    8.1); the client's DATA frames captured after that are still the request's."""
    ce, se = hpack.Encoder(), hpack.Encoder()
    cli = PREFACE + headers(1, ce, req("/submit", "POST"))
    srv = headers(1, se, [(":status", "201")]) + data(1, b"ok", end=True)
    srv += bytes(RstStreamFrame(1, error_code=0).serialize())
    chunks = [(0, cli, 1.0), (1, srv, 1.1), (0, data(1, b"x" * 3000) + data(1, b"y", end=True), 1.2)]
    (ex,) = exchanges(run(chunks)).values()
    assert ex.status == 201 and ex.flags == frozenset()
    assert ex.request_body is not None and ex.request_body.size == 3001


def _ws_frame(opcode: int, payload: bytes, mask: bytes = b"") -> bytes:
    head = bytes([0x80 | opcode, (0x80 if mask else 0) | len(payload)]) + mask
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def _extended_connect(status: str = "200", server_ws: bytes = b"", client_ws: bytes = b"",
                      protocol: str = "websocket") -> tuple[bytes, bytes]:
    ce, se = hpack.Encoder(), hpack.Encoder()
    cli = PREFACE + bytes(SettingsFrame(0).serialize())
    cli += headers(1, ce, req("/chat", "CONNECT", [(":protocol", protocol), ("sec-websocket-version", "13")]))
    cli += headers(3, ce, req("/plain"), end=True)
    srv = bytes(SettingsFrame(0, settings={SettingsFrame.ENABLE_CONNECT_PROTOCOL: 1}).serialize())
    srv += headers(1, se, [(":status", status), ("sec-websocket-protocol", "chat.v1")])
    srv += headers(3, se, [(":status", "204")], end=True)
    cw = client_ws or (_ws_frame(1, b"hi", b"abcd") + _ws_frame(8, b"\x03\xe8bye", b"wxyz"))
    sw = server_ws or (_ws_frame(1, b"hi") + _ws_frame(8, b"\x03\xe8"))
    cli += data(1, cw[:3]) + data(1, cw[3:], end=True)  # a WebSocket frame across DATA frames
    srv += data(1, sw[:5], pad=2) + data(1, sw[5:], end=True)
    return cli, srv


def test_rfc8441_websocket_over_extended_connect() -> None:
    cli, srv = _extended_connect()
    for step in (0, 1, 7):
        ex = exchanges(run([(0, cli, 1.0), (1, srv, 2.0)], step=step))
        ws = ex[1].websocket
        assert ws is not None and (ex[1].method, ex[1].path, ex[1].status) == ("CONNECT", "/chat", 200)
        assert ex[1].request_body is None and ex[1].response_body is None
        assert [(m.direction, m.opcode, m.data) for m in ws.messages] == \
            [(0, 1, b"hi"), (0, 8, b"\x03\xe8bye"), (1, 1, b"hi"), (1, 8, b"\x03\xe8")]
        assert (ws.close_code, ws.close_reason, ws.closed_by, ws.subprotocol, ws.flags) == \
            (1000, "bye", 0, "chat.v1", set())
        assert ex[3].status == 204 and ex[3].websocket is None  # other streams unaffected


def test_rfc8441_refused_or_other_protocol_is_a_plain_exchange() -> None:
    for status, protocol in (("400", "websocket"), ("200", "connect-udp")):
        cli, srv = _extended_connect(status, protocol=protocol)
        ex = exchanges(run([(0, cli, 1.0), (1, srv, 2.0)]))
        assert ex[1].websocket is None and ex[1].response_body is not None and ex[1].response_body.size > 0


def test_rfc8441_malformed_frames_flag_the_session_only() -> None:
    cli, srv = _extended_connect(server_ws=b"\x8f\x00garbage")  # opcode 15: unknown
    ex = exchanges(run([(0, cli, 1.0), (1, srv, 2.0)]))
    ws = ex[1].websocket
    assert ws is not None and "ws_malformed" in ws.flags and ws.counts[0] == 2
    assert ex[3].status == 204


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.binary(max_size=300), st.integers(0, 13))
def test_rfc8441_any_session_bytes_never_raise(cw: bytes, sw: bytes, step: int) -> None:
    cli, srv = _extended_connect(client_ws=cw + b"\x00", server_ws=sw + b"\x00")
    ex = exchanges(run([(0, cli, 1.0), (1, srv, 2.0)], step=step))
    assert ex[1].websocket is not None and ex[3].status == 204
