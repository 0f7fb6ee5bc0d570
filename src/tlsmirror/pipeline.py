"""The engine: wires frames -> tcp -> tls (-> http) for one worker. No I/O, no clock.

Input is frames (or segments) with their capture timestamps and secrets as they become known;
output is a list of events per call. Every per-flow error is contained in that flow.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .frames.addresses import ip_text
from .frames.decoder import FrameDecoder
from .frames.events import TcpSegment
from .keys.events import RsaKey, Secret
from .keys.store import KeyStore
from .tcp.events import Flow, FlowClosed, FlowOpened, StreamData, StreamGap
from .tcp.reassembly import FLOW_OVERHEAD, TcpReassembler
from .tls.context import TlsContext, state_key
from .tls.events import HandshakeFacts, ResumptionState, TlsEvent, TlsGap, TlsHandshake, TlsOutcome, TlsPlaintext
from .tls.session import OPEN_SESSION_OVERHEAD, TlsSession, looks_like_client_hello, looks_like_tls

if TYPE_CHECKING:  # the HTTP stage: imported by the first engine built with ``http`` (_load_http)
    from .calls import ApiCall, CallEvent, Connection, HttpIssue
    from .http.connection import HttpConnection
    from .http.events import Exchange, HttpEvent, HttpProblem
    from .inventory.routes import CallRouter, RouteTable

    EngineEvent = TlsEvent | CallEvent

STARTTLS_CHUNKS = 64  # a cleartext flow is watched this many chunks for a ClientHello (STARTTLS)
SNIFF_BYTES = 6  # bytes of a stream needed to tell TLS (record header + handshake type) from the rest

HTTP_FLOW_OVERHEAD = 3072  # the HTTP state of an open connection (2.9 kB of RSS, bench_memory --open-flows)

_PICKED_UP = frozenset(("picked_up",))  # the flag of calls on a connection decrypted from mid-stream

# EngineEvent (above, TlsEvent | CallEvent): what the engine emits: TLS events (each connection's
# handshake, plaintext, gaps, outcome) and, with ``http``, API calls and HTTP problems.


def _load_http() -> None:
    """Bind the HTTP stage's names in this module. ``decrypt`` never parses HTTP: without this, its
    start-up would import the HTTP parsers, the protocol readers and the route table for nothing."""
    global ApiCall, Connection, HttpIssue, HttpConnection, Exchange, HttpProblem, CallRouter, RouteTable
    from .calls import ApiCall, Connection, HttpIssue
    from .http.connection import HttpConnection
    from .http.events import Exchange, HttpProblem
    from .inventory.routes import CallRouter, RouteTable


_HTTP_STARTS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ",
                b"TRACE ", b"PRI * HTTP/2.0", b"HTTP/1.")


def looks_like_http(data: bytes) -> bool:
    return data.startswith(_HTTP_STARTS)


class _Sniff:
    """Flow.app of a flow whose first bytes came in pieces too small to tell what it is."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[StreamData] = []

    def ready(self) -> int:
        """The direction with enough bytes to decide, or -1."""
        size = [0, 0]
        for p in self.parts:
            size[p.direction] += len(p.data)
            if size[p.direction] >= SNIFF_BYTES:
                return p.direction
        return -1

    def merged(self, first: int) -> list[StreamData]:
        """The parts as one event per direction, ``first``'s direction first."""
        out = []
        for d in (first, first ^ 1):
            mine = [p for p in self.parts if p.direction == d]
            if mine:
                out.append(StreamData(mine[0].flow, d, mine[-1].ts, b"".join(p.data for p in mine)))
        return out


class _Cleartext:
    """Flow.app of a flow whose bytes are not TLS (yet: STARTTLS may switch it)."""

    __slots__ = ("chunks", "conn", "http", "partial")

    def __init__(self) -> None:
        self.chunks = 0
        self.partial: StreamData | None = None  # the start of what may be a ClientHello (STARTTLS)
        self.http: HttpConnection | None = None  # cleartext HTTP, when the engine reports exchanges
        self.conn: Connection | None = None


class EngineConfig:
    """Tunables of one engine (all sizes in bytes, times in seconds of packet time)."""

    __slots__ = (
        "body_limit",
        "expire_interval",
        "http",
        "idle_timeout",
        "key_ttl",
        "key_wait",
        "max_flow_buffer",
        "max_flows",
        "max_hold_bytes_per_session",
        "max_hold_bytes_total",
        "max_keys",
        "max_total_buffer",
        "ports",
        "routes",
        "share_resumption",
    )

    def __init__(self, *, ports: Iterable[int] | None = None, idle_timeout: float = 300.0,
                 key_wait: float = 30.0, max_flow_buffer: int = 4 << 20, max_total_buffer: int = 256 << 20,
                 max_flows: int = 200_000, max_hold_bytes_per_session: int = 4 << 20,
                 max_hold_bytes_total: int = 256 << 20, expire_interval: float = 1.0,
                 http: bool = False, body_limit: int = 128 * 1024, key_ttl: float | None = None,
                 max_keys: int = 1_000_000, routes: bool | dict[str, Any] = True,
                 share_resumption: bool = False) -> None:
        self.ports = frozenset(ports) if ports else None
        self.idle_timeout = idle_timeout
        self.key_wait = key_wait  # ciphertext held this long for a missing key is dropped (0: no wait)
        self.max_flow_buffer = max_flow_buffer
        self.max_total_buffer = max_total_buffer
        self.max_flows = max_flows
        self.max_hold_bytes_per_session = max_hold_bytes_per_session
        self.max_hold_bytes_total = max_hold_bytes_total
        self.expire_interval = expire_interval
        self.http = http  # also parse HTTP and emit ApiCall / HttpIssue events
        self.body_limit = body_limit
        # Secrets not used within key_ttl (of the time they were added) are dropped; None keeps them
        # (offline runs, where key logs are loaded at time 0).
        self.key_ttl = key_ttl
        self.max_keys = max_keys
        # with ``http``: every API call gets its route template from one route table of this engine
        # (True: an empty one; a dict: RouteTable.to_dict() to start from: seeds, state; False: none)
        self.routes = routes
        # emit ResumptionState events (TLS 1.2 session id / ticket -> master secret) and take other
        # sensors' ones (Engine.add_resumption): for sensors that share their secrets (keys.fabric)
        self.share_resumption = share_resumption


def _connection(flow: Flow, client_dir: int, sess: TlsSession | None) -> Connection:
    c, s = client_dir, client_dir ^ 1
    ends = (flow.id, ip_text(flow.addr[c]), flow.port[c], ip_text(flow.addr[s]), flow.port[s])
    if sess is None:
        return Connection(*ends, False)
    return Connection(*ends, True, sess.version_name, sess.suite.name if sess.suite else None,
                      sess.sni, sess.alpn)


class _TlsHttp:
    """HTTP parsing attached to one TLS session (``TlsSession.user``)."""

    __slots__ = ("_conn_info", "conn", "picked_up", "sess")

    def __init__(self, sess: TlsSession, body_limit: int) -> None:
        self.sess = sess
        # picked up mid-stream: HTTP starts at the next message (h1) or frame (h2), calls are flagged
        self.picked_up = sess.picked_up
        self.conn = HttpConnection(alpn=sess.alpn, body_limit=body_limit, midstream=sess.picked_up)
        self._conn_info: Connection | None = None

    def connection(self) -> Connection:
        info = self._conn_info
        # TLS 1.3 reads ALPN from the encrypted handshake, which may decrypt after the first data
        if info is None or info.alpn != self.sess.alpn:
            info = self._conn_info = _connection(self.sess.flow, self.sess.client_dir, self.sess)
        return info


class Engine:
    """frames -> TCP streams -> TLS plaintext, for one process."""

    def __init__(self, config: EngineConfig | None = None, *, rsa_keys: list[RsaKey] | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        self.frames = FrameDecoder()
        # the reassembly budget counts each open flow with what its TLS (and HTTP) state costs
        flow_overhead = FLOW_OVERHEAD + OPEN_SESSION_OVERHEAD + (HTTP_FLOW_OVERHEAD if cfg.http else 0)
        self.tcp = TcpReassembler(idle_timeout=cfg.idle_timeout, max_flow_buffer=cfg.max_flow_buffer,
                                  max_total_buffer=cfg.max_total_buffer, max_flows=cfg.max_flows,
                                  flow_overhead=flow_overhead)
        self.keys = KeyStore(max_entries=cfg.max_keys, ttl=cfg.key_ttl)
        self.tls = TlsContext(self.keys, rsa_keys,
                              max_hold_bytes_per_session=cfg.max_hold_bytes_per_session,
                              max_hold_bytes_total=cfg.max_hold_bytes_total)
        self.tls.share_resumption = cfg.share_resumption
        self._waiting: dict[bytes, set[TlsSession]] = {}
        # Sessions holding ciphertext for a key, oldest first (value: held_since). Checked against
        # key_wait in _expire from the front only: no scan of all flows.
        self._holding: dict[TlsSession, float] = {}
        # Sessions whose TCP flow ended while they held ciphertext for a key: their outcome waits for
        # the key, for key_wait, or for finish() (value: close time).
        self._deferred: dict[TlsSession, float] = {}
        self._next_expire = 0.0
        self._frames = 0  # per-packet counters as plain ints; ``stats`` folds them in
        self._segments = 0
        self._stats: dict[str, int] = {"frames": 0, "segments": 0, "filtered": 0, "tls_flows": 0,
                                      "other_flows": 0}
        self.last_ts = 0.0
        self.router: CallRouter | None = None
        if cfg.http:
            _load_http()
        if cfg.http and cfg.routes is not False:
            table = RouteTable.from_dict(cfg.routes) if isinstance(cfg.routes, dict) else RouteTable()
            self.router = CallRouter(table)

    # ------------------------------------------------------------------ input
    @property
    def stats(self) -> dict[str, int]:
        """Engine counters: frames, segments, filtered, tls_flows, other_flows, starttls_flows, picked_up
        (TLS connections decrypted from mid-stream, their handshake not seen)."""
        self._stats["frames"] = self._frames
        self._stats["segments"] = self._segments
        self._stats["picked_up"] = self.tls.picked_up
        return self._stats

    def feed_frame(self, linktype: int, data: bytes, ts: float) -> list[EngineEvent]:
        self._frames += 1
        seg = self.frames.decode(linktype, data, ts)
        if seg is None:
            return []
        return self.feed_segment(seg)

    def feed_segment(self, seg: TcpSegment) -> list[EngineEvent]:
        ports = self.config.ports
        if ports is not None and seg.sport not in ports and seg.dport not in ports:
            self._stats["filtered"] += 1
            return []
        self._segments += 1
        ts = seg.ts
        if ts > self.last_ts:
            self.last_ts = ts
        out: list[EngineEvent] = []
        for ev in self.tcp.feed(seg):
            if type(ev) is StreamData:
                app = ev.flow.app
                if type(app) is TlsSession:  # the common case: more bytes of a known TLS connection
                    self._tls_data(app, ev, out)
                    continue
            self._tcp_event(ev, out)
        if ts >= self._next_expire:
            self._next_expire = ts + self.config.expire_interval
            self._expire(ts, out)
        return out

    def add_secrets(self, secrets: Iterable[Secret], ts: float, *, pinned: bool = False) -> list[EngineEvent]:
        """Secrets became known at ``ts``: store them and wake the sessions waiting for them.

        ``pinned``: keep them whatever ``key_ttl`` says (key log files given to a capture-file run)."""
        out: list[EngineEvent] = []
        woken: list[TlsSession] = []
        # Secrets given before any packet (key log files) start their TTL at the first packet.
        stamp = max(ts, self.last_ts) if self.last_ts else None
        for s in secrets:
            self.keys.add(s, stamp, pinned=pinned)
            sessions = self._waiting.get(s.ident)
            if sessions:
                woken.extend(sessions)
        self._wake(woken, ts, out)
        return out

    def add_resumption(self, states: Iterable[ResumptionState], ts: float) -> list[EngineEvent]:
        """Resumption states of other sensors (session id or ticket digest -> master secret) became known
        at ``ts``: cache them and wake the sessions resuming one. A state of an unknown kind is ignored."""
        out: list[EngineEvent] = []
        woken: list[TlsSession] = []
        cache = self.tls.cache
        for st in states:
            key = state_key(st)
            if key is None:
                continue
            cache.put_key(key, st.master)
            sessions = self._waiting.get(key)
            if sessions:
                woken.extend(sessions)
        self._wake(woken, ts, out)
        return out

    def _wake(self, woken: list[TlsSession], ts: float, out: list[EngineEvent]) -> None:
        for sess in dict.fromkeys(woken):
            sess.keys_changed(ts)
            self._drain(sess, out)
            if sess.settled:
                self._unwait(sess)
            if sess.held_since is None:
                self._holding.pop(sess, None)
            if sess in self._deferred and not sess.blocked:
                self._close_tls(sess, self._deferred[sess], out)  # the time it ended

    def add_facts(self, facts: Iterable[HandshakeFacts]) -> None:
        """Handshake facts of connections (from another sensor, or an earlier run that saw their
        handshakes): a connection on one of their 4-tuples whose handshake this engine does not see is
        decrypted from mid-stream, with the key log's secrets of its client random."""
        index = self.tls.facts
        for f in facts:
            index.add(f)

    def expire(self, now: float) -> list[EngineEvent]:
        out: list[EngineEvent] = []
        self._expire(now, out)
        return out

    def finish(self) -> list[EngineEvent]:
        """End of input: flush every flow and report every TLS connection."""
        out: list[EngineEvent] = []
        # Connections that ended earlier and still waited for a key first (in the order they ended),
        # then the ones open at the end of input.
        for sess, ts in list(self._deferred.items()):
            self._close_tls(sess, ts, out)
        for ev in self.tcp.finish(self.last_ts):
            self._tcp_event(ev, out)
        for sess, ts in list(self._deferred.items()):
            self._close_tls(sess, ts, out)
        return out

    @property
    def sessions_waiting(self) -> int:
        """TLS sessions holding ciphertext until their key arrives (closed ones included)."""
        return len(self._holding) + sum(1 for s in self._deferred if s not in self._holding)

    # ------------------------------------------------------------------ internals
    def _tcp_event(self, ev: Any, out: list[EngineEvent]) -> None:
        # ``type(ev) is X`` in each test, not a saved ``type(ev)``: mypy narrows only the former, and
        # compiled, a narrowed event is read natively instead of by attribute lookups
        if type(ev) is StreamData:
            flow = ev.flow
            app = flow.app
            if app is None:
                if len(ev.data) < SNIFF_BYTES:
                    self._sniff(ev, out)
                    return
                if looks_like_tls(ev.data) or (not flow.syn_seen and self._known_tls(flow)):
                    app = flow.app = TlsSession(flow, self.tls, ev.ts)
                    self._stats["tls_flows"] += 1
                else:
                    app = flow.app = _Cleartext()
                    self._stats["other_flows"] += 1
                    if self.config.http and looks_like_http(ev.data):
                        app.http = HttpConnection(body_limit=self.config.body_limit)
                        app.conn = _connection(flow, 0, None)
                        self._http_events(app.conn, app.http.feed(ev.direction, ev.data, ev.ts), out)
                    return
            elif type(app) is _Cleartext:
                if app.http is not None:
                    assert app.conn is not None
                    self._http_events(app.conn, app.http.feed(ev.direction, ev.data, ev.ts), out)
                    return
                if app.chunks >= STARTTLS_CHUNKS:
                    return
                app.chunks += 1
                part = app.partial
                if part is not None and part.direction == ev.direction:
                    app.partial = None
                    ev = StreamData(flow, ev.direction, ev.ts, part.data + ev.data)
                if len(ev.data) < SNIFF_BYTES and ev.data[:1] == b"\x16":
                    app.partial = ev  # maybe the start of a ClientHello: wait for more
                    return
                if not looks_like_client_hello(ev.data):
                    return
                app = flow.app = TlsSession(flow, self.tls, ev.ts)  # STARTTLS
                self._stats["tls_flows"] += 1
                self._stats["starttls_flows"] = self._stats.get("starttls_flows", 0) + 1
            elif type(app) is _Sniff:
                self._sniff(ev, out)
                return
            self._tls_data(app, ev, out)
        elif type(ev) is StreamGap:
            if type(ev.flow.app) is _Sniff:
                self._unsniff(ev.flow, out)
            app = ev.flow.app
            if isinstance(app, TlsSession):
                app.gap(ev.direction, ev.size, ev.ts)
                self._drain(app, out)
            elif isinstance(app, _Cleartext) and app.http is not None and app.conn is not None:
                self._http_events(app.conn, app.http.gap(ev.direction, ev.size, ev.ts), out)
        elif type(ev) is FlowClosed:
            if type(ev.flow.app) is _Sniff:
                self._unsniff(ev.flow, out)
            app = ev.flow.app
            if isinstance(app, TlsSession):
                if app.blocked and self.config.key_wait > 0:
                    self._deferred[app] = ev.ts  # its keys may still come: decide later
                    app.ended()
                    if self.tls.charge > self.tls.max_hold_bytes_total:
                        self._evict(out)
                else:
                    self._close_tls(app, ev.ts, out)
            elif isinstance(app, _Cleartext) and app.http is not None and app.conn is not None:
                self._http_events(app.conn, app.http.close(ev.ts), out)
            ev.flow.app = None
        elif type(ev) is FlowOpened:
            pass

    def _known_tls(self, flow: Flow) -> bool:
        """A flow picked up mid-record (no SYN, its first bytes not a TLS header) that handshake facts
        say is TLS: its session finds the record framing and picks it up."""
        facts = self.tls.facts
        for c in (0, 1):
            key = (flow.addr[c], flow.port[c], flow.addr[c ^ 1], flow.port[c ^ 1])
            if facts.for_tuple(key) is not None:
                return True
        return False

    def _tls_data(self, app: TlsSession, ev: StreamData, out: list[EngineEvent]) -> None:
        app.data(ev.direction, ev.data, ev.ts)
        if app.out:
            self._drain(app, out)
        if not app.settled:
            if len(app.wait_idents) > app.registered:
                self._register_wait(app)
            if app.held_since is not None and app not in self._holding:
                self._holding[app] = app.held_since
            if self.tls.charge > self.tls.max_hold_bytes_total:
                self._evict(out)

    # ------------------------------------------------------------------ http
    def _drain(self, sess: TlsSession, out: list[EngineEvent]) -> None:
        """Pass on what a TLS session emitted, in order: to ``out``, and to its HTTP parser when the
        engine reports exchanges (the one place where TLS events reach the HTTP stage)."""
        events = sess.out
        if not events:
            return
        if not self.config.http:
            out.extend(events)
            events.clear()
            return
        user = sess.user
        # typed, not Any: compiled, the HTTP stage is then called natively
        http: _TlsHttp | None = user if type(user) is _TlsHttp else None
        for ev in events:
            out.append(ev)
            if type(ev) is TlsPlaintext:  # (narrows ev, see _tcp_event)
                if http is None:
                    http = _TlsHttp(sess, self.config.body_limit)
                    sess.user = http
                self._http_events(http.connection(), http.conn.feed(ev.direction, ev.data, ev.ts), out,
                                  http.picked_up)
            elif type(ev) is TlsHandshake:
                pass
            elif type(ev) is TlsGap:
                if http is not None:
                    self._http_events(http.connection(), http.conn.gap(ev.direction, ev.size, ev.ts), out,
                                      http.picked_up)
            elif type(ev) is TlsOutcome and http is not None:
                self._http_events(http.connection(), http.conn.close(ev.ts), out, http.picked_up)
        events.clear()

    def _http_events(self, conn: Connection, events: list[HttpEvent], out: list[EngineEvent],
                     picked_up: bool = False) -> None:
        router = self.router
        for ev in events:
            if type(ev) is Exchange:
                if picked_up:
                    ev.flags = ev.flags | _PICKED_UP
                path = ev.path
                if router is not None and path is not None:
                    host = ev.authority or f"{conn.server_ip}:{conn.server_port}"
                    out.append(ApiCall(conn, ev, router.template(host, path)))
                else:
                    out.append(ApiCall(conn, ev))
            elif type(ev) is HttpProblem:
                out.append(HttpIssue(conn, ev))

    def _register_wait(self, sess: TlsSession) -> None:
        waiting = self._waiting
        idents = sess.wait_idents
        sess.registered = len(idents)
        for ident in idents:
            bucket = waiting.get(ident)
            if bucket is None:
                waiting[ident] = {sess}
            else:
                bucket.add(sess)

    def _unwait(self, sess: TlsSession) -> None:
        waiting = self._waiting
        for ident in sess.wait_idents:
            bucket = waiting.get(ident)
            if bucket is not None:
                bucket.discard(sess)
                if not bucket:
                    del waiting[ident]
        sess.registered = 0

    def _sniff(self, ev: StreamData, out: list[EngineEvent]) -> None:
        """Collect the first bytes of a flow until there are enough to tell TLS from the rest."""
        flow = ev.flow
        app = flow.app
        if app is None:
            app = flow.app = _Sniff()
        app.parts.append(ev)
        if app.ready() >= 0:
            self._unsniff(flow, out)

    def _unsniff(self, flow: Flow, out: list[EngineEvent]) -> None:
        """Decide on what was collected (enough, or all there will be) and feed it on."""
        app = flow.app
        assert type(app) is _Sniff
        first = app.ready()
        events = app.merged(first if first >= 0 else app.parts[0].direction)
        flow.app = None
        for i, ev in enumerate(events):
            if i == 0 and len(ev.data) < SNIFF_BYTES:
                # The flow ends (or breaks) before its first bytes could tell: decide on what there is.
                flow.app = TlsSession(flow, self.tls, ev.ts) if looks_like_tls(ev.data) else _Cleartext()
                self._stats["tls_flows" if type(flow.app) is TlsSession else "other_flows"] += 1
            self._tcp_event(ev, out)

    def _close_tls(self, sess: TlsSession, ts: float, out: list[EngineEvent]) -> None:
        sess.close(ts)
        self._unwait(sess)
        self._holding.pop(sess, None)
        self._deferred.pop(sess, None)
        self._drain(sess, out)

    def _evict(self, out: list[EngineEvent]) -> None:
        """Over the total hold budget: give up the held records of the oldest sessions until within it,
        those whose flow ended first (in the order they ended: reported now), then the oldest holders.
        Each is counted (``tls.evicted_sessions``, ``tls.evicted_bytes``) and its outcome says
        ``held="evicted"`` and how many bytes it lost."""
        ctx = self.tls
        limit = ctx.max_hold_bytes_total
        why = "total hold budget exceeded"
        deferred = self._deferred
        while ctx.charge > limit and deferred:
            sess, ended = next(iter(deferred.items()))
            ctx.evicted_sessions += 1
            ctx.evicted_bytes += sess.give_up(why, evicted=True)
            self._close_tls(sess, ended, out)
        holding = self._holding
        tries = len(holding)
        while ctx.charge > limit and holding and tries > 0:
            tries -= 1
            sess = next(iter(holding))
            del holding[sess]
            since = sess.held_since  # a local: narrowing the attribute would outlive give_up (compiled)
            if since is None:
                continue
            ctx.evicted_sessions += 1
            ctx.evicted_bytes += sess.give_up(why, evicted=True)
            self._drain(sess, out)
            if sess.held_since is not None:
                holding[sess] = sess.held_since  # what it still holds (a run of records given up)

    def _expire(self, now: float, out: list[EngineEvent]) -> None:
        for ev in self.tcp.expire(now):
            self._tcp_event(ev, out)
        self.keys.expire(now)
        self.tls.cache.expire(now)
        holding = self._holding
        if not holding:
            return
        wait = self.config.key_wait
        limit = now - wait
        while holding:
            sess, since = next(iter(holding.items()))
            if since > limit:
                break
            del holding[sess]
            held_since = sess.held_since
            if held_since is None:
                continue  # released (or given up) since it was registered
            if held_since > limit:
                holding[sess] = held_since  # holding again, since later: back of the line
                continue
            sess.give_up(f"no key within {wait:g} s", limit)
            self._drain(sess, out)
            if sess.held_since is not None:
                holding[sess] = sess.held_since  # newer records stay held
            if sess in self._deferred and not sess.blocked:
                self._close_tls(sess, self._deferred[sess], out)
