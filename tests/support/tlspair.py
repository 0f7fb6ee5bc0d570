"""Real TLS sessions between two OpenSSL endpoints (Python ``ssl`` over MemoryBIO), fully recorded.

``run_session`` returns every byte each side sent, in order, together with the NSS key log lines the
client's OpenSSL wrote, so tests can check the decryptor against real traffic.

Two things CPython's ``ssl`` cannot do are reached through ``ctypes`` on the very ``SSL*`` objects the
``ssl`` module uses (located via the CPython object layout, validated before use): choosing TLS 1.3
cipher suites (``SSL_set_ciphersuites``) and sending a TLS 1.3 KeyUpdate (``SSL_key_update``). When
the layout check fails (another Python build), :func:`native_available` is False and those two
options raise :class:`NativeUnavailable` so callers can skip.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import itertools
import ssl
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dh, ec, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "NativeUnavailable",
    "TlsTranscript",
    "native_available",
    "run_session",
    "server_rsa_key_pem",
]

DEFAULT_REQUESTS = [b"GET /v1/items?limit=2 HTTP/1.1\r\nHost: api.example.test\r\n\r\n"]
DEFAULT_RESPONSES = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"]

SSL_OP_NO_EXTENDED_MASTER_SECRET = 1 << 0  # OpenSSL 3.0 values
SSL_OP_NO_ENCRYPT_THEN_MAC = 1 << 19
SSL_KEY_UPDATE_REQUESTED = 1

_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class NativeUnavailable(RuntimeError):
    """The ctypes route to OpenSSL is not usable on this Python build."""


@dataclass
class TlsTranscript:
    client_random: bytes
    keylog: str  # the NSS key log lines OpenSSL wrote for this session
    flights: list[tuple[int, bytes]]  # (0 = client->server / 1 = server->client, raw TLS bytes), in order
    app_c2s: bytes
    app_s2c: bytes
    version: str  # as ssl reports them, e.g. "TLSv1.2"
    cipher: str  # OpenSSL name, e.g. "ECDHE-RSA-AES128-GCM-SHA256"
    session_reused: bool = False
    alpn: str | None = None
    stream_c2s: bytes = field(default=b"", repr=False)  # all client->server bytes
    stream_s2c: bytes = field(default=b"", repr=False)


# ----------------------------------------------------------------------------- certificates

_CERTS: dict[str, tuple[bytes, bytes]] = {}


def _make_cert(kind: str) -> tuple[bytes, bytes]:
    if kind not in _CERTS:
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if kind == "rsa":
            key = rsa.generate_private_key(65537, 2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tlsmirror test {kind}")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("api.example.test")]), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _CERTS[kind] = (cert.public_bytes(serialization.Encoding.PEM), key_pem)
    return _CERTS[kind]


_DH_PARAMS: list[bytes] = []


def _dh_params_pem() -> bytes:
    """Finite-field DH parameters for DHE suites: RFC 7919's ffdhe2048 group from the openssl command (no
    generation); without it, 1024 bits generated (fast, fine at SECLEVEL=0; cryptography warns)."""
    if not _DH_PARAMS:
        try:
            pem = subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt",
                                  "group:ffdhe2048"], capture_output=True, check=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            pem = b""
        if b"BEGIN DH PARAMETERS" not in pem:
            pem = dh.generate_parameters(2, 1024).parameter_bytes(serialization.Encoding.PEM,
                                                                  serialization.ParameterFormat.PKCS3)
        _DH_PARAMS.append(pem)
    return _DH_PARAMS[0]


def server_rsa_key_pem() -> bytes:
    """The PKCS#8 PEM private key of the server's RSA certificate (for static-RSA tests)."""
    return _make_cert("rsa")[1]


# ----------------------------------------------------------------------------- ctypes route

_native: object = None  # None = not probed, False = unavailable, else the CDLL


def _libssl() -> ctypes.CDLL | None:
    global _native
    if _native is None:
        _native = False
        try:
            path = None
            if sys.platform.startswith("linux"):
                with open("/proc/self/maps") as maps:
                    for line in maps:
                        if "libssl.so" in line:
                            path = line.split()[-1]
                            break
            if path is not None:
                lib = ctypes.CDLL(path)
                lib.OpenSSL_version_num.restype = ctypes.c_ulong
                if lib.OpenSSL_version_num() == ssl.OPENSSL_VERSION_NUMBER:
                    lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
                    lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
                    lib.SSL_set_ciphersuites.restype = ctypes.c_int
                    lib.SSL_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
                    lib.SSL_key_update.restype = ctypes.c_int
                    lib.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
                    lib.SSL_is_server.restype = ctypes.c_int
                    lib.SSL_is_server.argtypes = [ctypes.c_void_p]
                    _native = lib
        except (OSError, AttributeError):
            _native = False
    return _native if isinstance(_native, ctypes.CDLL) else None


_PTR = ctypes.sizeof(ctypes.c_void_p)


def _ssl_pointer(obj: ssl.SSLObject) -> int:
    """The ``SSL*`` behind an SSLObject (CPython's PySSLSocket: HEAD, Socket, ssl, ctx), validated."""
    lib = _libssl()
    if lib is None:
        raise NativeUnavailable("libssl not reachable through ctypes")
    inner = obj._sslobj  # type: ignore[attr-defined]
    context = obj.context
    base = id(inner)
    head = 2 * _PTR  # PyObject_HEAD of a regular (non-debug, GIL) build
    if ctypes.c_void_p.from_address(base + head + 2 * _PTR).value != id(context):
        raise NativeUnavailable("unexpected _ssl object layout")
    ssl_ptr = ctypes.c_void_p.from_address(base + head + _PTR).value
    ctx_ptr = ctypes.c_void_p.from_address(id(context) + head).value
    if not ssl_ptr or lib.SSL_get_SSL_CTX(ssl_ptr) != ctx_ptr:
        raise NativeUnavailable("unexpected _ssl object layout")
    if bool(lib.SSL_is_server(ssl_ptr)) != obj.server_side:
        raise NativeUnavailable("unexpected _ssl object layout")
    return ssl_ptr


def native_available() -> bool:
    """Can this Python reach OpenSSL's SSL_set_ciphersuites / SSL_key_update?"""
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="x.test")
        _ssl_pointer(obj)
    except NativeUnavailable:
        return False
    return True


def _set_tls13_suites(obj: ssl.SSLObject, suites: str) -> None:
    lib = _libssl()
    assert lib is not None
    if lib.SSL_set_ciphersuites(_ssl_pointer(obj), suites.encode()) != 1:
        raise ValueError(f"OpenSSL rejected TLS 1.3 suites {suites}")


def _key_update(obj: ssl.SSLObject) -> None:
    lib = _libssl()
    assert lib is not None
    if lib.SSL_key_update(_ssl_pointer(obj), SSL_KEY_UPDATE_REQUESTED) != 1:
        raise RuntimeError("SSL_key_update failed")


# ----------------------------------------------------------------------------- contexts

_CONTEXTS: dict[tuple[object, ...], tuple[ssl.SSLContext, ssl.SSLContext, Path]] = {}
_counter = itertools.count()


def _contexts(
    tls_version: str,
    cipher: str | None,
    alpn: tuple[str, ...] | None,
    encrypt_then_mac: bool,
    extended_master_secret: bool,
    tmpdir: Path,
) -> tuple[ssl.SSLContext, ssl.SSLContext, Path]:
    key = (tls_version, cipher, alpn, encrypt_then_mac, extended_master_secret, str(tmpdir))
    if key in _CONTEXTS:
        return _CONTEXTS[key]
    version = _VERSIONS[tls_version]
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    tls12_ciphers = "ALL:COMPLEMENTOFALL" if cipher is None or cipher.startswith("TLS_") else cipher
    for ctx in (server, client):
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated; testing them is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
        ctx.set_ciphers(f"{tls12_ciphers}:@SECLEVEL=0")
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if not encrypt_then_mac:
            ctx.options |= SSL_OP_NO_ENCRYPT_THEN_MAC
        if not extended_master_secret:
            ctx.options |= SSL_OP_NO_EXTENDED_MASTER_SECRET
    for kind in ("rsa", "ecdsa"):
        cert_pem, key_pem = _make_cert(kind)
        cert_file = tmpdir / f"tlspair-{kind}-cert.pem"
        key_file = tmpdir / f"tlspair-{kind}-key.pem"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        server.load_cert_chain(cert_file, key_file)
    dh_file = tmpdir / "tlspair-dhparams.pem"
    dh_file.write_bytes(_dh_params_pem())
    server.load_dh_params(str(dh_file))
    keylog = tmpdir / f"tlspair-keylog-{next(_counter)}.txt"
    keylog.touch()
    client.keylog_filename = str(keylog)
    _CONTEXTS[key] = (server, client, keylog)
    return _CONTEXTS[key]


# ----------------------------------------------------------------------------- the session


class _Wire:
    def __init__(self, client: ssl.SSLObject, server: ssl.SSLObject, bios: list[ssl.MemoryBIO]) -> None:
        self.client, self.server = client, server
        self.c_in, self.c_out, self.s_in, self.s_out = bios
        self.flights: list[tuple[int, bytes]] = []

    def pump(self) -> bool:
        moved = False
        for direction, src, dst in ((0, self.c_out, self.s_in), (1, self.s_out, self.c_in)):
            data = src.read()
            if data:
                moved = True
                dst.write(data)
                if self.flights and self.flights[-1][0] == direction:
                    self.flights[-1] = (direction, self.flights[-1][1] + data)
                else:
                    self.flights.append((direction, data))
        return moved

    def handshake(self) -> None:
        done = [False, False]
        for _ in range(64):
            for i, side in enumerate((self.client, self.server)):
                if not done[i]:
                    try:
                        side.do_handshake()
                        done[i] = True
                    except ssl.SSLWantReadError:
                        pass
            moved = self.pump()
            if all(done) and not moved:
                return
        raise RuntimeError("handshake did not finish")

    def transfer(self, sender: ssl.SSLObject, receiver: ssl.SSLObject, data: bytes) -> bytes:
        if not data:
            return b""
        sender.write(data)
        self.pump()
        got = bytearray()
        for _ in range(10_000):
            try:
                chunk = receiver.read(len(data) - len(got))
            except ssl.SSLWantReadError:
                if not self.pump():
                    break
                continue
            got += chunk
            if len(got) >= len(data):
                self.pump()  # whatever reading produced (KeyUpdate responses, ...)
                return bytes(got)
        raise RuntimeError(f"only {len(got)} of {len(data)} bytes arrived")

    def close(self) -> None:
        for side in (self.client, self.server, self.client):
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                side.unwrap()
            self.pump()


def run_session(
    *,
    tls_version: str = "1.3",
    cipher: str | None = None,
    requests: list[bytes] | None = None,
    responses: list[bytes] | None = None,
    key_update: bool = False,
    session: ssl.SSLSession | None = None,
    alpn: list[str] | None = None,
    sni: str = "api.example.test",
    tmpdir: Path,
    encrypt_then_mac: bool = True,
    extended_master_secret: bool = True,
    close: bool = True,
) -> tuple[TlsTranscript, ssl.SSLSession | None]:
    """Run one TLS session in memory and record it.

    ``cipher``: an OpenSSL cipher string for TLS <= 1.2 (e.g. "ECDHE-RSA-AES128-SHA"), or a TLS 1.3
    suite name ("TLS_AES_128_CCM_SHA256", needs :func:`native_available`). ``key_update``: the client
    sends KeyUpdate(update_requested) before the first request, so both directions switch keys
    (needs :func:`native_available`). ``session``: a session from an earlier call with the same
    parameters and tmpdir, to resume. Requests and responses are exchanged pairwise.
    """
    requests = DEFAULT_REQUESTS if requests is None else requests
    responses = DEFAULT_RESPONSES if responses is None else responses
    tmpdir = Path(tmpdir)
    server_ctx, client_ctx, keylog_path = _contexts(
        tls_version, cipher, tuple(alpn) if alpn else None, encrypt_then_mac, extended_master_secret, tmpdir
    )
    keylog_start = keylog_path.stat().st_size
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname=sni or None, session=session)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    if cipher is not None and cipher.startswith("TLS_"):
        _set_tls13_suites(client, cipher)
        _set_tls13_suites(server, cipher)
    wire = _Wire(client, server, bios)
    wire.handshake()
    if key_update:
        if client.version() != "TLSv1.3":
            raise ValueError("key_update needs TLS 1.3")
        _key_update(client)
    c2s = bytearray()
    s2c = bytearray()
    for req, resp in itertools.zip_longest(requests, responses, fillvalue=b""):
        c2s += wire.transfer(client, server, req)
        s2c += wire.transfer(server, client, resp)
    new_session = client.session
    version, cipher_info = client.version() or "", client.cipher()
    reused, selected_alpn = client.session_reused, client.selected_alpn_protocol()
    if close:
        wire.close()
    with open(keylog_path, "rb") as f:
        f.seek(keylog_start)
        keylog = f.read().decode("ascii")
    first = wire.flights[0][1]
    transcript = TlsTranscript(
        client_random=first[11:43],
        keylog=keylog,
        flights=wire.flights,
        app_c2s=bytes(c2s),
        app_s2c=bytes(s2c),
        version=version,
        cipher=cipher_info[0] if cipher_info else "",
        session_reused=reused,
        alpn=selected_alpn,
        stream_c2s=b"".join(d for direction, d in wire.flights if direction == 0),
        stream_s2c=b"".join(d for direction, d in wire.flights if direction == 1),
    )
    return transcript, new_session
