"""The engine: wires frames -> tcp -> tls (-> http) for one worker. No I/O, no clock.

Input is frames (or segments) with their capture timestamps and secrets as they become known;
output is a list of events per call. Every per-flow error is contained in that flow.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .frames.decoder import FrameDecoder
from .frames.events import TcpSegment
from .keys.events import RsaKey, Secret
from .keys.store import KeyStore
from .tcp.events import FlowClosed, FlowOpened, StreamData, StreamGap
from .tcp.reassembly import TcpReassembler
from .tls.context import TlsContext
from .tls.session import TlsSession, looks_like_client_hello, looks_like_tls

STARTTLS_CHUNKS = 64  # a cleartext flow is watched this many chunks for a ClientHello (STARTTLS)


class _Cleartext:
    """Flow.app of a flow whose bytes are not TLS (yet: STARTTLS may switch it)."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks = 0


class EngineConfig:
    """Tunables of one engine (all sizes in bytes, times in seconds of packet time)."""

    __slots__ = ("expire_interval", "idle_timeout", "key_wait", "max_flow_buffer", "max_flows",
                 "max_hold_bytes_per_session", "max_hold_bytes_total", "max_total_buffer", "ports")

    def __init__(self, *, ports: Iterable[int] | None = None, idle_timeout: float = 300.0,
                 key_wait: float = 30.0, max_flow_buffer: int = 4 << 20, max_total_buffer: int = 256 << 20,
                 max_flows: int = 200_000, max_hold_bytes_per_session: int = 4 << 20,
                 max_hold_bytes_total: int = 256 << 20, expire_interval: float = 1.0) -> None:
        self.ports = frozenset(ports) if ports else None
        self.idle_timeout = idle_timeout
        self.key_wait = key_wait
        self.max_flow_buffer = max_flow_buffer
        self.max_total_buffer = max_total_buffer
        self.max_flows = max_flows
        self.max_hold_bytes_per_session = max_hold_bytes_per_session
        self.max_hold_bytes_total = max_hold_bytes_total
        self.expire_interval = expire_interval


class Engine:
    """frames -> TCP streams -> TLS plaintext, for one process."""

    def __init__(self, config: EngineConfig | None = None, *, rsa_keys: list[RsaKey] | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        self.frames = FrameDecoder()
        self.tcp = TcpReassembler(idle_timeout=cfg.idle_timeout, max_flow_buffer=cfg.max_flow_buffer,
                                  max_total_buffer=cfg.max_total_buffer, max_flows=cfg.max_flows)
        self.keys = KeyStore()
        self.tls = TlsContext(self.keys, rsa_keys,
                              max_hold_bytes_per_session=cfg.max_hold_bytes_per_session,
                              max_hold_bytes_total=cfg.max_hold_bytes_total)
        self._waiting: dict[bytes, set[TlsSession]] = {}
        self._next_expire = 0.0
        self.stats: dict[str, int] = {"frames": 0, "segments": 0, "filtered": 0, "tls_flows": 0,
                                      "other_flows": 0}
        self.last_ts = 0.0

    # ------------------------------------------------------------------ input
    def feed_frame(self, linktype: int, data: bytes, ts: float) -> list[Any]:
        self.stats["frames"] += 1
        seg = self.frames.decode(linktype, data, ts)
        if seg is None:
            return []
        return self.feed_segment(seg)

    def feed_segment(self, seg: TcpSegment) -> list[Any]:
        ports = self.config.ports
        if ports is not None and seg.sport not in ports and seg.dport not in ports:
            self.stats["filtered"] += 1
            return []
        self.stats["segments"] += 1
        ts = seg.ts
        if ts > self.last_ts:
            self.last_ts = ts
        out: list[Any] = []
        for ev in self.tcp.feed(seg):
            self._tcp_event(ev, out)
        if ts >= self._next_expire:
            self._next_expire = ts + self.config.expire_interval
            self._expire(ts, out)
        return out

    def add_secrets(self, secrets: Iterable[Secret], ts: float) -> list[Any]:
        """Secrets became known at ``ts``: store them and wake the sessions waiting for them."""
        out: list[Any] = []
        woken: list[TlsSession] = []
        for s in secrets:
            self.keys.add(s, ts)
            sessions = self._waiting.get(s.ident)
            if sessions:
                woken.extend(sessions)
        for sess in dict.fromkeys(woken):
            sess.keys_changed(ts, out)
            if sess.keys_ready:
                self._unwait(sess)
        return out

    def expire(self, now: float) -> list[Any]:
        out: list[Any] = []
        self._expire(now, out)
        return out

    def finish(self) -> list[Any]:
        """End of input: flush every flow and report every TLS connection."""
        out: list[Any] = []
        for ev in self.tcp.finish(self.last_ts):
            self._tcp_event(ev, out)
        return out

    # ------------------------------------------------------------------ internals
    def _tcp_event(self, ev: Any, out: list[Any]) -> None:
        cls = type(ev)
        if cls is StreamData:
            flow = ev.flow
            app = flow.app
            if app is None:
                if looks_like_tls(ev.data):
                    app = flow.app = TlsSession(flow, self.tls, ev.ts)
                    self.stats["tls_flows"] += 1
                else:
                    flow.app = _Cleartext()
                    self.stats["other_flows"] += 1
                    return
            elif type(app) is _Cleartext:
                if app.chunks >= STARTTLS_CHUNKS:
                    return
                app.chunks += 1
                if not looks_like_client_hello(ev.data):
                    return
                app = flow.app = TlsSession(flow, self.tls, ev.ts)  # STARTTLS
                self.stats["tls_flows"] += 1
                self.stats["starttls_flows"] = self.stats.get("starttls_flows", 0) + 1
            app.data(ev.direction, ev.data, ev.ts, out)
            if app.wait_idents and not app.keys_ready:
                self._register_wait(app)
        elif cls is StreamGap:
            app = ev.flow.app
            if isinstance(app, TlsSession):
                app.gap(ev.direction, ev.size, ev.ts, out)
        elif cls is FlowClosed:
            app = ev.flow.app
            if isinstance(app, TlsSession):
                app.close(ev.ts, out)
                self._unwait(app)
            ev.flow.app = None
        elif cls is FlowOpened:
            pass

    def _register_wait(self, sess: TlsSession) -> None:
        waiting = self._waiting
        for ident in sess.wait_idents:
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

    def _expire(self, now: float, out: list[Any]) -> None:
        for ev in self.tcp.expire(now):
            self._tcp_event(ev, out)
