"""A key listener running in a thread for tests, key log lines to send it, and the TLS material senders need."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tlsmirror.keys.events import Secret
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.shell.keylistener.server import (
    CERT_FILE,
    KeyServer,
    KeyServerConfig,
)

HOST = "127.0.0.1"


def cr(i: int) -> bytes:
    return bytes((i + k) % 256 for k in range(32))


def secret_hex(i: int, n: int = 48) -> str:
    return bytes((0xA0 + i + k) % 256 for k in range(n)).hex()


def line(i: int) -> str:
    return f"CLIENT_RANDOM {cr(i).hex()} {secret_hex(i)}"


class Listener:
    """A KeyServer in a background event loop thread, collecting what it delivers."""

    def __init__(self, config: KeyServerConfig, on_secrets: Callable[[list[Secret]], None] | None = None):
        self.config = config
        self.batches: list[list[Secret]] = []
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = KeyServer(config, on_secrets or self._collect)

    def _collect(self, batch: list[Secret]) -> None:
        with self._lock:
            self.batches.append(list(batch))

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def wrapper() -> Any:
            return fn()
        return self.run(wrapper())

    def start(self) -> Listener:
        self.thread.start()
        self.run(self.server.start())
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.server.bound_port

    @property
    def secrets(self) -> list[Secret]:
        with self._lock:
            return [s for b in self.batches for s in b]

    def stats(self) -> dict[str, int]:
        return dict(self.call(lambda: dict(self.server.stats)))

    def wait(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out; stats {self.stats()}")

    def wait_secrets(self, n: int, timeout: float = 5.0) -> list[Secret]:
        self.wait(lambda: len(self.secrets) >= n, timeout)
        return self.secrets


@contextlib.contextmanager
def listening(tmp_path: Path, **kw: Any) -> Iterator[Listener]:
    kw.setdefault("host", HOST)
    kw.setdefault("port", 0)
    kw.setdefault("state_dir", str(tmp_path / "state"))
    on_secrets = kw.pop("on_secrets", None)
    lst = Listener(KeyServerConfig(**kw), on_secrets).start()
    try:
        yield lst
    finally:
        lst.stop()


def client_ctx(tmp_path: Path, cert: str | None = None, key: str | None = None,
               version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(tmp_path / "state" / CERT_FILE))
    if cert and key:
        ctx.load_cert_chain(cert, key)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def send_tls(port: int, ctx: ssl.SSLContext, data: bytes, chunks: int = 1) -> None:
    """iRule style: connect, handshake, send, close (no waiting for the listener)."""
    with socket.create_connection((HOST, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        step = max(1, -(-len(data) // chunks))
        for i in range(0, len(data), step):
            tls.sendall(data[i:i + step])
            if chunks > 1:
                time.sleep(0.005)


def send_plain(port: int, data: bytes) -> None:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        s.recv(100)


def parsed(lines: list[str]) -> list[Secret]:
    secrets, problems = parse_keylog("\n".join(lines))
    assert not problems
    return secrets


def make_ca(tmp_path: Path, name: str) -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def make_client_cert(tmp_path: Path, ca: tuple[Any, Any], name: str) -> tuple[str, str]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    c, k = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return str(c), str(k)


# -- delivery -----------------------------------------------------------------------------------------
