"""The key listener's certificate: a self-signed one made once (mode 0600) and reused, and fingerprints."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import logging
import os
import socket
import ssl

from ..errors import InputError

log = logging.getLogger("tlsmirror.keys")
CERT_FILE = "keyserver-cert.pem"
KEY_FILE = "keyserver-key.pem"


def _write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 whatever the umask."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_self_signed(state_dir: str, host: str = "") -> tuple[str, str]:
    """The (certificate, key) paths of the listener's self-signed certificate, generated on first use.

    Both files are mode 0600 in ``state_dir`` (created 0700) and are reused as long as both exist.
    """
    cert_path = os.path.join(state_dir, CERT_FILE)
    key_path = os.path.join(state_dir, KEY_FILE)
    if os.path.isfile(cert_path) and os.path.isfile(key_path):
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the state directory {state_dir}: {exc.strerror or exc}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname() or "localhost"
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if hostname != "localhost":
        names.append(x509.DNSName(hostname))
    addresses = {"127.0.0.1", "::1"}
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        if not ip.is_unspecified:
            addresses.add(str(ip))
    names.extend(x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses))
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"tlsmirror key listener {hostname}"[:64]),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsmirror"),
    ])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        _write_private(key_path, key_pem)
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise InputError(f"cannot write the listener certificate to {state_dir}: "
                         f"{exc.strerror or exc}") from None
    log.info("generated a self-signed certificate for the key listener: %s", cert_path)
    return cert_path, key_path


def certificate_fingerprint(cert_path: str) -> str:
    """SHA-256 fingerprint (AA:BB:...) of the first certificate of a PEM file ("" when unreadable)."""
    try:
        with open(cert_path, "rb") as f:
            pem = f.read()
        der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii", "replace"))
    except (OSError, ValueError):
        return ""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
