"""Rendering packed addresses for humans and output files."""

from __future__ import annotations


def ip_text(addr: bytes) -> str:
    """Packed IPv4/IPv6 address as text."""
    if len(addr) == 4:
        return ".".join(str(b) for b in addr)
    import ipaddress  # at the first IPv6 address: most captures have none (start-up)

    return str(ipaddress.IPv6Address(addr))


def endpoint(addr: bytes, port: int) -> str:
    """``ip:port`` for IPv4, ``[v6]:port`` for IPv6."""
    if len(addr) == 4:
        return f"{ip_text(addr)}:{port}"
    return f"[{ip_text(addr)}]:{port}"
