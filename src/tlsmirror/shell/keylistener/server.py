"""The key listener: NSS key log lines over TCP (TLS by default) in, Secret events out.

A load balancer (the F5 iRule of ``tlsmirror f5 irule``) connects once per TLS session, sends the
session's key log lines and closes; a streaming sender keeps one connection and sends many lines.
Lines end in LF or CRLF and are parsed with :func:`tlsmirror.keys.keylog.parse_keylog_line`; the
secrets of one read are handed to ``on_secrets`` together.

Robustness: health monitors that connect and close without a byte are counted as probes; lines,
connections, handshakes and idle time are bounded; a malformed line is counted and skipped; when the
connection table is full the least recently active connection makes room, so a flood of idle or
slow connections cannot lock a sender out. Secrets never reach a log line or an error message:
only labels and the first 4 bytes of the client random are logged.

TLS runs over ``ssl.MemoryBIO`` so that the listener sees the first byte of every connection (a
probe, a plain-text sender, a TLS ClientHello) and so that handshake failures are counted, not
printed as tracebacks by asyncio.

One module on purpose (about 600 lines): the connection protocol and the server share the limits,
counters, allow-list and eviction; the certificate is in :mod:`.certs`, the sender in :mod:`.sender`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from ...keys.errors import KeyLogError
from ...keys.events import Secret
from ...keys.keylog import parse_keylog_line
from ..errors import InputError
from ..logs import RateLimit
from .certs import CERT_FILE, KEY_FILE, certificate_fingerprint, ensure_self_signed

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "NOT_TLS_ANSWER",
    "KeyServer",
    "KeyServerConfig",
    "RateLimitedLog",
    "certificate_fingerprint",
    "default_state_dir",
    "ensure_self_signed",
]

log = logging.getLogger("tlsmirror.keys")

_TLS_HANDSHAKE = 0x16
# The only bytes the listener ever writes outside TLS: to a plain-text sender on a TLS listener.
NOT_TLS_ANSWER = b"tlsmirror key listener: TLS required\n"
_READ_CHUNK = 65536
_STAT_NAMES = (
    "connections", "active", "probes", "bytes", "lines", "secrets", "malformed", "oversize",
    "refused_network", "refused_client_cert", "tls_failed", "not_tls", "idle_timeouts", "evicted",
    "callback_errors", "keylog_out_errors",
)


def default_state_dir() -> str:
    """Where the listener keeps its generated certificate when no state_dir is configured."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "tlsmirror")


@dataclass
class KeyServerConfig:
    """Settings of the key listener. ``allow`` empty = every source address may connect."""

    host: str = "0.0.0.0"
    port: int = 8001
    tls: bool = True
    cert: str | None = None
    key: str | None = None
    state_dir: str = field(default_factory=default_state_dir)
    client_ca: str | None = None
    allow: list[str] = field(default_factory=list)
    keylog_out: str | None = None
    max_line: int = 4096
    max_connections: int = 1024
    idle_timeout: float = 10.0
    log_per_minute: int = 10  # log messages per reason per minute; the rest are counted and summarised


class RateLimitedLog:
    """At most ``per_minute`` messages per reason per minute on average (bursts of ``per_minute``), through
    the shell's one :class:`~tlsmirror.shell.logs.RateLimit`; the next message through says how many of its
    reason were suppressed."""

    def __init__(self, logger: logging.Logger, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self._log = logger
        self._limit = RateLimit(per_minute / 60.0, burst=per_minute, clock=clock)

    def __call__(self, level: int, reason: str, msg: str, *args: object) -> None:
        skipped = self._limit.admit(reason)
        if skipped < 0:
            return
        if skipped:
            self._log.log(level, "%d more %r messages suppressed", skipped, reason)
        self._log.log(level, msg, *args)


def _parse_networks(allow: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for text in allow:
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise InputError(f"not a network (CIDR) in the key listener's allow list: {text!r}") from None
    return nets


# -- connections -------------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One sender's connection: TLS over memory BIOs (or plain), line splitting, deadlines."""

    def __init__(self, server: KeyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.sslobj: ssl.SSLObject | None = None
        self.incoming: ssl.MemoryBIO | None = None
        self.outgoing: ssl.MemoryBIO | None = None
        self.ready = False  # handshake done (always True for plain TCP)
        self.closed = False
        self.nbytes = 0
        self.nlines = 0
        self.buf = bytearray()
        self.discarding = False  # inside an oversize line: drop bytes up to the next newline
        now = time.monotonic()
        self.started = now
        self.last_activity = now
        self.line_started = 0.0  # when the buffer last went from empty to non-empty
        self.batch: list[Secret] = []
        self.batch_lines: list[bytes] = []

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._admit(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        srv = self.server
        first = self.nbytes == 0
        self.nbytes += len(data)
        srv.stats["bytes"] += len(data)
        srv._touch(self)
        if self.sslobj is not None:
            if first and data[0] != _TLS_HANDSHAKE:
                srv.stats["not_tls"] += 1
                srv._rlog(logging.WARNING, "not_tls",
                          "key sender %s does not speak TLS (plain key log lines on a TLS listener?); "
                          "give the sender a TLS client (F5: a server-ssl profile on the sideband virtual "
                          "server) or run the listener with plain TCP", self.peer)
                if self.transport is not None:
                    self.transport.write(NOT_TLS_ANSWER)
                self.close()
                return
            assert self.incoming is not None
            self.incoming.write(data)
            if not self.ready and not self._handshake():
                return
            self._read_tls()
        else:
            if first and data[0] == _TLS_HANDSHAKE:
                srv.stats["not_tls"] += 1
                srv._rlog(logging.WARNING, "not_tls",
                          "key sender %s starts a TLS handshake but this listener is plain TCP; "
                          "enable TLS on the listener or send plain lines", self.peer)
                self.close()
                return
            self._feed(data)
        self._deliver()
        self._flush()

    def eof_received(self) -> bool | None:
        if self.closed:
            return None
        if self.sslobj is not None:
            assert self.incoming is not None
            self.incoming.write_eof()
            if self.ready:
                self._read_tls()
            elif self.nbytes:
                self.server._tls_failure(self, "the sender closed the connection during the TLS handshake")
                self.close()
                return None
        self._finish_line()
        self._deliver()
        self.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._release(self)

    # TLS

    def _handshake(self) -> bool:
        assert self.sslobj is not None
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError as exc:
            self._flush()  # the alert, so the client learns why
            cert = "CERTIFICATE" in str(exc.reason or "").upper()
            self.server._tls_failure(self, _ssl_reason(exc), cert=cert)
            self.close()
            return False
        self.ready = True
        self._flush()
        return True

    def _read_tls(self) -> None:
        assert self.sslobj is not None
        while not self.closed:
            try:
                chunk = self.sslobj.read(_READ_CHUNK)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self._shutdown()
                return
            except ssl.SSLError as exc:
                if isinstance(exc, ssl.SSLEOFError) or "EOF" in str(exc.reason or "").upper():
                    # TCP closed without close_notify, after the handshake: the usual way senders
                    # close. Complete lines are in; a cut last line fails to parse and is counted.
                    self._finish_line()
                    self._deliver()
                    self.close()
                    return
                self.server._tls_failure(self, _ssl_reason(exc))
                self._deliver()
                self.close()
                return
            if not chunk:  # the sender's close_notify (or the end of the stream)
                self._shutdown()
                return
            self._feed(chunk)

    def _shutdown(self) -> None:
        """The sender closed TLS: answer its close_notify (so it knows every line was read), finish."""
        assert self.sslobj is not None
        with contextlib.suppress(ssl.SSLError):
            self.sslobj.unwrap()
        self._finish_line()
        self._deliver()
        self._flush()
        self.close()

    def _flush(self) -> None:
        if self.outgoing is not None and self.outgoing.pending and self.transport is not None:
            data = self.outgoing.read()
            if not self.transport.is_closing():
                self.transport.write(data)

    # lines

    def _feed(self, chunk: bytes) -> None:
        buf = self.buf
        if not buf:
            self.line_started = time.monotonic()
        buf += chunk
        max_line = self.server.config.max_line
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            end = nl
            if end > start and buf[end - 1] == 0x0D:
                end -= 1
            if self.discarding:
                self.discarding = False
            elif end - start > max_line:
                self.server._oversize(self)
            else:
                self._line(bytes(buf[start:end]))
            start = nl + 1
        if start:
            del buf[:start]
            if buf:
                self.line_started = time.monotonic()
        if len(buf) > max_line:
            if not self.discarding:
                self.server._oversize(self)
                self.discarding = True
            buf.clear()

    def _finish_line(self) -> None:
        """At the end of the stream: a last line without its newline still counts."""
        if self.buf and not self.discarding:
            line = bytes(self.buf).rstrip(b"\r")
            if len(line) > self.server.config.max_line:
                self.server._oversize(self)
            else:
                self._line(line)
        self.buf.clear()

    def _line(self, line: bytes) -> None:
        srv = self.server
        self.nlines += 1
        srv.stats["lines"] += 1
        try:
            secret = parse_keylog_line(line)
        except KeyLogError as exc:
            srv.stats["malformed"] += 1
            srv._rlog(logging.WARNING, "malformed", "skipped a malformed key log line from %s: %s",
                      self.peer, exc)
            return
        if secret is None:
            return
        self.batch.append(secret)
        self.batch_lines.append(line.strip())
        if log.isEnabledFor(logging.DEBUG):
            log.debug("key from %s: %s %s...", self.peer, secret.label, secret.ident[:4].hex())

    def _deliver(self) -> None:
        if self.batch:
            batch, lines = self.batch, self.batch_lines
            self.batch, self.batch_lines = [], []
            self.server._deliver(batch, lines)

    # closing

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _ssl_reason(exc: ssl.SSLError) -> str:
    """A short TLS error description (OpenSSL reason codes carry no secrets)."""
    reason = exc.reason or exc.__class__.__name__
    return str(reason).lower().replace("_", " ")


# -- the server --------------------------------------------------------------------------------------


class KeyServer:
    """The key listener. ``await start()``, then secrets flow to ``on_secrets`` until ``await stop()``."""

    def __init__(self, config: KeyServerConfig, on_secrets: Callable[[list[Secret]], None]) -> None:
        self.config = config
        self.on_secrets = on_secrets
        self.stats: dict[str, int] = dict.fromkeys(_STAT_NAMES, 0)
        self.bound_port = 0
        self._networks = _parse_networks(config.allow)
        self._context: ssl.SSLContext | None = None
        self._server: asyncio.Server | None = None
        self._conns: dict[_Connection, None] = {}  # ordered by last activity, least recent first
        self._sweeper: asyncio.Task[None] | None = None
        self._keylog_out: IO[bytes] | None = None
        self._rlog = RateLimitedLog(log, config.log_per_minute)
        self.cert_path: str | None = None
        if config.max_connections < 1 or config.max_line < 64 or config.idle_timeout <= 0:
            raise InputError("key listener limits: max_connections >= 1, max_line >= 64, idle_timeout > 0")

    # lifecycle

    async def start(self) -> None:
        cfg = self.config
        if cfg.tls:
            self._context = self._build_context()
        self._open_keylog_out()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Connection(self), cfg.host or None, cfg.port,
                                                    reuse_address=True, backlog=512)
        except OSError as exc:
            self._close_keylog_out()
            raise InputError(f"key listener cannot listen on {cfg.host}:{cfg.port}: "
                             f"{exc.strerror or exc}") from None
        self.bound_port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = loop.create_task(self._sweep())
        if cfg.tls:
            fp = certificate_fingerprint(self.cert_path or "")
            log.info("key listener on %s:%d (TLS%s), certificate %s, sha256 fingerprint %s", cfg.host,
                     self.bound_port, ", client certificates required" if cfg.client_ca else "",
                     self.cert_path, fp or "?")
        else:
            log.warning("key listener on %s:%d is PLAIN TCP: session secrets cross the network unencrypted "
                        "and anyone who can reach this port can read or inject them; use it only on an "
                        "isolated management network, and restrict senders with an allow list",
                        cfg.host, self.bound_port)
        if self._networks:
            log.info("key listener accepts senders from %s", ", ".join(str(n) for n in self._networks))

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn._deliver()
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        self._close_keylog_out()

    def reload_certificates(self) -> None:
        """Load the certificate, key and client CA again (SIGHUP). New connections use them; on error
        the old ones stay and InputError is raised."""
        if self.config.tls:
            self._context = self._build_context()
            log.info("key listener certificates reloaded (sha256 fingerprint %s)",
                     certificate_fingerprint(self.cert_path or "") or "?")

    def reopen(self) -> None:
        """Reopen the keylog_out file (after log rotation)."""
        self._close_keylog_out()
        self._open_keylog_out()

    # certificates

    def _build_context(self) -> ssl.SSLContext:
        cfg = self.config
        if cfg.cert or cfg.key:
            if not (cfg.cert and cfg.key):
                raise InputError("the key listener needs both a certificate and its key (or neither, for a "
                                 "self-signed certificate)")
            cert, key = cfg.cert, cfg.key
        else:
            cert, key = ensure_self_signed(cfg.state_dir, cfg.host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # No session tickets: a sender that closes right after sending would leave them unread, and
        # its kernel would answer with a reset that can discard the lines it just sent.
        ctx.num_tickets = 0
        ctx.options |= ssl.OP_NO_TICKET
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise InputError(f"cannot load the key listener certificate {cert} / key {key}: "
                             f"{_ssl_reason(exc)}") from None
        except OSError as exc:
            raise InputError(f"cannot load the key listener certificate {cert} / key {key}: "
                             f"{exc.strerror or exc}") from None
        if cfg.client_ca:
            try:
                ctx.load_verify_locations(cafile=cfg.client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise InputError(f"cannot load the client CA bundle {cfg.client_ca}: {exc}") from None
            ctx.verify_mode = ssl.CERT_REQUIRED
        self.cert_path = cert
        return ctx

    # keylog_out

    def _open_keylog_out(self) -> None:
        path = self.config.keylog_out
        if not path:
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise InputError(f"cannot open keylog_out {path}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            # a regular file (new, or there before with any mode) holds secrets: 0600, or refuse
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o600:
                try:
                    os.fchmod(fd, 0o600)
                except OSError as exc:
                    raise InputError(
                        f"keylog_out {path} has mode {stat.S_IMODE(st.st_mode):04o} and cannot be made 0600 "
                        f"({exc.strerror or exc}; owned by uid {st.st_uid}): it would hold session secrets "
                        f"readable by others; chmod 600 it as its owner or choose another file") from None
            self._keylog_out = os.fdopen(fd, "ab")
        except BaseException:
            os.close(fd)
            raise

    def _close_keylog_out(self) -> None:
        if self._keylog_out is not None:
            with contextlib.suppress(OSError):
                self._keylog_out.close()
            self._keylog_out = None

    # called by connections

    def _admit(self, conn: _Connection) -> None:
        transport = conn.transport
        assert transport is not None
        self.stats["connections"] += 1
        peer = transport.get_extra_info("peername")
        addr = ""
        if isinstance(peer, tuple) and len(peer) >= 2:
            addr = str(peer[0])
            conn.peer = f"[{addr}]:{peer[1]}" if ":" in addr else f"{addr}:{peer[1]}"
        if self._networks and not self._allowed(addr):
            self.stats["refused_network"] += 1
            self._rlog(logging.WARNING, "refused_network",
                       "refused a key sender from %s: not in the allowed networks", conn.peer)
            conn.abort()
            return
        while len(self._conns) >= self.config.max_connections:
            oldest = next(iter(self._conns))
            self.stats["evicted"] += 1
            self._rlog(logging.WARNING, "evicted",
                       "key listener full (%d connections): closed the least recently active one, from %s",
                       len(self._conns), oldest.peer)
            self._forget(oldest)
            oldest.abort()
        self._conns[conn] = None
        self.stats["active"] = len(self._conns)
        if self._context is not None:
            conn.incoming = ssl.MemoryBIO()
            conn.outgoing = ssl.MemoryBIO()
            conn.sslobj = self._context.wrap_bio(conn.incoming, conn.outgoing, server_side=True)
        else:
            conn.ready = True

    def _allowed(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)

    def _touch(self, conn: _Connection) -> None:
        conn.last_activity = time.monotonic()
        conns = self._conns
        if conn in conns:
            del conns[conn]
            conns[conn] = None

    def _forget(self, conn: _Connection) -> bool:
        if conn in self._conns:
            del self._conns[conn]
            self.stats["active"] = len(self._conns)
            return True
        return False

    def _release(self, conn: _Connection) -> None:
        admitted = self._forget(conn)
        if admitted and conn.nlines == 0 and (conn.nbytes == 0 or (conn.sslobj is not None and conn.ready)):
            # A health monitor: connected (and maybe shook hands) and left without a line.
            self.stats["probes"] += 1
            log.debug("probe connection from %s", conn.peer)

    def _tls_failure(self, conn: _Connection, reason: str, cert: bool = False) -> None:
        if cert and self.config.client_ca:
            self.stats["refused_client_cert"] += 1
            self._rlog(logging.WARNING, "refused_client_cert",
                       "refused key sender %s: client certificate not accepted (%s)", conn.peer, reason)
        else:
            self.stats["tls_failed"] += 1
            self._rlog(logging.WARNING, "tls_failed", "TLS with key sender %s failed: %s", conn.peer, reason)

    def _oversize(self, conn: _Connection) -> None:
        self.stats["oversize"] += 1
        self.stats["malformed"] += 1
        self._rlog(logging.WARNING, "oversize", "skipped a line longer than %d bytes from %s",
                   self.config.max_line, conn.peer)

    def _deliver(self, batch: list[Secret], lines: list[bytes]) -> None:
        self.stats["secrets"] += len(batch)
        out = self._keylog_out
        if out is not None:
            try:
                out.write(b"".join(line + b"\n" for line in lines))
                out.flush()
            except OSError as exc:
                self.stats["keylog_out_errors"] += 1
                self._rlog(logging.ERROR, "keylog_out", "cannot write keylog_out %s: %s",
                           self.config.keylog_out, exc.strerror or exc)
        try:
            self.on_secrets(batch)
        except Exception as exc:
            self.stats["callback_errors"] += 1
            self._rlog(logging.ERROR, "callback", "the key consumer failed on %d secrets: %s",
                       len(batch), type(exc).__name__)

    async def _sweep(self) -> None:
        """Close connections past their deadline: idle, handshake not done, or a line not finished."""
        timeout = self.config.idle_timeout
        tick = min(1.0, max(0.05, timeout / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            expired = []
            for conn in self._conns:
                if (now - conn.last_activity > timeout
                        or (not conn.ready and now - conn.started > timeout)
                        or (conn.buf and now - conn.line_started > timeout)):
                    expired.append(conn)
            for conn in expired:
                self.stats["idle_timeouts"] += 1
                self._rlog(logging.INFO, "idle", "closed key sender %s: idle, slow handshake or unfinished "
                           "line for more than %.0f s", conn.peer, timeout)
                self._forget(conn)
                conn._deliver()
                conn.abort()
