"""Server-sent events: a ``text/event-stream`` body read as its events (pure, bounded).

The stream format of the HTML standard: lines end in CRLF, LF or CR; ``field: value`` lines (one
space after the colon dropped), lines starting with ``:`` are comments, a blank line dispatches the
event. Fields ``event``, ``data`` (lines joined with LF), ``id`` and ``retry``; others are ignored. An
event is reported when it has data, an id or a type (a dispatch with nothing set is no event).

Each event's time is the capture time of the chunk that completed it (``Body.stamps``, kept by the http
stage for event streams). Only the captured bytes (at most ``body_limit``) are read: a stream cut there
ends with a last, incomplete event flagged ``cut``. Nothing here raises on bad input.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

from .bodies import is_event_stream
from .events import Body, Exchange, Headers

MAX_EVENTS = 1000  # events listed (the count goes on)
MAX_DATA = 1024  # characters of one event's data shown

_LINE = re.compile(r"\r\n|\n|\r")


@dataclass(slots=True)
class SseEvent:
    id: str | None
    event: str | None
    data: str
    data_size: int  # bytes of the joined data (UTF-8)
    retry: int | None
    ts: float | None
    cut: bool = False

    def to_dict(self, content: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "event": self.event, "data_size": self.data_size, "ts": self.ts}
        if content:
            out["data"] = self.data[:MAX_DATA]
        if content and len(self.data) > MAX_DATA:
            out["data_cut"] = True
        if self.retry is not None:
            out["retry"] = self.retry
        if self.cut:
            out["cut"] = True
        return out


@dataclass(slots=True)
class SseStream:
    events: list[SseEvent] = field(default_factory=list)
    count: int = 0
    last_id: str | None = None
    complete: bool = True
    flags: set[str] = field(default_factory=set)

    def to_dict(self, content: bool = True) -> dict[str, Any]:
        """The record's ``sse`` object (docs/exchange-schema.md); ``content``: with each event's data."""
        return {"events": self.count, "last_id": self.last_id, "complete": self.complete,
                "list": [e.to_dict(content) for e in self.events], "flags": sorted(self.flags)}


def _time_at(offsets: list[int], stamps: tuple[tuple[int, float], ...], end: int) -> float | None:
    i = bisect.bisect_left(offsets, end)
    if i < len(stamps):
        return stamps[i][1]
    return stamps[-1][1] if stamps else None


def parse_events(body: Body) -> SseStream:
    """The events of one captured event-stream body."""
    out = SseStream()
    data = body.data
    if body.truncated or body.decode_error:
        out.complete = False
        out.flags.add("sse_body_cut")
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    stamps = body.stamps or ()
    offsets = [s[0] for s in stamps]
    # byte offsets of line ends are needed for times: walk the text, counting UTF-8 bytes per line
    byte_pos = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    pos = 0
    n = len(text)
    ev_id: str | None = None
    ev_type: str | None = None
    ev_data: list[str] = []
    retry: int | None = None
    seen = False
    last_id = None
    while pos < n:
        m = _LINE.search(text, pos)
        if m is None:  # the last line has no end: the stream was cut (or is still open)
            line = text[pos:]
            pos = n
            out.complete = False
        else:
            line = text[pos:m.start()]
            byte_pos += len(line.encode("utf-8", "surrogatepass")) + (m.end() - m.start())
            pos = m.end()
        if not line:
            if seen:
                ts = _time_at(offsets, stamps, byte_pos) if stamps else None
                _append(out, ev_id, ev_type, ev_data, retry, ts)
                if ev_id is not None:
                    last_id = ev_id
            ev_type, ev_data, retry, seen = None, [], None, False
            ev_id = None
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            ev_data.append(value)
            seen = True
        elif name == "event":
            ev_type = value
            seen = True
        elif name == "id":
            if "\x00" not in value:
                ev_id = value
                seen = True
        elif name == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
    if seen:  # fields after the last blank line: an event not yet dispatched
        _append(out, ev_id, ev_type, ev_data, retry, None, cut=True)
        out.complete = False
    out.last_id = last_id
    return out


def _append(out: SseStream, ev_id: str | None, ev_type: str | None, ev_data: list[str], retry: int | None,
            ts: float | None, cut: bool = False) -> None:
    out.count += 1
    if len(out.events) >= MAX_EVENTS:
        out.flags.add("sse_events_cut")
        return
    joined = "\n".join(ev_data)
    out.events.append(SseEvent(ev_id, ev_type, joined, len(joined.encode("utf-8", "surrogatepass")), retry, ts,
                               cut))


def _header(headers: Headers, name: str) -> str | None:
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def sse_info(ex: Exchange) -> SseStream | None:
    """The response of the exchange read as an event stream, or None when it is not one."""
    body = ex.response_body
    if body is None or not is_event_stream(_header(ex.response_headers, "content-type")):
        return None
    return parse_events(body)
