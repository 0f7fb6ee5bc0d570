"""Live capture (AF_PACKET) and the flow hash that spreads offline frames over workers.

Live: every worker opens one ``AF_PACKET``/``SOCK_RAW`` socket per interface, puts the interface in
promiscuous mode (``PACKET_MR_PROMISC`` membership: dropped with the socket), attaches the BPF program
compiled by ``tcpdump -ddd`` at start-up (``SO_ATTACH_FILTER``) and joins one ``PACKET_FANOUT`` group
per interface with ``PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG``: the kernel hashes each
(defragmented) packet with its symmetric flow hash (``__skb_get_hash_symmetric``: both directions of a
connection give the same hash) and hands it to one member, so one worker sees the whole connection.
Kernel drops are read with ``PACKET_STATISTICS`` (the kernel resets them on each read; we accumulate).

Offline (``--pcap``): :func:`flow_hash` computes the same kind of symmetric hash in Python over the
outermost IP addresses and TCP/UDP ports (fragments follow their first fragment), so frames reach
workers exactly as they would on a live link.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Sequence

from ...frames.link import LINKTYPE_ETHERNET, LINKTYPE_RAW
from ..errors import InputError

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_STATISTICS = 6
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20+
PACKET_MR_PROMISC = 1
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
_ARPHRD_LINKTYPE = {ARPHRD_ETHER: (LINKTYPE_ETHERNET, "EN10MB"),
                    ARPHRD_LOOPBACK: (LINKTYPE_ETHERNET, "EN10MB"),
                    65534: (LINKTYPE_RAW, "RAW"), 768: (LINKTYPE_RAW, "RAW"), 769: (LINKTYPE_RAW, "RAW"),
                    776: (LINKTYPE_RAW, "RAW"), 778: (LINKTYPE_ETHERNET, "EN10MB")}

BpfProgram = list[tuple[int, int, int, int]]

# What the default filter lets through: TCP, VLAN-tagged TCP, and the tunnels the frames stage opens.
# `vlan` shifts the offsets of everything after it in a libpcap expression: it comes last.
_TUNNELS = "udp port 4789 or udp port 6081 or ip proto 47 or ip6 proto 47"
BASE_FILTER = f"(tcp or {_TUNNELS} or (vlan and (tcp or {_TUNNELS})))"


# ---------------------------------------------------------------------------- interfaces and BPF
def interface_arphrd(name: str) -> int:
    """The ARPHRD type of an interface; InputError when it does not exist."""
    try:
        with open(f"/sys/class/net/{name}/type", encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        raise InputError(f"interface {name!r} does not exist (capture.interfaces / -i); "
                         "list interfaces with `ip link`") from None


def interface_linktype(name: str) -> tuple[int, str]:
    """(pcap linktype, tcpdump -y name) of an interface; InputError when it does not exist."""
    arphrd = interface_arphrd(name)
    kind = _ARPHRD_LINKTYPE.get(arphrd)
    if kind is None:
        raise InputError(f"interface {name!r} has link type {arphrd} (ARPHRD), which tlsmirror cannot "
                         "decode; "
                         "capture on an Ethernet, loopback or tun interface")
    return kind


def default_filter(exclude_ports: Sequence[int] = (), exclude_hosts: Sequence[tuple[str, int]] = ()) -> str:
    """All TCP (and tunnels) minus the sensor's own listener/metrics ports and its export traffic."""
    parts = [f"not (tcp port {port})" for port in sorted(set(exclude_ports))]
    parts += [f"not (host {host} and tcp port {port})" for host, port in exclude_hosts]
    return " and ".join([*parts, BASE_FILTER])


def compile_bpf(expr: str, tcpdump_linktype: str = "EN10MB", *, tcpdump: str | None = None) -> BpfProgram:
    """Compile a filter with ``tcpdump -ddd`` (no privileges needed); InputError on a bad expression."""
    exe = tcpdump or shutil.which("tcpdump") or ("/usr/sbin/tcpdump" if os.path.exists("/usr/sbin/tcpdump")
                                                 else None)
    if exe is None:
        raise InputError("tcpdump is needed to compile the capture filter (capture.bpf); "
                         "install it (apt-get install tcpdump)")
    try:
        res = subprocess.run([exe, "-ddd", "-y", tcpdump_linktype, expr], capture_output=True, text=True,
                             timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InputError(f"cannot run tcpdump to compile the capture filter: {exc}") from None
    lines = res.stdout.split()
    if res.returncode != 0 or not lines:
        msg = (res.stderr.strip().splitlines() or ["failed"])[-1]
        raise InputError(f"capture.bpf {expr!r} does not compile: {msg}; fix the filter (tcpdump syntax)")
    try:
        n = int(lines[0])
        nums = [int(x) for x in lines[1:]]
    except ValueError:
        raise InputError(f"unexpected output from tcpdump -ddd for {expr!r}") from None
    if len(nums) != 4 * n or n == 0:
        raise InputError(f"unexpected output from tcpdump -ddd for {expr!r}")
    return [(nums[i], nums[i + 1], nums[i + 2], nums[i + 3]) for i in range(0, len(nums), 4)]


def bpf_matches(program: BpfProgram, packet: bytes) -> bool:
    """Run a classic BPF program over *packet* (enough of the instruction set for tcpdump output; tests)."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(packet)

    def load(off: int, size: int) -> int | None:
        if off < 0 or off + size > n:
            return None
        return int.from_bytes(packet[off:off + size], "big")

    while pc < len(program):
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if cls in (0x00, 0x01):  # LD / LDX
            mode, size = code & 0xE0, {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
            if mode == 0x00:  # IMM
                v: int | None = k
            elif mode == 0x20:  # ABS
                v = load(k, size) if k < 0x80000000 else 0  # ancillary loads (vlan tag...) read as 0
            elif mode == 0x40:  # IND
                v = load(x + k, size)
            elif mode == 0x60:  # MEM
                v = mem[k]
            elif mode == 0x80:  # LEN
                v = n
            elif mode == 0xA0:  # MSH (ldx 4*([k]&0xf))
                b = load(k, 1)
                v = None if b is None else (b & 0x0F) * 4
            else:
                return False
            if v is None:
                return False
            if cls == 0x00:
                a = v
            else:
                x = v
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            src = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x00:
                a = (a + src) & 0xFFFFFFFF
            elif op == 0x10:
                a = (a - src) & 0xFFFFFFFF
            elif op == 0x20:
                a = (a * src) & 0xFFFFFFFF
            elif op == 0x30:
                a = a // src if src else 0
            elif op == 0x40:
                a |= src
            elif op == 0x50:
                a &= src
            elif op == 0x60:
                a = (a << src) & 0xFFFFFFFF
            elif op == 0x70:
                a >>= src
            elif op == 0x80:
                a = (-a) & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            src = x if code & 0x08 else k
            if op == 0x00:
                pc += k
                continue
            if op == 0x10:
                ok = a == src
            elif op == 0x20:
                ok = a > src
            elif op == 0x30:
                ok = a >= src
            else:
                ok = bool(a & src)
            pc += jt if ok else jf
        elif cls == 0x06:  # RET
            return (k if code & 0x18 == 0 else a) != 0
        elif cls == 0x07:  # MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
    return False


# ---------------------------------------------------------------------------- live socket
class LiveSocket:
    """One AF_PACKET socket on one interface, in a fanout group; non-blocking."""

    def __init__(self, interface: str, *, program: BpfProgram | None, fanout_group: int | None,
                 buffer_bytes: int = 64 << 20, snaplen: int = 65535, promisc: bool = True) -> None:
        self.interface = interface
        self.linktype, _ = interface_linktype(interface)
        self.arphrd = interface_arphrd(interface)
        self.snaplen = snaplen
        self.kernel_packets = 0
        self.kernel_drops = 0
        try:
            # protocol 0: nothing is received until bind(), after the filter is attached
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise InputError("live capture needs CAP_NET_RAW (run as root, or grant the capability: "
                             "setcap cap_net_raw,cap_net_admin=eip on the Python binary, or "
                             "AmbientCapabilities= in the systemd unit)") from None
        self.sock = sock
        try:
            for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
                    break
                except OSError:
                    continue
            if program:
                self._attach(program)
            sock.bind((interface, ETH_P_ALL))
            if promisc:
                ifindex = socket.if_nametoindex(interface)
                mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            if self.arphrd == ARPHRD_LOOPBACK:  # lo shows every packet twice (sent and received)
                with contextlib.suppress(OSError):
                    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            if fanout_group is not None:
                arg = (fanout_group & 0xFFFF) | ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16)
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", arg))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise InputError(f"cannot capture on {interface}: {exc.strerror or exc}") from None
        self.read_stats()  # reset the kernel counters: what the filter was attached before counts not

    def _attach(self, program: BpfProgram) -> None:
        n = len(program)
        insns = (ctypes.c_ubyte * (8 * n))()
        struct.pack_into("=" + "HBBI" * n, insns, 0, *[v for ins in program for v in ins])
        fprog = struct.pack("@HP", n, ctypes.addressof(insns))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_batch(self, limit: int, out: list[bytes]) -> int:
        """Append up to *limit* frames that are ready; returns the bytes read."""
        recv = self.sock.recv
        size = self.snaplen
        total = 0
        for _ in range(limit):
            try:
                data = recv(size)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.ENETDOWN, errno.ENXIO):
                    break
                raise
            out.append(data)
            total += len(data)
        return total

    def read_stats(self) -> tuple[int, int]:
        """Accumulate PACKET_STATISTICS (reset by the kernel on each read): (packets, drops) so far."""
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
            packets, drops = struct.unpack_from("II", raw)
        except OSError:
            return self.kernel_packets, self.kernel_drops
        self.kernel_packets += packets
        self.kernel_drops += drops
        return self.kernel_packets, self.kernel_drops

    def close(self) -> None:
        self.sock.close()


def check_capture_permission(interfaces: Sequence[str]) -> None:
    """Fail early (InputError) when an interface is missing or the process may not capture."""
    for name in interfaces:
        interface_linktype(name)
    if interfaces:
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
        except PermissionError:
            raise InputError("live capture needs CAP_NET_RAW and CAP_NET_ADMIN (run as root, or grant the "
                             "capabilities; see docs/operations.md)") from None
