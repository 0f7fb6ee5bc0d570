"""The listener's self-signed certificate names the host as senders reach it: its names and the
addresses of its interfaces, so that a sender verifying by IP address accepts it."""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509

from tlsmirror.shell.keylistener.certs import ensure_self_signed, host_addresses, write_self_signed


def _interface_addresses() -> set[str]:
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, timeout=20).stdout
    found = {m.group(1) for m in re.finditer(r"inet6? ([0-9a-f.:]+)/", out)}
    return {a for a in found if not ipaddress.ip_address(a).is_link_local}


def _sans(path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def test_host_addresses_are_the_interfaces() -> None:
    got = set(host_addresses())
    assert {"127.0.0.1", "::1"} <= got
    try:
        expected = _interface_addresses()
    except FileNotFoundError:
        pytest.skip("no ip command")
    assert expected <= got
    assert not any(ipaddress.ip_address(a).is_link_local for a in got)


def test_self_signed_names_the_host(tmp_path: Path) -> None:
    cert, key = ensure_self_signed(str(tmp_path / "state"), "192.0.2.77")
    names, ips = _sans(Path(cert))
    assert {"localhost", socket.gethostname()} <= names
    assert set(host_addresses()) | {"192.0.2.77"} <= ips
    for p in (cert, key):
        assert stat.S_IMODE(Path(p).stat().st_mode) == 0o600
    sans = write_self_signed(str(tmp_path / "l.crt"), str(tmp_path / "l.key"), names=["sensor.example"],
                             addresses=["10.0.0.5"])
    assert sans == ["DNS:sensor.example", "IP:10.0.0.5"]
    assert _sans(tmp_path / "l.crt") == ({"sensor.example"}, {"10.0.0.5"})


def test_a_client_verifies_it_by_a_host_address(tmp_path: Path) -> None:
    """A real TLS handshake to a non-loopback address of the host, checking the hostname (= the IP)."""
    addresses = [a for a in host_addresses() if not ipaddress.ip_address(a).is_loopback and ":" not in a]
    if not addresses:
        pytest.skip("no non-loopback IPv4 address")
    cert, key = ensure_self_signed(str(tmp_path / "state"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    with socket.create_server((addresses[0], 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with conn, server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        client = ssl.create_default_context(cafile=cert)
        with socket.create_connection((addresses[0], port), timeout=10) as raw, \
                client.wrap_socket(raw, server_hostname=addresses[0]) as tls:
            assert tls.version() is not None
            tls.sendall(b"x")
        t.join(timeout=10)
