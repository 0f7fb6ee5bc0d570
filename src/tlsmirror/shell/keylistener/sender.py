"""Send NSS key log lines to a key listener the way the F5 iRule does: one connection per TLS session.

For operators testing the path from a load balancer to the sensor (``tlsmirror keys send``). Lines
are checked with the key log parser first and grouped by the session they belong to (the client
random, or the first field for RSA labels); each group goes over its own connection. After sending,
the sender closes its side and waits for the listener to close too, so a refusal (a client
certificate it does not accept, a source address it does not allow) is reported, not missed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from ...keys.errors import KeyLogError
from ...keys.keylog import parse_keylog_line
from ..errors import InputError, SendError

__all__ = ["Session", "client_context", "group_sessions", "parse_target", "send_session"]


@dataclass(frozen=True, slots=True)
class Session:
    """The key log lines of one TLS session, in the order given."""

    ident: bytes  # client random (or session id / encrypted pre-master prefix for RSA labels)
    labels: tuple[str, ...]
    lines: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.ident[:4].hex()}... {' '.join(self.labels)}"

    def payload(self) -> bytes:
        return "".join(line + "\n" for line in self.lines).encode("ascii")


def group_sessions(lines: Iterable[str], source: str = "line") -> list[Session]:
    """Valid key log lines grouped by session, in order of first appearance.

    Blank and comment lines are skipped; a malformed line raises InputError naming it (not its secret).
    """
    order: dict[bytes, tuple[list[str], list[str]]] = {}
    for no, raw in enumerate(lines, start=1):
        text = raw.strip()
        try:
            secret = parse_keylog_line(text)
        except KeyLogError as exc:
            raise InputError(f"{source} {no}: not a key log line: {exc}") from None
        if secret is None:
            continue
        labels, group = order.setdefault(secret.ident, ([], []))
        labels.append(secret.label)
        group.append(" ".join(text.split()))
    return [Session(ident, tuple(labels), tuple(group)) for ident, (labels, group) in order.items()]


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); InputError when malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise InputError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InputError(f"write an IPv6 address in brackets: [{host}]:{port_text}")
    try:
        port = int(port_text)
    except ValueError:
        raise InputError(f"not a port number in {text!r}") from None
    if not 0 < port < 65536:
        raise InputError(f"port out of range 1-65535 in {text!r}")
    return host, port


def client_context(ca: str | None = None, insecure: bool = False, cert: str | None = None,
                   key: str | None = None) -> ssl.SSLContext:
    """A TLS client context: verify the listener against ``ca`` (or the system store) unless ``insecure``;
    present ``cert``/``key`` for a listener that requires client certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            if ca:
                ctx.load_verify_locations(cafile=ca)
            else:
                ctx.load_default_certs()
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"cannot load the CA file {ca}: {exc}") from None
    if cert or key:
        if not (cert and key):
            raise InputError("a client certificate needs both --cert and --key")
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"cannot load the client certificate {cert} / key {key}: {exc}") from None
    return ctx


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the listener's certificate is not trusted ({exc.verify_message}); "
                "use --ca FILE or --insecure")
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc.__class__.__name__).lower().replace("_", " ")
        if any(word in reason for word in ("certificate required", "handshake failure", "unknown ca",
                                            "bad certificate")):
            return (f"TLS refused by the listener ({reason}): does it require a client certificate "
                    "(--cert/--key)?")
        if "eof" in reason or "unexpected eof" in reason:
            return ("the listener closed the connection during TLS (source address not allowed, or the "
                    "listener is plain TCP? see its log)")
        if "wrong version number" in reason or "record layer failure" in reason:
            return "the listener does not speak TLS (plain TCP? use --plain)"
        return f"TLS error: {reason}"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the listener running on that port?)"
    if isinstance(exc, ConnectionResetError):
        return ("connection reset by the listener before it confirmed (client certificate refused? source "
                "address not allowed? see its log)")
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return type(exc).__name__


def send_session(host: str, port: int, session: Session, context: ssl.SSLContext | None, *,
                 timeout: float = 5.0, server_hostname: str | None = None) -> None:
    """Send one session's lines over a new connection and wait for the listener to close it.

    ``context`` None = plain TCP. Raises SendError with a one-line reason.
    """
    data = session.payload()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if context is None:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while len(answer) < 200:  # the listener sends nothing back; wait for its close
                    chunk = sock.recv(200)
                    if not chunk:
                        break
                    answer += chunk
                if answer:
                    text = "".join(c if c.isprintable() else " " for c in answer.decode("ascii", "replace"))
                    raise SendError(f"{host}:{port}: the listener answered {text.strip()[:80]!r} "
                                    "(a TLS listener? drop --plain)")
                return
            name = (server_hostname or host) if context.check_hostname else None
            _send_tls(sock, context, name, data)
    except (OSError, ssl.SSLError) as exc:
        raise SendError(f"{host}:{port}: {_describe_error(exc)}") from None


def _send_tls(sock: socket.socket, context: ssl.SSLContext, name: str | None, data: bytes) -> None:
    """TLS over memory BIOs on a blocking socket: handshake, the lines, our close_notify, then read
    until the listener's close_notify. Only that counts as success: a listener that refuses the
    client certificate (TLS 1.3 does so after the handshake) answers with an alert instead."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname=name)

    def flush() -> None:
        if outgoing.pending:
            sock.sendall(outgoing.read())

    def fill() -> None:
        chunk = sock.recv(16384)
        if chunk:
            incoming.write(chunk)
        else:
            incoming.write_eof()

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            fill()
    try:
        obj.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            obj.unwrap()  # queue our close_notify
        flush()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the listener closed early: its alert (if any) is read below
    for _ in range(10000):  # bounded: the listener sends nothing but an alert or a close_notify
        try:
            chunk = obj.read(4096)
        except ssl.SSLWantReadError:
            fill()
            continue
        except ssl.SSLZeroReturnError:
            return
        if not chunk:
            return  # the listener's close_notify
    raise ssl.SSLError("the listener sent unexpected data")
