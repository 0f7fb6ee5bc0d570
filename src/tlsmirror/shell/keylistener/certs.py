"""The key listener's certificate: a self-signed one made once (mode 0600) and reused, and fingerprints.

The self-signed certificate names the host as senders reach it: ``localhost``, the host name and its
fully qualified name, and every address of the host's interfaces (loopback included, IPv6 link-local
left out), so that ``keys send --ca CERT IP:PORT`` and a BIG-IP verifying the listener accept it by
address as well as by name. ``install.sh`` makes the installed sensor's ``listener.crt`` with
:func:`write_self_signed`; ``keys serve --state-dir`` makes ``keyserver-cert.pem`` with
:func:`ensure_self_signed`.
"""

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
from ..host import host_addresses as addresses_of_host

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


def host_names() -> list[str]:
    """``localhost``, the host name and its fully qualified name (each once)."""
    names = ["localhost"]
    hostname = socket.gethostname()
    with contextlib.suppress(OSError):
        fqdn = socket.getfqdn()
        for n in (hostname, fqdn):
            if n and n not in names and not _is_ip(n):
                names.append(n)
    return names


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_addresses() -> list[str]:
    """Every address of the host's interfaces (IPv4 and global/unique-local IPv6) and loopback."""
    found = (ipaddress.ip_address(a) for a in addresses_of_host())
    return [str(a) for a in found if not a.is_unspecified and not a.is_link_local and not a.is_multicast]


def write_self_signed(cert_path: str, key_path: str, names: list[str] | None = None,
                      addresses: list[str] | None = None) -> list[str]:
    """Write a new self-signed listener certificate and key (both 0600); returns its subject
    alternative names (``DNS:...``, ``IP:...``). Names and addresses default to the host's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = host_names() if names is None else names
    addresses = host_addresses() if addresses is None else addresses
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = next((n for n in names if n != "localhost"), "localhost")
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.extend(x509.IPAddress(ipaddress.ip_address(a)) for a in addresses)
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
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
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
        raise InputError(f"cannot write the listener certificate {cert_path}: {exc.strerror or exc}") from None
    return [f"DNS:{n}" for n in names] + [f"IP:{a}" for a in addresses]


def ensure_self_signed(state_dir: str, host: str = "") -> tuple[str, str]:
    """The (certificate, key) paths of the listener's self-signed certificate, generated on first use.

    Both files are mode 0600 in ``state_dir`` (created 0700) and are reused as long as both exist.
    ``host``, the listen address, is added to the host's addresses when it is a specific one.
    """
    cert_path = os.path.join(state_dir, CERT_FILE)
    key_path = os.path.join(state_dir, KEY_FILE)
    if os.path.isfile(cert_path) and os.path.isfile(key_path):
        return cert_path, key_path
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the state directory {state_dir}: {exc.strerror or exc}") from None
    addresses = host_addresses()
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        if not ip.is_unspecified and str(ip) not in addresses:
            addresses.append(str(ip))
    write_self_signed(cert_path, key_path, addresses=addresses)
    log.info("generated a self-signed certificate for the key listener: %s", cert_path)
    return cert_path, key_path


def main(argv: list[str] | None = None) -> int:
    """``python -m tlsmirror.shell.keylistener.certs CERT KEY``: what install.sh runs to make the
    installed sensor's listener certificate; prints its names and addresses."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m tlsmirror.shell.keylistener.certs CERT_FILE KEY_FILE", file=sys.stderr)
        return 2
    try:
        sans = write_self_signed(args[0], args[1])
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(" ".join(sans))
    return 0


def certificate_fingerprint(cert_path: str) -> str:
    """SHA-256 fingerprint (AA:BB:...) of the first certificate of a PEM file ("" when unreadable)."""
    try:
        with open(cert_path, "rb") as f:
            pem = f.read()
        der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii", "replace"))
    except (OSError, ValueError):
        return ""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


if __name__ == "__main__":
    raise SystemExit(main())
