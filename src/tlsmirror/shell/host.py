"""The host's own IP addresses, per interface: one place for the listener certificate's names, doctor's
own-traffic test and the capture filter that keeps the sensor's own connections out.

From ``ip -j addr show`` (every address, secondary ones too); without the ``ip`` command, from the kernel's
interface ioctl (each interface's primary IPv4 address) and ``/proc/net/if_inet6``.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import shutil
import socket
import struct
import subprocess

_SIOCGIFADDR = 0x8915


def interface_addresses(timeout: float = 2.0) -> dict[str, list[str]]:
    """Each interface's addresses (IPv4 and IPv6, link-local ones too, without a zone), by interface name."""
    found: dict[str, set[str]] = {}
    ip = shutil.which("ip")
    if ip is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError, TypeError, AttributeError):
            proc = subprocess.run([ip, "-j", "addr", "show"], capture_output=True, text=True, timeout=timeout,
                                  check=False)
            for link in json.loads(proc.stdout or "[]"):
                name = str(link.get("ifname", ""))
                for a in link.get("addr_info", []):
                    with contextlib.suppress(ValueError):
                        addr = ipaddress.ip_address(str(a.get("local", "")).split("%")[0])
                        found.setdefault(name, set()).add(str(addr))
    if not found:
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                with contextlib.suppress(OSError):
                    req = struct.pack("256s", name.encode()[:15])
                    addr4 = ipaddress.IPv4Address(fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)[20:24])
                    found.setdefault(name, set()).add(str(addr4))
        with contextlib.suppress(OSError, ValueError), open("/proc/self/net/if_inet6", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6:
                    found.setdefault(fields[5], set()).add(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return {name: sorted(addrs, key=_order) for name, addrs in found.items()}


def host_addresses(timeout: float = 2.0) -> list[str]:
    """Every address of the host: its interfaces', loopback's and those its host name resolves to."""
    found = {"127.0.0.1", "::1"}
    for addrs in interface_addresses(timeout).values():
        found.update(addrs)
    with contextlib.suppress(OSError, UnicodeError):
        for info in socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP):
            with contextlib.suppress(ValueError):
                found.add(str(ipaddress.ip_address(str(info[4][0]).split("%")[0])))
    return sorted(found, key=_order)


def _order(text: str) -> tuple[int, int]:
    a = ipaddress.ip_address(text)
    return a.version, int(a)
