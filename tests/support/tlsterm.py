"""A small TLS terminator for end-to-end tests, as a load balancer in front of a cleartext backend.

``TlsTerminator(backend_port, keylog, alpn=["h2"])`` listens on 127.0.0.1 with a self-signed certificate
(``cert_pem``) and Python's ``ssl`` (OpenSSL) logging every session's secrets to ``keylog``; each
accepted connection is forwarded byte for byte, both ways, to ``127.0.0.1:backend_port``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from tests.support.otlp_receiver import make_cert


def _relay(tls: ssl.SSLSocket, back: socket.socket) -> None:
    """Both directions in one thread (an SSL object is not to be read and written from two threads)."""
    tls.setblocking(False)
    back.setblocking(False)
    to_back = bytearray()
    to_tls = bytearray()
    tls_open = back_open = True
    while tls_open or back_open or to_back or to_tls:
        rlist = ([tls] if tls_open else []) + ([back] if back_open else [])
        wlist = ([back] if to_back else []) + ([tls] if to_tls else [])
        if not rlist and not wlist:
            break
        if tls.pending():
            readable: list[socket.socket] = [tls]
            writable: list[socket.socket] = []
        else:
            readable, writable, _ = select.select(rlist, wlist, [], 10.0)
            if not readable and not writable:
                break
        if tls in readable:
            try:
                data = tls.recv(65536)
                if data:
                    to_back += data
                else:
                    tls_open = False
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except OSError:
                tls_open = False
            if not tls_open and not to_back:
                _shut(back)
        if back in readable:
            try:
                data = back.recv(65536)
                if data:
                    to_tls += data
                else:
                    back_open = False
            except BlockingIOError:
                pass
            except OSError:
                back_open = False
        if to_back and back in writable:
            try:
                n = back.send(to_back)
                del to_back[:n]
            except BlockingIOError:
                pass
            except OSError:
                to_back.clear()
            if not tls_open and not to_back:
                _shut(back)
        if to_tls and tls in writable:
            try:
                n = tls.send(to_tls)
                del to_tls[:n]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except OSError:
                to_tls.clear()
        if not back_open and not to_tls and tls_open:
            tls_open = False  # the backend closed and all of its bytes went out: close the client side
    for s in (tls, back):
        with contextlib.suppress(OSError):
            s.close()


def _shut(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_WR)


class TlsTerminator:
    def __init__(self, backend_port: int, keylog: str | Path, *, alpn: list[str] | None = None,
                 tls_max: ssl.TLSVersion | None = None) -> None:
        self.backend_port = backend_port
        self.cert_pem, key_pem = make_cert()
        self._dir = tempfile.TemporaryDirectory()
        cert = Path(self._dir.name, "cert.pem")
        key = Path(self._dir.name, "key.pem")
        cert.write_bytes(self.cert_pem)
        key.write_bytes(key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(alpn or ["h2"])
        if tls_max is not None:
            ctx.maximum_version = tls_max
        ctx.keylog_filename = str(keylog)
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._stopped = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, raw: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        back = socket.create_connection(("127.0.0.1", self.backend_port))
        self._conns += [tls, back]
        _relay(tls, back)

    def stop(self) -> None:
        self._stopped = True
        self.sock.close()
        for t in self._threads:
            t.join(5)
        for s in self._conns:
            with contextlib.suppress(OSError):
                s.close()
        self._dir.cleanup()

    def __enter__(self) -> TlsTerminator:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
