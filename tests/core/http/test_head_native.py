"""The plain head's one-call parser (``tlsmirror.http._head``, C) against llhttp, its authority.

Whatever head the native parser accepts, llhttp accepts with the same start line and fields, and
``h1._fields`` notes the same framing fields; what it declines goes to llhttp unchanged. The stage's
output is the same with and without it, for heads fed whole and in pieces. Skipped in the pure-Python
build, which has no native parser.
"""

from __future__ import annotations

from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.http import h1
from tlsmirror.http.events import Exchange, HttpProblem

_head = pytest.importorskip("tlsmirror.http._head")
parse_head = _head.parse_head


def _oracle(head: bytes, request: bool) -> tuple[Any, ...] | None:
    """The head as the stage's llhttp path reads it (strict llhttp, then ``_fields``), in the native
    parser's tuple layout; None if llhttp refuses it or asks for an upgrade."""
    c = h1._Head()  # the protocol of the stage's llhttp path
    p = httptools.HttpRequestParser(c) if request else httptools.HttpResponseParser(c)
    try:
        p.feed_data(head)
    except httptools.HttpParserUpgrade:
        return None
    except httptools.HttpParserError:
        return None
    if not c.complete:
        return None
    msg = h1._Msg(0.0)
    h1._fields(head, msg)
    if request:
        assert isinstance(p, httptools.HttpRequestParser)
        first: Any = p.get_method().decode()
        second = c.url.decode()
    else:
        assert isinstance(p, httptools.HttpResponseParser)
        first = p.get_status_code()
        second = c.reason.decode()
    return (first, second, p.get_http_version(), msg.headers, msg.host, msg.content_type, msg.content_encoding,
            msg.content_length, msg.transfer_encoding)


_NAMES = st.sampled_from(["Host", "host", "HOST", "Content-Type", "content-length", "Content-Length",
                          "Content-Encoding", "Transfer-Encoding", "transfer-encoding", "Upgrade", "X-A",
                          "Connection", "Accept", "A B", "A:B", "Bad\x7f", "X(y)", "", "x_y", "Hosts",
                          "!#$%&'*+-.^_`|~"])
_VALUES = st.sampled_from(["", " ", "a", " a", "\ta ", "a  ", "0", "12", "01", "+1", "1,1", "-1", "1 ",
                           "9" * 15, "9" * 16, "99999999999999999999", "chunked", "Chunked", "gzip, chunked",
                           "chunked, gzip", "identity", "websocket", "x\x7fy", "\u00e9", "a\tb", "a\r\n b",
                           "a\nb", "a\rb", "text/html; charset=utf-8", "gzip", "\x00"])
_SEPS = st.sampled_from([":", ": ", " : ", ":\t", ":  \t "])
_FIELDS = st.lists(st.tuples(_NAMES, _SEPS, _VALUES), max_size=7)
_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", "FOO",
                            "CONNECT", "TRACE", "PRI", "GETX", "G"])
_TARGETS = st.sampled_from(["/", "/a?b=c&d=%20", "/a#b", "/a\"b", "/a<b", "/a{b}", "/a|b", "/a\\b", "/a^b",
                            "/a`b", "*", "http://h/x", "h:443", "/\u00e4", "/a b", "", "/%41", "/a\tb",
                            "/~user/!$&'()*+,;=:@"])
_LINE_ENDS = st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"])


def _build(start: str, fields: list[tuple[str, str, str]], eol: str, final: str = "\r\n\r\n") -> bytes:
    text = start + "".join(f"\r\n{n}{s}{v}" for n, s, v in fields)
    if eol != "\r\n":
        text = text.replace("\r\n", eol, 1)
    return (text + final).encode("utf-8")


def _check(head: bytes, request: bool) -> tuple[Any, ...] | None:
    got = parse_head(head, 0, len(head), request)
    if got is not None:
        assert got == _oracle(head, request), head
    return got


@settings(max_examples=1500, deadline=None)
@given(_METHODS, _TARGETS, st.sampled_from(["1.1", "1.0", "2.0", "1.2", "11"]), _FIELDS, _LINE_ENDS)
def test_requests_it_accepts_llhttp_reads_alike(method: str, target: str, version: str,
                                                fields: list[tuple[str, str, str]], eol: str) -> None:
    _check(_build(f"{method} {target} HTTP/{version}", fields, eol), True)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(["200", "204", "101", "100", "404", "599", "099", "600", "2000", "20", "2x0"]),
       st.sampled_from(["", " ", " OK", "  OK", " A\tB ", " \u00e9", " x\x7f", " Not Found", "\tOK"]),
       st.sampled_from(["1.1", "1.0", "2.0"]), _FIELDS, _LINE_ENDS)
def test_responses_it_accepts_llhttp_reads_alike(status: str, reason: str, version: str,
                                                 fields: list[tuple[str, str, str]], eol: str) -> None:
    _check(_build(f"HTTP/{version} {status}{reason}", fields, eol), False)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_any_bytes_never_crash_and_agree_when_taken(data: bytes, request: bool) -> None:
    for head in (data, data + b"\r\n\r\n", b"GET / HTTP/1.1\r\n" + data + b"\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\n" + data + b"\r\n\r\n"):
        _check(head, request)


def test_offsets_inside_a_larger_buffer() -> None:
    head = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    buf = b"junk" + head + b"body"
    assert parse_head(buf, 4, 4 + len(head), True) == parse_head(head, 0, len(head), True)
    assert parse_head(buf, 4, 4 + len(head) - 1, True) is None  # not ending in CRLF CRLF
    assert parse_head(buf, 4, len(buf) + 1, True) is None  # out of range
    assert parse_head(buf, -1, 10, True) is None
    with pytest.raises(TypeError):
        parse_head(bytearray(head), 0, len(head), True)


_COMMON = [
    (True, b"GET /api/v1/users?page=2 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: curl/7.88.1\r\n"
           b"Accept: */*\r\n\r\n"),
    (True, b"POST /orders HTTP/1.1\r\nHost: api\r\nAccept-Encoding: identity\r\nContent-Length: 17\r\n"
           b"Content-Type: application/json\r\nUser-Agent: python-urllib3/2.0.7\r\n\r\n"),
    (True, b"GET /static/app.js HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive\r\n"
           b"sec-ch-ua: \"Chromium\";v=\"120\", \"Not?A_Brand\";v=\"8\"\r\nsec-ch-ua-mobile: ?0\r\n"
           b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)\r\n"
           b"Accept: */*\r\nSec-Fetch-Site: same-origin\r\nReferer: https://shop.example/\r\n"
           b"Accept-Language: en-US,en;q=0.9\r\nCookie: sid=abc; theme=dark\r\n\r\n"),
    (True, b"PUT /items/9 HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
    (False, b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 10:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: 300\r\nConnection: keep-alive\r\n\r\n"),
    (False, b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Encoding: gzip\r\n\r\n"),
    (False, b"HTTP/1.1 204 No Content\r\n\r\n"),
    (False, b"HTTP/1.1 304 \r\nETag: \"abc\"\r\n\r\n"),
]


@pytest.mark.parametrize(("request_", "head"), _COMMON)
def test_heads_of_common_clients_and_servers_take_the_native_path(request_: bool, head: bytes) -> None:
    got = _check(head, request_)
    assert got is not None


@pytest.mark.parametrize("head", [
    b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",  # an upgrade
    b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /\xc3\xa4 HTTP/1.1\r\n\r\n",  # not ASCII
    b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\r\n\r\n",  # a bare LF
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
])
def test_heads_it_declines_go_to_llhttp(head: bytes) -> None:
    assert parse_head(head, 0, len(head), True) is None


_BODIES = st.sampled_from([b"", b"{}", b"x" * 40])


def _messages(draw: st.DrawFn) -> tuple[bytes, bytes]:
    reqs, resps = [], []
    for _ in range(draw(st.integers(1, 4))):
        body = draw(_BODIES)
        name = draw(st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH"]))
        extra = draw(st.sampled_from(["", "X-A: 1\r\n", "Host: h\r\n", "Upgrade-Insecure-Requests: 1\r\n",
                                      "X-B: caf\u00e9\r\n", "X-C:\r\n"]))
        method = draw(st.sampled_from(["GET", "POST", "HEAD"])) if not body else "POST"
        reqs.append(f"{method} /r HTTP/1.1\r\nHost: a\r\n{extra}{name}: {len(body)}\r\n\r\n".encode() + body)
        rbody = draw(_BODIES)
        if method == "HEAD":
            resps.append(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
        elif draw(st.booleans()):
            chunked = f"{len(rbody):x}\r\n".encode() + rbody + b"\r\n0\r\n\r\n" if rbody else b"0\r\n\r\n"
            resps.append(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + extra.encode() + b"\r\n"
                         + chunked)
        else:
            resps.append(f"HTTP/1.1 201 Created\r\n{extra}Content-Length: {len(rbody)}\r\n\r\n".encode() + rbody)
    return b"".join(reqs), b"".join(resps)


messages = st.composite(_messages)


def _fields_of(e: object) -> object:
    """An event as plain values, its nested events (bodies) too."""
    slots = getattr(type(e), "__slots__", None)
    if slots is None:
        return e
    return (type(e).__name__, *(_fields_of(getattr(e, k, None)) for k in slots))


def _run(req: bytes, resp: bytes, cuts: list[int]) -> list[Exchange | HttpProblem]:
    conn = h1.H1Connection()
    out: list[Exchange | HttpProblem] = []
    for direction, data in ((0, req), (1, resp)):
        pos = 0
        for cut in [*cuts, len(data)]:
            if cut > pos:
                out += conn.feed(direction, data[pos:cut], 1.0)
                pos = cut
    out += conn.close(2.0)
    return out


@settings(max_examples=300, deadline=None)
@given(messages(), st.lists(st.integers(0, 400), max_size=4))
def test_the_stage_reports_the_same_with_and_without_it(streams: tuple[bytes, bytes], cuts: list[int]) -> None:
    req, resp = streams
    cuts = sorted(cuts)
    native = _run(req, resp, cuts)
    saved = h1._parse_head
    h1._parse_head = None
    try:
        plain = _run(req, resp, cuts)
    finally:
        h1._parse_head = saved
    assert [_fields_of(e) for e in native] == [_fields_of(e) for e in plain]
    assert native and all(type(e) is Exchange for e in native)
