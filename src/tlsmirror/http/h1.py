"""HTTP/1.0 and HTTP/1.1 as seen by a passive observer of both directions of one connection.

llhttp (``httptools``) parses and validates every message head (start line and header fields),
one fresh parser per message; the fields are then read from the head it accepted (``_fields``).
Body framing is tracked here from the parsed head and, for a response, the paired request (HEAD,
CONNECT): Content-Length bodies are sliced, chunked bodies de-chunked (with trailers),
read-until-close bodies end at :meth:`H1Connection.close`. Knowing each message's exact end is what
lets a fresh parser start on the next pipelined message, and lets a gap inside a body be skipped
without losing the framing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import httptools

from .bodies import BodyCollector, is_event_stream, is_text, parse_encodings
from .errors import HttpError
from .events import Body, EventQueue, Exchange, HttpProblem

# The plain head's one-call parser (C, built with the compiled modules): a strict subset of what llhttp
# accepts, with the same fields; None for anything else, which llhttp parses as before.
_parse_head: Callable[[bytes, int, int, bool], tuple[Any, ...] | None] | None
try:
    from ._head import parse_head as _parse_head
except ImportError:  # the pure-Python build
    _parse_head = None

if TYPE_CHECKING:  # imported at the first upgrade: most connections have none (start-up)
    from .websocket import WebSocketParser

MAX_HEAD = 64 * 1024  # bytes of one message head (start line + fields), and of one trailer section
MAX_LINE = 4096  # one chunk-size line
MAX_WAIT = 1024 * 1024  # client bytes held while waiting to learn whether an upgrade happened

# per-direction parsing states
HEAD, BODY_CL, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS, BODY_EOF, WAIT, DONE, SEEK, WS = range(11)

# After a gap that broke message framing, parsing starts again at the next line that opens a message.
_REQUEST_START = re.compile(rb"(?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE|PROPFIND|REPORT|MKCOL|COPY|MOVE"
                            rb"|LOCK|UNLOCK|PROPPATCH|SEARCH|PURGE) [!-~]+ HTTP/1\.[01]\r?\n")
_RESPONSE_START = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9][ \r\n]")
SEEK_TAIL = 64  # bytes kept while seeking, in case a start line straddles two chunks

_CRLF = b"\r\n"
# the parser classes held here: a module attribute read per message costs more (compiled)
_REQUEST_PARSER: Final[type[httptools.HttpRequestParser]] = httptools.HttpRequestParser
_RESPONSE_PARSER: Final[type[httptools.HttpResponseParser]] = httptools.HttpResponseParser
_NO_FLAGS: Final[frozenset[str]] = frozenset()
# What llhttp parsed, read from the bytes it accepted (each lookup saves a method call per message).
_METHOD_TEXT: Final[dict[bytes, str]] = {m.encode(): m for m in (
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE")}
_REQUEST_VERSIONS: Final[dict[bytes, str]] = {b"HTTP/1.1\r\n": "1.1", b"HTTP/1.0\r\n": "1.0"}
_RESPONSE_VERSIONS: Final[dict[bytes, str]] = {b"HTTP/1.1 ": "1.1", b"HTTP/1.0 ": "1.0"}


# Content type -> (is_text, is_event_stream): few distinct values come (bounded all the same).
_CT_KINDS: Final[dict[str | None, tuple[bool, bool]]] = {}


def _ct_kinds(ct: str | None) -> tuple[bool, bool]:
    kinds = (is_text(ct), is_event_stream(ct))
    if len(_CT_KINDS) >= 256:
        _CT_KINDS.clear()
    _CT_KINDS[ct] = kinds
    return kinds


def _is_websocket(req: _Msg, resp: _Msg) -> bool:
    """A 101 answering ``Upgrade: websocket`` (RFC 6455 handshake)."""
    up = req.upgrade_field
    return up is not None and "websocket" in up.lower()


def _head_end(buf: bytes, start: int) -> int:
    """The end of the message head (just past its empty line) in ``buf[start:]``, or -1."""
    crlf = buf.find(b"\n\r\n", start)
    lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else len(buf))
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


def _has_bare_lf(head: bytes) -> bool:
    return head.count(b"\n") != head.count(b"\r\n")


def _text(b: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b.decode("latin-1")


class _Head:
    """httptools protocol: collects one message head's start line parts. No ``on_header``: llhttp then
    validates the fields without a callback per field and value (its run: 7.5k instructions a head with
    them, 3.8k without, on the replay slice compiled), and :func:`_fields` reads them from the head it
    accepted (8.2k a head, against 10.2k for the callbacks' fields, their decoding and the name index)."""

    __slots__ = ("complete", "reason", "url")

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_headers_complete(self) -> None:
        self.complete = True


def _fields(head: bytes, msg: _Msg) -> None:
    """The fields of a head llhttp accepted (CRLF line ends, ending in an empty line) into ``msg``, as
    llhttp gives them: the name up to the first colon, the value without its leading spaces and tabs
    (llhttp refuses obs-fold, bare CR and LF, and names that are not tokens: no other case). Decoded once
    for the whole head (valid UTF-8 as a whole is valid in every piece split at ASCII bytes), each piece as
    latin-1 otherwise. One pass: each line found in the text and sliced into its name and value, the
    fields this stage reads (:meth:`_Msg._note`) noted on the way."""
    try:
        text = head.decode()
    except UnicodeDecodeError:
        lines_b = head.split(b"\r\n")
        out_b: list[tuple[str, str]] = []
        for k in range(1, len(lines_b) - 2):
            name_b, _, value_b = lines_b[k].partition(b":")
            name_t = _text(name_b)
            value_t = _text(value_b.lstrip(b" \t"))
            out_b.append((name_t, value_t))
            size = len(name_t)
            if size == 4 or size == 7 or size == 12 or size == 14 or size == 16 or size == 17:
                msg._note(size, name_t, value_t)
        msg.headers = tuple(out_b)
        return
    out: list[tuple[str, str]] = []
    pos = text.find("\r\n") + 2  # past the start line
    last = len(text) - 2  # the empty line that ends the head
    while pos < last:
        eol = text.find("\r\n", pos)
        i = text.find(":", pos, eol)
        if i < 0:
            i = eol  # not reached: llhttp requires the colon
        j = i + 1
        while j < eol and (text[j] == " " or text[j] == "\t"):
            j += 1
        name = text[pos:i]
        value = text[j:eol] if j < eol else ""
        out.append((name, value))
        size = i - pos
        # the lengths of the names noted: host, upgrade, content-type, -length, -encoding, transfer-encoding
        if size == 4 or size == 7 or size == 12 or size == 14 or size == 16 or size == 17:
            msg._note(size, name, value)
        pos = eol + 2
    msg.headers = tuple(out)


class _Msg:
    """One request or response being assembled."""

    __slots__ = ("body", "content_encoding", "content_length", "content_type", "end_ts", "flags", "headers",
                 "host", "method", "reason", "start_ts", "status", "target", "trailers", "transfer_encoding",
                 "upgrade", "upgrade_field", "version")

    def __init__(self, start_ts: float) -> None:
        self.start_ts = start_ts
        self.end_ts: float | None = None
        self.method: str | None = None
        self.target: str | None = None
        self.status: int | None = None
        self.reason: str | None = None
        self.version = "1.1"
        self.headers: tuple[tuple[str, str], ...] = ()
        self.trailers: list[tuple[str, str]] = []
        self.body: BodyCollector | None = None
        self.flags: set[str] = set()
        self.upgrade = False
        # the fields this stage reads, noted by _fields: the first value, all values for the framing ones
        self.host: str | None = None
        self.upgrade_field: str | None = None
        self.content_type: str | None = None
        self.content_encoding: str | None = None
        self.content_length: list[str] | None = None
        self.transfer_encoding: list[str] | None = None

    def _note(self, size: int, name: str, value: str) -> None:
        """Field ``name`` (``size`` characters: 4, 7, 12, 14, 16 or 17) with ``value``, kept if this stage
        reads it. The usual spellings compare as they are; ``lower()`` runs only for a name of another case
        that starts with the right letter (not for Date, X-Request-Id and the like)."""
        first = name[0]
        if size == 4:
            if self.host is None and (name == "Host" or name == "host"
                                      or ((first == "H" or first == "h") and name.lower() == "host")):
                self.host = value
        elif size == 7:
            if self.upgrade_field is None and (name == "Upgrade" or name == "upgrade"
                                               or ((first == "U" or first == "u") and name.lower() == "upgrade")):
                self.upgrade_field = value
        elif first == "C" or first == "c":
            if size == 12:
                if self.content_type is None and (name == "Content-Type" or name == "content-type"
                                                  or name.lower() == "content-type"):
                    self.content_type = value
            elif size == 14:
                if name == "Content-Length" or name == "content-length" or name.lower() == "content-length":
                    if self.content_length is None:
                        self.content_length = [value]
                    else:
                        self.content_length.append(value)
            elif size == 16 and self.content_encoding is None and (
                    name == "Content-Encoding" or name == "content-encoding" or name.lower() == "content-encoding"):
                self.content_encoding = value
        elif size == 17 and (first == "T" or first == "t") and (
                name == "Transfer-Encoding" or name == "transfer-encoding" or name.lower() == "transfer-encoding"):
            if self.transfer_encoding is None:
                self.transfer_encoding = [value]
            else:
                self.transfer_encoding.append(value)

    def _values(self, name: str) -> list[str] | None:
        # A scan, not an index: a message has few fields and this stage asks for a few of them; llhttp
        # accepts ASCII token names only, so a length test goes first and lower() runs on a match only.
        size = len(name)
        found: list[str] | None = None
        for k, v in self.headers:
            if len(k) == size and k.lower() == name:
                if found is None:
                    found = [v]
                else:
                    found.append(v)
        return found

    def header(self, name: str) -> str | None:
        """The first value of field ``name`` (lowercase)."""
        size = len(name)
        for k, v in self.headers:
            if len(k) == size and k.lower() == name:
                return v
        return None

    def headers_all(self, name: str) -> list[str]:
        return self._values(name) or []

    def finish_body(self, complete: bool) -> Body | None:
        return None if self.body is None else self.body.finish(complete)


class _Pending:
    """An exchange in flight: the request (None if never seen), the response when it starts."""

    __slots__ = ("flags", "req", "req_body", "req_done", "resp", "resp_body", "resp_done")

    def __init__(self, req: _Msg | None) -> None:
        self.req = req
        self.resp: _Msg | None = None
        self.req_done = req is None
        self.resp_done = False
        self.req_body: Body | None = None
        self.resp_body: Body | None = None
        self.flags: set[str] = set()


class _Dir:
    """Parsing state of one direction."""

    __slots__ = ("bare_lf", "buf", "chunked", "fed", "head_ts", "msg", "parser", "proto", "remaining",
                 "scan", "state", "trailer_bytes")

    def __init__(self) -> None:
        self.buf = b""
        self.state = HEAD
        self.remaining = 0
        self.msg: _Msg | None = None
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None
        self.proto: _Head | None = None
        self.fed = 0  # bytes of buf given to the head parser
        self.scan = 0  # where to resume looking for the end of the head
        self.head_ts: float | None = None
        self.chunked = False
        self.trailer_bytes = 0
        self.bare_lf = False  # the head being read has LF-only line ends: parse it whole at its end


class H1Connection(EventQueue):
    """Pairs HTTP/1.x requests (direction 0) with responses (direction 1), in order."""

    def __init__(self, body_limit: int = 128 * 1024, *, midstream: bool = False) -> None:
        self.body_limit = body_limit
        self._dirs = (_Dir(), _Dir())
        if midstream:
            # the bytes start inside the connection (TLS picked up mid-stream): at the next message
            for d in self._dirs:
                d.state = SEEK
        self._pending: list[_Pending] = []  # in request order
        self._out: list[Exchange | HttpProblem] = []
        self.problems: list[str] = []
        self.stopped = False
        self.resyncs = 0  # times parsing started again after a gap
        self._server_lost = midstream  # a server-side gap (or the start of the capture) swallowed responses
        self.heads = 0  # message heads parsed (either direction)
        # after a WebSocket handshake: the frame parser of both directions, and the handshake's exchange,
        # reported with the session when it ends
        self._ws: WebSocketParser | None = None
        self._ws_exchange: Exchange | None = None

    # -- public ---------------------------------------------------------------------------------

    def feed(self, direction: int, data: bytes, ts: float) -> list[Exchange | HttpProblem]:
        if self.stopped or not data:
            return self._take()
        d = self._dirs[direction]
        if d.state == DONE:
            return self._take()
        d.buf = d.buf + data if d.buf else data
        try:
            self._run(direction, ts)
        except HttpError as exc:
            self._stop(ts, f"{'client' if direction == 0 else 'server'}: {exc}")
        return self._take()

    def gap(self, direction: int, size: int, ts: float) -> list[Exchange | HttpProblem]:
        if self.stopped or size <= 0:
            return self._take()
        d = self._dirs[direction]
        try:
            self._gap(direction, d, size, ts)
        except HttpError as exc:
            self._stop(ts, f"{'client' if direction == 0 else 'server'}: {exc}")
        return self._take()

    def close(self, ts: float) -> list[Exchange | HttpProblem]:
        if self._ws is not None:
            self._ws_end(ts)
        if not self.stopped:
            for i in (0, 1):
                d = self._dirs[i]
                if d.msg is not None and d.state in (BODY_CL, CHUNK_SIZE, CHUNK_DATA, CHUNK_END,
                                                     TRAILERS, BODY_EOF):
                    if d.state == BODY_EOF:
                        self._complete(i, d, ts)
                    else:
                        d.msg.flags.add("truncated")
                        self._complete(i, d, ts, complete=False)
                elif d.state == HEAD and d.buf.strip(_CRLF):
                    self.problems.append(f"{'client' if i == 0 else 'server'}: "
                                         "connection closed inside a message head")
            self._flush_all()
            self.stopped = True
        return self._take()

    # -- internals ------------------------------------------------------------------------------

    def _stop(self, ts: float, reason: str) -> None:
        """End HTTP parsing of this connection: report why, flush what is in flight."""
        if not self.heads and "llhttp:" in reason:
            reason = "not HTTP: " + reason  # the very first message is not HTTP/1.x at all
        if self._ws is not None:
            self._ws_end(ts)
        self.problems.append(reason)
        self._out.append(HttpProblem(ts, reason))
        for i in (0, 1):
            d = self._dirs[i]
            if d.msg is not None and d.state not in (HEAD, WAIT, DONE):
                d.msg.flags.add("truncated")
                self._complete(i, d, ts, complete=False)
        self._flush_all()
        self.stopped = True
        for d in self._dirs:
            d.state = DONE
            d.buf = b""

    def _flush_all(self) -> None:
        for p in self._pending:
            if p.req is not None and not p.req_done:
                p.flags.add("truncated")
            if p.resp is None:
                p.flags.add("no_response")
            elif not p.resp_done:
                p.flags.add("truncated")
            self._out.append(self._exchange(p))
        self._pending = []

    def _gap(self, i: int, d: _Dir, size: int, ts: float) -> None:
        msg = d.msg
        st = d.state
        if st == DONE:
            return
        if st == WS:
            ws = self._ws
            if ws is not None:
                ws.gap(i, size, ts)
                if ws.closed:
                    self._ws_end(ts)
            return
        if msg is not None and msg.body is not None and st in (BODY_CL, CHUNK_DATA, BODY_EOF):
            if st == BODY_EOF or size <= d.remaining:
                msg.body.gap(size)
                msg.flags.add("gap")
                if st != BODY_EOF:
                    d.remaining -= size
                    if d.remaining == 0:
                        if st == BODY_CL:
                            self._complete(i, d, ts)
                        else:
                            d.state = CHUNK_END
                return
            msg.body.gap(d.remaining)
            msg.flags.add("gap")
            if st == BODY_CL:
                # every byte of this body is accounted for; the hole went on into what followed
                self._complete(i, d, ts)
                msg = None
        if st in (WAIT, SEEK):
            if st == WAIT:
                raise HttpError(f"gap of {size} bytes while an upgrade was pending; cannot resync")
            return
        if msg is not None:
            # the message ends at the hole, cut short; parsing resumes at the next message start
            msg.flags.add("gap")
            msg.flags.add("truncated")
            self._complete(i, d, ts, complete=False)
        d.parser = None
        d.proto = None
        d.head_ts = None
        d.buf = b""
        d.state = SEEK
        self.resyncs += 1
        if i == 1:
            self._server_lost = True  # the next response may not answer the oldest open request

    def _run(self, i: int, ts: float) -> None:
        d = self._dirs[i]
        buf = d.buf
        pos = 0
        n = len(buf)
        while pos < n:
            st = d.state
            if st == HEAD:
                pos = self._head(i, d, buf, pos, ts)
                if d.parser is not None:
                    break  # the head is incomplete: need more bytes
            elif st == SEEK:
                start = self._message_start(i, buf, pos)
                if start < 0:
                    pos = max(pos, n - SEEK_TAIL)
                    break
                pos = start
                d.state = HEAD
            elif st in (BODY_CL, CHUNK_DATA):
                take = min(d.remaining, n - pos)
                assert d.msg is not None and d.msg.body is not None
                d.msg.body.write(buf[pos:pos + take], ts)
                pos += take
                d.remaining -= take
                if d.remaining == 0:
                    if st == BODY_CL:
                        self._complete(i, d, ts)
                    else:
                        d.state = CHUNK_END
            elif st == CHUNK_SIZE:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if n - pos > MAX_LINE:
                        raise HttpError("chunk size line too long")
                    break
                self._chunk_size(d, buf[pos:nl])
                pos = nl + 1
            elif st == CHUNK_END:
                if buf[pos] == 0x0A:  # bare LF, tolerated
                    pos += 1
                elif buf[pos] == 0x0D:
                    if pos + 1 >= n:
                        break
                    if buf[pos + 1] != 0x0A:
                        raise HttpError("missing CRLF after chunk data")
                    pos += 2
                else:
                    raise HttpError("missing CRLF after chunk data")
                d.state = CHUNK_SIZE
            elif st == TRAILERS:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if n - pos + d.trailer_bytes > MAX_HEAD:
                        raise HttpError("trailer section too large")
                    break
                line = buf[pos:nl]
                d.trailer_bytes += nl + 1 - pos
                pos = nl + 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                if not line:
                    self._complete(i, d, ts)
                else:
                    name, sep, value = line.partition(b":")
                    if not sep or not name or name != name.strip():
                        raise HttpError("malformed trailer field")
                    if d.trailer_bytes > MAX_HEAD:
                        raise HttpError("trailer section too large")
                    assert d.msg is not None
                    d.msg.trailers.append((_text(name), _text(value.strip(b" \t"))))
            elif st == BODY_EOF:
                assert d.msg is not None and d.msg.body is not None
                d.msg.body.write(buf[pos:] if pos else buf, ts)
                pos = n
            elif st == WS:
                ws = self._ws
                if ws is not None:
                    ws.feed(i, buf[pos:] if pos else buf, ts)
                    if ws.closed:
                        self._ws_end(ts)
                pos = n
                break
            elif st == WAIT:
                if n - pos > MAX_WAIT:
                    raise HttpError("too much data while waiting for the upgrade response")
                break
            else:  # DONE: the connection switched protocols
                pos = n
                break
            if self.stopped:
                return
        d.buf = buf[pos:] if pos < n else b""

    def _chunk_size(self, d: _Dir, line: bytes) -> None:
        size_text = line.split(b";", 1)[0].strip(b" \t\r")
        if not size_text or len(size_text) > 16:
            raise HttpError("invalid chunk size")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError("invalid chunk size") from None
        if size_text[:1] in (b"+", b"-") or b"_" in size_text:
            raise HttpError("invalid chunk size")
        if size == 0:
            d.state = TRAILERS
            d.trailer_bytes = 0
        else:
            d.state = CHUNK_DATA
            d.remaining = size

    def _head(self, i: int, d: _Dir, buf: bytes, pos: int, ts: float) -> int:
        """Consume a message head from ``buf[pos:]``; return the new position."""
        if d.parser is None:
            # blank lines between messages are tolerated (and skipped)
            n = len(buf)
            while pos < n and buf[pos] in (0x0D, 0x0A):
                pos += 1
            if pos == n:
                return pos
            if _parse_head is not None:
                end = buf.find(b"\r\n\r\n", pos)
                if 0 <= end <= pos + MAX_HEAD - 4:
                    end += 4
                    r = _parse_head(buf, pos, end, i == 0)
                    if r is not None:
                        self._plain_head(i, d, r, ts)
                        return end
            d.proto = _Head()
            # strict first (one call less per message); a refused head is parsed again leniently
            d.parser = _REQUEST_PARSER(d.proto) if i == 0 else _RESPONSE_PARSER(d.proto)
            d.head_ts = ts
            d.fed = pos
            d.scan = pos
            d.bare_lf = False
        # The usual head ends at its first CRLF CRLF (one search). One with LF-only line ends (its end
        # may be an LF LF before that) is refused by llhttp below, and then found by _head_end.
        end = -1 if d.bare_lf else buf.find(b"\r\n\r\n", d.scan)
        if end >= 0:
            end += 4
        else:
            end = _head_end(buf, d.scan)
        parser = d.parser
        if end < 0:
            if len(buf) - pos > MAX_HEAD:
                raise HttpError("message head too large")
            if d.fed < len(buf) and not d.bare_lf:
                try:
                    self._feed_parser(parser, buf[d.fed:])
                except HttpError:
                    if not _has_bare_lf(buf[pos:]):
                        err = self._lenient(i, d, buf[pos:])
                        if err is not None:
                            raise err from None
                    else:
                        d.bare_lf = True  # decided when the head is complete
            # keep offsets relative to the unconsumed buffer, which restarts at ``pos``
            d.fed = len(buf) - pos
            d.scan = max(0, len(buf) - pos - 3)
            return pos
        if end - pos > MAX_HEAD:
            raise HttpError("message head too large")
        relf = d.bare_lf
        if not relf:
            # llhttp refuses LF-only line ends (measured: every such head): only then look for them
            parsed = True
            try:
                self._feed_parser(parser, buf[d.fed:end])
            except HttpError:
                err = self._lenient(i, d, buf[pos:end])
                if err is not None:
                    parsed = False
                    end = _head_end(buf, pos)  # an LF LF may end the head before that CRLF CRLF
                    if not _has_bare_lf(buf[pos:end]):
                        raise err from None
                    relf = True
                else:
                    assert d.parser is not None
                    parser = d.parser
            if parsed and d.proto is not None and not d.proto.complete:
                lf_end = _head_end(buf, pos)
                if _has_bare_lf(buf[pos:lf_end]):
                    end = lf_end
                    relf = True
        if relf:
            # LF-only line ends (tolerated by most servers, refused by llhttp): parse the whole head
            # again with CRLF line ends
            d.proto = _Head()
            parser = d.parser = (httptools.HttpRequestParser(d.proto) if i == 0
                                 else httptools.HttpResponseParser(d.proto))
            parser.set_dangerous_leniencies(lenient_chunked_length=True)
            head = buf[pos:end].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            self._feed_parser(parser, head)
        else:
            head = buf[pos:end]
        proto = d.proto
        assert proto is not None
        if not proto.complete:
            raise HttpError("message head not understood")
        d.parser = None
        d.proto = None
        self.heads += 1
        head_ts = d.head_ts if d.head_ts is not None else ts
        d.head_ts = None
        msg = _Msg(head_ts)
        _fields(head, msg)
        if i == 0:
            assert isinstance(parser, _REQUEST_PARSER)
            raw_method = parser.get_method()
            method = _METHOD_TEXT.get(raw_method)
            msg.method = method if method is not None else raw_method.decode("ascii", "replace")
            # the version from the request line's end (METHOD SP target SP HTTP/x.y CRLF), else llhttp's
            at = pos + len(raw_method) + len(proto.url) + 2
            version = _REQUEST_VERSIONS.get(buf[at:at + 10])
            msg.version = version if version is not None else parser.get_http_version()
            msg.target = _text(proto.url)
            # llhttp's upgrade flag needs CONNECT or an Upgrade field: only then ask (a response's
            # is not used: its status code says)
            if msg.method == "CONNECT" or msg.upgrade_field is not None:
                msg.upgrade = parser.should_upgrade()
            self._request_head(d, msg, ts)
        else:
            assert isinstance(parser, _RESPONSE_PARSER)
            version = _RESPONSE_VERSIONS.get(buf[pos:pos + 9])  # the status line's start, else llhttp's
            msg.version = version if version is not None else parser.get_http_version()
            msg.status = parser.get_status_code()
            msg.reason = _text(proto.reason)
            self._response_head(d, msg, ts)
        return end

    def _plain_head(self, i: int, d: _Dir, r: tuple[Any, ...], ts: float) -> None:
        """A whole head read by ``_parse_head`` (see its fields there)."""
        self.heads += 1
        msg = _Msg(ts)
        msg.version = r[2]
        msg.headers = r[3]
        msg.host = r[4]
        msg.content_type = r[5]
        msg.content_encoding = r[6]
        msg.content_length = r[7]
        msg.transfer_encoding = r[8]
        if i == 0:
            msg.method = r[0]
            msg.target = r[1]
            self._request_head(d, msg, ts)
        else:
            msg.status = r[0]
            msg.reason = r[1]
            self._response_head(d, msg, ts)

    def _lenient(self, i: int, d: _Dir, head: bytes) -> HttpError | None:
        """llhttp refused the head: parse it again, whole, allowing Transfer-Encoding with Content-Length
        (the framing here follows RFC 9112, chunked wins, since the peer evidently accepted the message).
        On success the direction goes on with that parser; else its error."""
        proto = _Head()
        parser = httptools.HttpRequestParser(proto) if i == 0 else httptools.HttpResponseParser(proto)
        parser.set_dangerous_leniencies(lenient_chunked_length=True)
        try:
            self._feed_parser(parser, head)
        except HttpError as exc:
            return exc
        d.proto = proto
        d.parser = parser
        d.fed = len(head)
        return None

    @staticmethod
    def _feed_parser(parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
                     data: bytes) -> None:
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # upgrade / CONNECT: the head is complete; what follows is decided by us
        except httptools.HttpParserError as exc:
            raise HttpError(f"llhttp: {exc}" if str(exc) else "llhttp: parse error") from None

    def _framing(self, msg: _Msg, is_request: bool) -> tuple[str, int]:
        """("none"|"cl"|"chunked"|"eof", content length)."""
        te = msg.transfer_encoding
        if te:
            codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
            if codings and codings[-1] == "chunked":
                return "chunked", 0
            if is_request:
                raise HttpError("request transfer-encoding without final chunked")
            return "eof", 0
        cls = msg.content_length
        if cls is None:
            return ("none", 0) if is_request else ("eof", 0)
        if len(cls) == 1 and cls[0].isdigit():  # the usual single value (llhttp checked its digits)
            try:
                length = int(cls[0])
            except ValueError:
                raise HttpError("invalid content-length") from None
            return ("cl", length) if length else ("none", 0)
        if cls:
            try:
                values = {int(c.strip()) for v in cls for c in v.split(",")}
            except ValueError:
                raise HttpError("invalid content-length") from None
            if len(values) != 1:
                raise HttpError("conflicting content-length")
            length = values.pop()
            if length < 0:
                raise HttpError("invalid content-length")
            return ("cl", length) if length else ("none", 0)
        if is_request:
            return "none", 0
        return "eof", 0

    def _start_body(self, d: _Dir, msg: _Msg, kind: str, length: int) -> None:
        ct = msg.content_type
        kinds = _CT_KINDS.get(ct)
        if kinds is None:
            kinds = _ct_kinds(ct)
        ce = msg.content_encoding
        msg.body = BodyCollector(self.body_limit, parse_encodings(ce) if ce is not None else None, kinds[0],
                                 stamps=kinds[1])
        if kind == "cl":
            d.state = BODY_CL
            d.remaining = length
        elif kind == "chunked":
            d.state = CHUNK_SIZE
        else:
            d.state = BODY_EOF

    def _request_head(self, d: _Dir, msg: _Msg, ts: float) -> None:
        p = _Pending(msg)
        self._pending.append(p)
        d.msg = msg
        kind, length = self._framing(msg, True)
        if kind == "none":
            msg.body = None
            self._complete(0, d, ts)
        else:
            self._start_body(d, msg, kind, length)

    @staticmethod
    def _message_start(i: int, buf: bytes, pos: int) -> int:
        return message_start(i, buf, pos)

    def _response_head(self, d: _Dir, msg: _Msg, ts: float) -> None:
        status = msg.status or 0
        if self._server_lost and not (100 <= status < 200):
            self._server_lost = False
            # Responses were lost in a gap: this one answers the newest request sent before it started
            # (exact for keep-alive without pipelining); the older open requests lost their responses.
            waiting = [x for x in self._pending if x.resp is None]
            before = [x for x in waiting if x.req is not None and x.req.start_ts <= msg.start_ts]
            if before:
                for x in waiting[:waiting.index(before[-1])]:
                    x.flags.update(("no_response", "gap"))
                    x.resp_done = True
        p: _Pending | None = None
        for x in self._pending:  # the oldest request still waiting (a loop: no generator per response)
            if x.resp is None and not x.resp_done:
                p = x
                break
        if 100 <= status < 200 and status != 101:
            if p is not None:
                p.flags.add("interim_response")
            d.state = HEAD  # interim (100 Continue, 103 Early Hints): the final response follows
            return
        if p is None:
            p = _Pending(None)
            p.flags.add("response_without_request")
            self._pending.append(p)
        p.resp = msg
        d.msg = msg
        method = p.req.method if p.req is not None else None
        if status == 101:
            p.flags.add("upgrade")
            self._complete(1, d, ts)
            req = p.req
            out = self._out
            last = out[-1] if out else None
            if req is not None and type(last) is Exchange and _is_websocket(req, msg):
                out.pop()
                self._ws_begin(last, msg, ts)
                return
            self._switch()
            return
        if method == "CONNECT" and 200 <= status < 300:
            p.flags.add("upgrade")
            p.flags.add("connect")
            self._complete(1, d, ts)
            self._switch()
            return
        if method == "HEAD" or status in (204, 304):
            self._complete(1, d, ts)
        else:
            kind, length = self._framing(msg, False)
            if kind == "none":
                self._complete(1, d, ts)
            else:
                self._start_body(d, msg, kind, length)
        # an upgrade or CONNECT request that was refused: the client goes on speaking HTTP
        c = self._dirs[0]
        if c.state == WAIT and p.req is not None and p.req.upgrade and p.req_done:
            c.state = HEAD
            if c.buf:
                self._run(0, ts)

    def _ws_begin(self, handshake: Exchange, resp: _Msg, ts: float) -> None:
        """The WebSocket handshake is done: frames follow in both directions (client bytes held while
        the upgrade was pending go first)."""
        from .websocket import WebSocketParser

        ws = WebSocketParser(resp.header("sec-websocket-extensions"), resp.header("sec-websocket-protocol"),
                             capture=self.body_limit)
        self._ws = ws
        self._ws_exchange = handshake
        for d in self._dirs:
            d.state = WS
        c = self._dirs[0]
        held = c.buf
        c.buf = b""
        if held:
            ws.feed(0, held, ts)
        if ws.closed:
            self._ws_end(ts)

    def _ws_end(self, ts: float) -> None:
        ws = self._ws
        ex = self._ws_exchange
        self._ws = None
        self._ws_exchange = None
        if ws is not None and ex is not None:
            ex.websocket = ws.finish(ts)
            self._out.append(ex)
        self._switch()

    def _switch(self) -> None:
        """The connection left HTTP (101 Switching Protocols, CONNECT tunnel): stop, no error."""
        self.stopped = True
        for d in self._dirs:
            d.state = DONE
            d.buf = b""
        self._flush_all()

    def _complete(self, i: int, d: _Dir, ts: float, complete: bool = True) -> None:
        msg = d.msg
        assert msg is not None
        msg.end_ts = ts
        d.msg = None
        d.state = HEAD
        body = msg.finish_body(complete)
        for p in self._pending:
            if i == 0 and p.req is msg:
                p.req_body = body
                p.req_done = True
                if msg.upgrade or msg.method == "CONNECT":
                    msg.upgrade = True
                    if p.resp is None:
                        d.state = WAIT  # hold client bytes until the response tells
                break
            if i == 1 and p.resp is msg:
                p.resp_body = body
                p.resp_done = True
                break
        # emit every exchange at the front whose both sides are done
        while self._pending and self._pending[0].req_done and self._pending[0].resp_done:
            self._out.append(self._exchange(self._pending.pop(0)))

    def _exchange(self, p: _Pending) -> Exchange:
        req = p.req
        resp = p.resp
        flags = set(p.flags)
        authority = path = scheme = None
        method = None
        if req is not None:
            if req.flags:
                flags |= req.flags
            method = req.method
            authority = req.host
            path = req.target
            if method == "CONNECT":
                authority = path
                path = None
            elif path is not None and not path.startswith("/") and \
                    path[:8].lower().startswith(("http://", "https://")):
                # absolute-form (proxy request): split scheme and authority off
                scheme, _, rest = path.partition("://")
                auth, slash, tail = rest.partition("/")
                authority = auth or authority
                path = slash + tail if slash else "/"
                scheme = scheme.lower()
        if resp is not None and resp.flags:
            flags |= resp.flags
        qb = p.req_body
        sb = p.resp_body
        if (qb is not None and qb.decode_error) or (sb is not None and sb.decode_error):
            flags.add("decode_error")
        if (qb is not None and qb.truncated) or (sb is not None and sb.truncated):
            flags.add("body_truncated")
        version = (req.version if req is not None else resp.version if resp is not None else "1.1")
        return Exchange(
            http_version=version,
            method=method,
            scheme=scheme,
            authority=authority,
            path=path,
            status=resp.status if resp is not None else None,
            reason=resp.reason if resp is not None else None,
            request_headers=req.headers if req is not None else (),
            response_headers=resp.headers if resp is not None else (),
            request_trailers=tuple(req.trailers) if req is not None and req.trailers else (),
            response_trailers=tuple(resp.trailers) if resp is not None and resp.trailers else (),
            request_body=p.req_body,
            response_body=p.resp_body,
            request_ts=req.start_ts if req is not None else None,
            request_end_ts=req.end_ts if req is not None else None,
            response_ts=resp.start_ts if resp is not None else None,
            response_end_ts=resp.end_ts if resp is not None else None,
            stream_id=None,
            flags=frozenset(flags) if flags else _NO_FLAGS,
        )


def message_start(i: int, buf: bytes, pos: int) -> int:
    """Offset of the first request line (``i`` 0) or status line (1) in ``buf``, or -1. Not only at
    line starts: a message follows the previous body's last byte directly."""
    m = (_REQUEST_START if i == 0 else _RESPONSE_START).search(buf, pos)
    return -1 if m is None else m.start()
