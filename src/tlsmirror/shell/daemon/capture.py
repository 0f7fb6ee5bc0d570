"""Live capture (AF_PACKET) and the flow hash that spreads offline frames over workers.

Live: every worker opens one ``AF_PACKET``/``SOCK_RAW`` socket per interface, puts the interface in
promiscuous mode (``PACKET_MR_PROMISC`` membership: dropped with the socket), attaches the BPF program
compiled by ``tcpdump -ddd`` at start-up (``SO_ATTACH_FILTER``) and joins one ``PACKET_FANOUT`` group
per interface with ``PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG``: the kernel hashes each
(defragmented) packet with its symmetric flow hash (``__skb_get_hash_symmetric``: both directions of a
connection give the same hash) and hands it to one member, so one worker sees the whole connection.
Kernel drops are read with ``PACKET_STATISTICS`` (the kernel resets them on each read; we accumulate).

Frames come from a ``TPACKET_V3`` ring (``PACKET_RX_RING``, memory-mapped; see the kernel's
``Documentation/networking/packet_mmap.rst``): the kernel fills fixed-size blocks with packets, each with
its own kernel timestamp, and hands a block to user space when it is full or ``RING_RETIRE_MS`` after its
first packet; the socket polls readable once per such block, the worker copies the frames out and gives
the block back. When the ring cannot be set up (no TPACKET_V3, no memory, ``capture.ring_bytes: 0``) the
socket reads one frame per ``recv`` as before, stamped with the wall clock: :attr:`LiveSocket.mode` says
which (``ring`` or ``recv``), in a log line and in the ``capture_mode`` metric.

Offline (``--pcap``): :func:`flow_hash` computes the same kind of symmetric hash in Python over the
outermost IP addresses and TCP/UDP ports (fragments follow their first fragment), so frames reach
workers exactly as they would on a live link.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from ...frames.link import LINKTYPE_ETHERNET, LINKTYPE_RAW
from ..errors import InputError
from ..logs import get_logger

log = get_logger("capture")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20+
PACKET_MR_PROMISC = 1
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33

# TPACKET_V3 (linux/if_packet.h)
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
# per block; a ring smaller than 4 blocks gets smaller blocks. Small blocks on purpose: below the rate that
# fills a block within RING_RETIRE_MS, each block is handed over part-filled, so the ring holds (blocks x
# RING_RETIRE_MS) of traffic: 32 blocks of 1 MiB held 0.64 s and dropped 40 % of a 41,000 pps replay while a
# worker caught up; 256 blocks of 128 KiB hold 5 s at low rates and the same 32 MiB at high ones (the default
# 128 MiB: 1,024 blocks, about 20 s)
RING_BLOCK_BYTES = 1 << 17
RING_FRAME_BYTES = 2048  # tp_frame_size: only checked by the kernel for V3 (blocks are packed)
RING_RETIRE_MS = 20  # a block that is not full is handed over this long after its first packet
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status, num_pkts,
# offset_to_first_pkt, blk_len, seq_num (u64), ts_first_pkt, ts_last_pkt
_BLOCK = struct.Struct("=IIIII")  # version .. blk_len (block_status at 8, num_pkts 12, first packet 16)
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac, tp_net,
# then tpacket_hdr_variant1: tp_rxhash, tp_vlan_tci, tp_vlan_tpid
_PKT = struct.Struct("=IIIIIIHHIIH")
_PKT_HEAD = struct.Struct("=IIII4xIH")  # what every frame needs: next, sec, nsec, snaplen, status, mac
_VLAN = struct.Struct("=IH")  # tp_vlan_tci, tp_vlan_tpid (at 32 from the header), read when VLAN_VALID
_STATUS = struct.Struct("=I")
_REQ_SIZE = 28  # struct tpacket_req3: seven u32

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


# ---------------------------------------------------------------------------- the ring's blocks
_HDR_MIN = 40  # the frame header's fields read end at 38 (tp_vlan_tpid); a frame takes at least this much


def read_blocks_py(ring: Any, block: int, block_bytes: int, blocks: int, limit: int, frames: list[bytes],
                   stamps: list[float], ether: bool) -> tuple[int, int, int]:
    """From block index *block* on, every block the kernel handed over (``TP_STATUS_USER``) until *limit*
    frames are read: each frame (the VLAN tag the NIC took off put back when *ether*) to *frames*, its
    kernel time to *stamps*, and the block back to the kernel. Returns (next block, frames, bytes).
    The fallback of the C reader (``_ring.read_blocks``, the same contract)."""
    if blocks <= 0 or block_bytes < 48 or not 0 <= block < blocks or len(ring) < block_bytes * blocks:
        raise ValueError("ring geometry does not fit the buffer")
    unpack_block = _BLOCK.unpack_from
    unpack_pkt = _PKT_HEAD.unpack_from
    append = frames.append
    stamp = stamps.append
    total = 0
    n = 0
    while n < limit:
        base = block * block_bytes
        _v, _p, status, count, first = unpack_block(ring, base)
        if not status & TP_STATUS_USER:
            break
        if count > block_bytes // _HDR_MIN:
            raise ValueError("ring block claims more frames than it can hold")
        off = first
        for _ in range(count):
            if off < 0 or off + _HDR_MIN > block_bytes:
                raise ValueError("ring frame header outside its block")
            nxt, sec, nsec, snap, st, mac = unpack_pkt(ring, base + off)
            if off + mac + snap > block_bytes:
                raise ValueError("ring frame outside its block")
            start = base + off + mac
            data = bytes(ring[start:start + snap])
            if st & TP_STATUS_VLAN_VALID and ether and snap >= 12:  # the tag the NIC took off
                tci, tpid = _VLAN.unpack_from(ring, base + off + 32)
                tag = struct.pack("!HH", tpid if st & TP_STATUS_VLAN_TPID_VALID and tpid else 0x8100, tci & 0xFFFF)
                data = data[:12] + tag + data[12:]
            append(data)
            stamp(sec + nsec * 1e-9)
            total += snap
            off += nxt
        n += count
        _STATUS.pack_into(ring, base + 8, TP_STATUS_KERNEL)  # the block goes back to the kernel
        block = (block + 1) % blocks
    return block, n, total


try:  # the C reader (src/tlsmirror/shell/daemon/_ring.c), built when a C compiler is present
    from ._ring import read_blocks
except ImportError:  # pragma: no cover - a build without it
    read_blocks = read_blocks_py


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


def default_filter(own_ports: Sequence[int] = (), exclude_hosts: Sequence[tuple[str, int]] = (),
                   own_addresses: Sequence[str] = ()) -> str:
    """All TCP (and tunnels) minus the sensor's own connections: its listener, metrics and export ports
    (*own_ports*) where one end is one of the capture interfaces' own addresses (*own_addresses*), and
    (*exclude_hosts*) each (collector address, port) it exports to. A mirrored connection is between
    other hosts, so a client that happens to use port 8001 as its own port is still captured; an
    interface without an address (a dedicated mirror port or TAP) carries none of the sensor's own."""
    parts: list[str] = []
    ports = sorted(set(own_ports))
    hosts = sorted(set(own_addresses))
    if ports and hosts:
        any_host = " or ".join(f"host {h}" for h in hosts)
        any_port = " or ".join(f"tcp port {p}" for p in ports)
        parts.append(f"not (({any_host}) and ({any_port}))")
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
    """One AF_PACKET socket on one interface, in a fanout group; non-blocking.

    ``read_batch`` appends frames to a list and ``stamped`` pairs the frames of the last read with their
    capture times: per packet from the kernel (``mode == "ring"``), or the wall clock of the read
    (``mode == "recv"``, the fallback).
    """

    def __init__(self, interface: str, *, program: BpfProgram | None, fanout_group: int | None,
                 buffer_bytes: int = 64 << 20, snaplen: int = 65535, promisc: bool = True,
                 ring_bytes: int = 128 << 20) -> None:
        self.interface = interface
        self.linktype, _ = interface_linktype(interface)
        self.arphrd = interface_arphrd(interface)
        self.snaplen = snaplen
        self.kernel_packets = 0
        self.kernel_drops = 0
        self.kernel_freezes = 0  # tp_freeze_q_cnt: times the ring was full (ring mode)
        self.mode = "recv"
        self.fallback_reason = ""
        self.stamps: list[float] = []  # capture times of the frames of the last read_batch
        self._ring: mmap.mmap | None = None
        self._block = 0  # the next block the kernel hands over, in ring order
        self._block_bytes = 0
        self._blocks = 0
        try:
            # protocol 0: nothing is received until bind(), after the filter is attached
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise InputError("live capture needs CAP_NET_RAW (run as root, or grant the capability: "
                             "setcap cap_net_raw,cap_net_admin=eip on the Python binary, or "
                             "AmbientCapabilities= in the systemd unit)") from None
        self.sock = sock
        try:
            if ring_bytes > 0:
                self._setup_ring(ring_bytes)
            else:
                self.fallback_reason = "capture.ring_bytes is 0"
            if self._ring is None:
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
            self.close()
            raise InputError(f"cannot capture on {interface}: {exc.strerror or exc}") from None
        if self._ring is not None:
            log.info("capture on %s: TPACKET_V3 ring, %d blocks of %d KiB", interface, self._blocks,
                     self._block_bytes >> 10)
        else:
            log.warning("capture on %s: one packet per recv (no TPACKET_V3 ring: %s)", interface,
                        self.fallback_reason)
        self.read_stats()  # reset the kernel counters: what the filter was attached before counts not

    def _setup_ring(self, ring_bytes: int) -> None:
        """PACKET_VERSION=TPACKET_V3, PACKET_RX_RING, mmap; on failure: recv mode, with the reason."""
        page = mmap.PAGESIZE
        block = RING_BLOCK_BYTES
        while block > 64 * 1024 and ring_bytes // block < 4:
            block //= 2
        # a block holds at least one whole packet of snaplen (the kernel truncates to the block otherwise)
        need = self.snaplen + 256
        block = max(block, (need + page - 1) // page * page)
        blocks = max(2, ring_bytes // block)
        req = struct.pack("=7I", block, blocks, RING_FRAME_BYTES, block // RING_FRAME_BYTES * blocks,
                          RING_RETIRE_MS, 0, 0)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        except OSError as exc:
            self.fallback_reason = f"PACKET_RX_RING: {exc.strerror or exc}"
            return
        try:
            ring = mmap.mmap(self.sock.fileno(), block * blocks, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            self.fallback_reason = f"mmap of the ring: {exc.strerror or exc}"
            # release the ring (a zero request) so that recv works again; close the socket if that fails
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, bytes(_REQ_SIZE))
            return
        self._ring = ring
        self._block_bytes = block
        self._blocks = blocks
        self.mode = "ring"

    def _attach(self, program: BpfProgram) -> None:
        n = len(program)
        insns = (ctypes.c_ubyte * (8 * n))()
        struct.pack_into("=" + "HBBI" * n, insns, 0, *[v for ins in program for v in ins])
        fprog = struct.pack("@HP", n, ctypes.addressof(insns))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_batch(self, limit: int, out: list[bytes]) -> int:
        """Append the frames that are ready (ring: whole blocks until *limit* is reached; recv: up to
        *limit* frames); their capture times go to :attr:`stamps`. Returns the bytes read."""
        if self._ring is not None:
            return self._read_ring(limit, out)
        recv = self.sock.recv
        size = self.snaplen
        total = 0
        n = 0
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
            n += 1
        self.stamps = [time.time()] * n
        return total

    def _read_ring(self, limit: int, out: list[bytes]) -> int:
        assert self._ring is not None
        stamps: list[float] = []
        self._block, _n, total = read_blocks(self._ring, self._block, self._block_bytes, self._blocks, limit,
                                             out, stamps, self.linktype == LINKTYPE_ETHERNET)
        self.stamps = stamps
        return total

    def stamped(self, frames: list[bytes]) -> list[tuple[float, int, bytes]]:
        """The frames of the last :meth:`read_batch` as (capture time, linktype, frame)."""
        lt = self.linktype
        stamps = self.stamps
        if len(stamps) != len(frames):  # frames not all from the last read: the read's wall clock
            now = stamps[-1] if stamps else time.time()
            stamps = [now] * len(frames)
        return [(ts, lt, data) for ts, data in zip(stamps, frames, strict=True)]

    def read_stats(self) -> tuple[int, int]:
        """Accumulate PACKET_STATISTICS (reset by the kernel on each read): (packets, drops) so far.

        Ring mode reads ``tpacket_stats_v3`` (``tp_freeze_q_cnt``: times the ring was full, in
        :attr:`kernel_freezes`); packets and drops mean the same in both modes."""
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
            packets, drops = struct.unpack_from("II", raw)
            freezes = struct.unpack_from("I", raw, 8)[0] if self._ring is not None and len(raw) >= 12 else 0
        except (OSError, struct.error):
            return self.kernel_packets, self.kernel_drops
        self.kernel_packets += packets
        self.kernel_drops += drops
        self.kernel_freezes += freezes
        return self.kernel_packets, self.kernel_drops

    def close(self) -> None:
        if self._ring is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._ring.close()
            self._ring = None
        self.sock.close()


def capture_modes(sockets: Sequence[LiveSocket]) -> dict[str, int]:
    """How many of *sockets* read from a ring and how many per recv (the ``capture_mode`` metric)."""
    modes = {"ring": 0, "recv": 0}
    for s in sockets:
        modes[s.mode] += 1
    return modes


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


def read_what_is_left(sockets: Sequence[LiveSocket], limit: int, until: float,
                      handle: Callable[[LiveSocket, list[bytes]], object]) -> int:
    """At a stop: read what the sockets (their rings) still hold, batch by batch, handing each batch to
    *handle*, until a pass over all of them finds nothing or ``time.monotonic()`` reaches *until* (traffic
    that goes on arriving must not hold the stop up). Returns the frames read; what is left after *until*
    shows as unread at the stop (kernel packets less drops less packets)."""
    batch: list[bytes] = []
    n = 0
    busy = True
    while busy and time.monotonic() < until:
        busy = False
        for s in sockets:
            batch.clear()
            try:
                s.read_batch(limit, batch)
            except OSError as exc:  # the interface went away at the stop: nothing more to read from it
                log.warning("capture %s: reading what was left at the stop failed: %s", s.interface, exc)
                continue
            if batch:
                busy = True
                n += len(batch)
                handle(s, batch)
    return n
