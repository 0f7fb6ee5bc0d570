"""The capture interfaces: their kernel counters, and a short sample of packets: is this a mirror?"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from ...frames.errors import FrameSkip
from ...frames.ip import FragmentReassembler, ipv4, ipv6
from ...frames.layers import K_ETH, K_IP, K_IPV4, K_IPV6
from ...frames.link import ethernet_payload, link_payload
from ..errors import InputError
from ..host import host_addresses as addresses_of_host
from .metrics import Scrape
from .result import DROP_RATIO, FAIL, OK, SKIP, WARN, Result, num, plural, see

SAMPLE_FRAMES = 200  # frames sampled per interface at most
TUNNEL_UDP_PORTS = frozenset((4789, 6081, 4790))  # VXLAN, GENEVE, VXLAN-GPE: mirrors delivered by tunnel

# /sys/class/net/IF/flags
IFF_UP = 0x1
IFF_PROMISC = 0x100
# AF_PACKET sll_pkttype
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST, PACKET_OUTGOING = 0, 1, 2, 3, 4
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1


@dataclass
class InterfaceState:
    name: str
    exists: bool
    flags: int = 0
    operstate: str = "?"
    arphrd: int = 0
    counters: dict[str, int] = field(default_factory=dict)


_IF_COUNTERS = ("rx_packets", "rx_bytes", "rx_dropped", "rx_missed_errors", "rx_fifo_errors")


def read_interface(name: str) -> InterfaceState:
    base = f"/sys/class/net/{name}"
    if not name or "/" in name or not os.path.isdir(base):
        return InterfaceState(name, False)

    def read(rel: str) -> str:
        try:
            with open(f"{base}/{rel}", encoding="ascii") as fh:
                return fh.read().strip()
        except OSError:
            return ""

    st = InterfaceState(name, True, operstate=read("operstate") or "?")
    with contextlib.suppress(ValueError):
        st.flags = int(read("flags"), 16)
    with contextlib.suppress(ValueError):
        st.arphrd = int(read("type"))
    for c in _IF_COUNTERS:
        with contextlib.suppress(ValueError):
            st.counters[c] = int(read(f"statistics/{c}"))
    return st


def check_interface(name: str, before: InterfaceState, after: InterfaceState | None, wait: float, *,
                    captured: bool, s0: Scrape | None, s1: Scrape | None, shared: bool = False,
                    stats_interval: float = 1.0) -> Result:
    """Exists, up, carrier, packets arriving; NIC drops; the sensor capturing them."""
    label = f"interface {name}"
    if not before.exists:
        return Result(label, FAIL, f"{name} does not exist", [
            "list the interfaces with `ip link`; set capture.interfaces (install.sh -i) to the one the "
            "mirror arrives on", see("no-packets")])
    data: dict[str, Any] = {"operstate": before.operstate, "up": bool(before.flags & IFF_UP),
                            "promiscuous": bool(before.flags & IFF_PROMISC)}
    if not before.flags & IFF_UP:
        return Result(label, FAIL, f"{name} is down (administratively)", [
            f"bring it up: sudo ip link set {name} up (and make it persistent in the network configuration)",
            see("no-packets")], data)
    if before.operstate in ("down", "lowerlayerdown", "notpresent"):
        return Result(label, FAIL, f"{name} is up but has no link ({before.operstate})", [
            "no carrier: check the cable / the switch's mirror (SPAN) destination port / the VM's "
            "vNIC attachment", see("no-packets")], data)
    msg = f"{name} up"
    res = Result(label, OK, msg, data=data)
    if after is None or not after.exists:
        if after is not None:
            res.status = FAIL
            res.message = f"{name} disappeared during the check"
        return res
    rx = after.counters.get("rx_packets", 0) - before.counters.get("rx_packets", 0)
    nic_drops = sum(after.counters.get(c, 0) - before.counters.get(c, 0) for c in ("rx_missed_errors",
                                                                                    "rx_fifo_errors"))
    data.update(rx_packets=rx, wait_s=wait, nic_drops=nic_drops)
    rate = rx / wait if wait > 0 else 0.0
    res.message += f", {plural(rx, 'packet')} received in {wait:g} s ({num(round(rate))}/s)"
    res.message += ", promiscuous" if before.flags & IFF_PROMISC else ", not promiscuous"
    if wait > 0 and rx == 0:
        res.status = WARN
        res.advice += [
            "nothing arrives: check that the mirror session (switch SPAN/RSPAN/ERSPAN, cloud traffic "
            "mirroring, F5 clone pool member) targets this interface and that traffic flows now",
            f"confirm with: sudo tcpdump -c 20 -n -i {name}", see("no-packets")]
    if nic_drops and rx and nic_drops / (rx + nic_drops) > DROP_RATIO:
        res.status = WARN
        res.message += f"; the NIC dropped {num(nic_drops)} (rx_missed/fifo)"
        res.advice.append(f"the NIC's receive ring overflows: raise it (ethtool -g {name}; "
                          f"sudo ethtool -G {name} rx 4096) and spread interrupts (irqbalance)")
    if captured and s0 is not None and s1 is not None and wait > 0:
        got = s1.value("packets") - s0.value("packets")
        data["sensor_packets"] = got
        last = s1.value("last_packet_timestamp_seconds")
        age = max(0.0, time.time() - last) if last else None
        if got or age is None:
            res.message += f"; sensor captured {num(got)}" + (" on all its interfaces" if shared else "")
        else:  # workers report every metrics.stats_interval: a short wait can miss the report
            res.message += f"; sensor's latest packet {age:.1f} s ago"
        if rx >= 100 and got == 0 and (age is None or age > wait + 2 * stats_interval + 1):
            res.status = WARN
            res.advice.append("packets arrive but the sensor captured none of them: is it capturing on "
                              f"{name} (capture.interfaces)? does capture.bpf exclude them? (the default "
                              "filter passes TCP and VXLAN/GENEVE/GRE tunnels only)")
    return res


def host_addresses(timeout: float = 2.0) -> set[bytes]:
    """This host's IP addresses, packed."""
    return {socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in addresses_of_host(timeout)}


def _outer_ip(linktype: int, data: bytes,
              frags: FragmentReassembler) -> tuple[bytes, bytes, int, int, int] | None:
    """(src, dst, protocol, sport, dport) of the outermost IP datagram, or None (not IP, malformed, or a
    fragment of a datagram not complete yet). Decoded by the capture path's own parsers
    (:mod:`tlsmirror.frames`), IPv6 extension headers and IP fragments included."""
    end = len(data)
    try:
        kind, off = link_payload(linktype, data)
        if kind == K_ETH:
            kind, off = ethernet_payload(data, off, end)
        if kind == K_IP and off < end:
            kind = {4: K_IPV4, 6: K_IPV6}.get(data[off] >> 4, -1)
        if kind == K_IPV4:
            buf, l4, pend, proto, src, dst = ipv4(data, off, end, 0.0, frags)
        elif kind == K_IPV6:
            buf, l4, pend, proto, src, dst = ipv6(data, off, end, 0.0, frags)
        else:
            return None
    except FrameSkip:
        return None
    sport = dport = 0
    if proto in (6, 17) and l4 + 4 <= pend:
        sport, dport = struct.unpack_from("!HH", buf, l4)
    return src, dst, proto, sport, dport


@dataclass
class PacketSample:
    """What a short sample of an interface's packets looked like."""

    frames: int = 0  # frames read
    counted: int = 0  # unicast IP frames classified below
    own: int = 0  # to or from this host's addresses (not a tunnel): the host's own traffic
    foreign: int = 0  # neither address is this host's: mirrored traffic
    tunnel: int = 0  # VXLAN/GENEVE/GRE: a mirror delivered by a tunnel
    other_host: int = 0  # frames for another MAC address (PACKET_OTHERHOST): mirrored
    sensor: int = 0  # the sensor's own listener/metrics/export traffic (not counted)
    non_ip: int = 0  # ARP, LLDP, broadcast and multicast (not counted)
    # TCP flows of the mirrored frames (inner headers for tunnels): endpoints -> packets each way
    flows: dict[tuple[bytes, int, bytes, int], list[int]] = field(default_factory=dict)
    _frags: FragmentReassembler = field(default_factory=lambda: FragmentReassembler(1 << 20, 5.0, {}),
                                        repr=False, compare=False)

    def add(self, linktype: int, data: bytes, pkttype: int, own: set[bytes], sensor_ports: frozenset[int],
            decoder: Any = None) -> None:
        self.frames += 1
        if pkttype in (PACKET_BROADCAST, PACKET_MULTICAST):
            self.non_ip += 1
            return
        outer = _outer_ip(linktype, data, self._frags)
        if outer is None:
            self.non_ip += 1
            return
        src, dst, proto, sport, dport = outer
        if (len(dst) == 4 and dst[0] >= 224) or (len(dst) == 16 and dst[0] == 0xFF):  # multicast, broadcast
            self.non_ip += 1
            return
        tunnel = proto == 47 or (proto == 17 and (dport in TUNNEL_UDP_PORTS or sport in TUNNEL_UDP_PORTS))
        mine = src in own or dst in own
        if mine and not tunnel and proto == 6 and (sport in sensor_ports or dport in sensor_ports):
            self.sensor += 1
            return
        self.counted += 1
        if pkttype == PACKET_OTHERHOST:
            self.other_host += 1
        if tunnel:
            self.tunnel += 1
        elif mine:
            self.own += 1
            return
        else:
            self.foreign += 1
        if decoder is not None:
            seg = decoder.decode(linktype, data, 0.0)
            if seg is not None:
                a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
                key = (a[0], a[1], b[0], b[1]) if a <= b else (b[0], b[1], a[0], a[1])
                counts = self.flows.setdefault(key, [0, 0])
                counts[0 if a <= b else 1] += 1

    def directions(self) -> tuple[int, int]:
        """(flows seen both ways, flows seen one way only) among mirrored TCP flows of 2+ packets."""
        both = one = 0
        for a, b in self.flows.values():
            if a + b < 2:
                continue
            if a and b:
                both += 1
            else:
                one += 1
        return both, one

    def as_dict(self) -> dict[str, Any]:
        both, one = self.directions()
        return {"frames": self.frames, "counted": self.counted, "own": self.own, "foreign": self.foreign,
                "tunnel": self.tunnel, "other_host": self.other_host, "sensor": self.sensor,
                "non_ip": self.non_ip, "flows_both_ways": both, "flows_one_way": one}


def sample_interface(name: str, duration: float, own: set[bytes], sensor_ports: frozenset[int],
                     max_frames: int = SAMPLE_FRAMES) -> PacketSample | str:
    """Read up to *max_frames* frames for *duration* seconds (AF_PACKET, promiscuous while it lasts).

    Returns the sample, or why it could not be taken.
    """
    from ...frames.decoder import FrameDecoder
    from ..daemon.capture import interface_linktype

    try:
        linktype, _ = interface_linktype(name)
    except InputError as exc:
        return str(exc)
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError:
        return "sampling packets needs CAP_NET_RAW: run doctor as root (sudo)"
    except OSError as exc:
        return f"cannot open a packet socket: {exc.strerror or exc}"
    sample = PacketSample()
    decoder = FrameDecoder()
    try:
        sock.bind((name, ETH_P_ALL))
        with contextlib.suppress(OSError):
            mreq = struct.pack("iHH8s", socket.if_nametoindex(name), PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        end = time.monotonic() + duration
        while sample.frames < max_frames:
            left = end - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
                break
            pkttype = addr[2] if isinstance(addr, tuple) and len(addr) > 2 else PACKET_HOST
            sample.add(linktype, data, pkttype, own, sensor_ports, decoder)
    except OSError as exc:
        return f"cannot read packets on {name}: {exc.strerror or exc}"
    finally:
        sock.close()
    return sample


def check_mirror(name: str, sample: PacketSample | str | None, duration: float) -> Result:
    """Does the captured traffic look mirrored (addresses not this host's), both directions?"""
    label = f"mirror {name}"
    if sample is None:
        return Result(label, SKIP, "packets not sampled (--no-sample, or the interface is missing)")
    if isinstance(sample, str):
        return Result(label, SKIP, sample)
    data = sample.as_dict()
    if sample.counted == 0:
        extra = f" ({sample.sensor} of the sensor's own traffic)" if sample.sensor else ""
        return Result(label, SKIP, f"no unicast IP packets in a {duration:g} s sample of {sample.frames} "
                                   f"frames{extra}: nothing to judge", data=data)
    mirrored = sample.foreign + sample.tunnel
    parts = [f"{plural(sample.counted, 'packet')} sampled: {mirrored} mirrored"]
    if sample.tunnel:
        parts.append(f"{sample.tunnel} in VXLAN/GENEVE/GRE tunnels")
    if sample.other_host:
        parts.append(f"{sample.other_host} for other MAC addresses")
    parts.append(f"{sample.own} to/from this host")
    res = Result(label, OK, ", ".join(parts), data=data)
    if sample.own * 2 > sample.counted:
        res.status = WARN
        res.message = (f"{sample.own} of {sample.counted} sampled packets are to/from this host: this looks "
                       "like the host's own traffic, not a mirror")
        res.advice += [
            "point the mirror (switch SPAN/ERSPAN session, cloud traffic mirroring, F5 clone pool) at this "
            "interface, or set capture.interfaces to the interface the mirror arrives on",
            "mirrored frames carry other hosts' addresses (or arrive in VXLAN/GENEVE/GRE to this host)",
            see("the-capture-shows-the-hosts-own-traffic")]
    both, one = sample.directions()
    if one >= 3 and both == 0:
        res.status = WARN
        res.message += f"; all {one} TCP flows sampled show one direction only"
        res.advice += [
            "the mirror carries one direction: mirror both ingress and egress (SPAN `both`, traffic "
            "mirror filters for inbound and outbound, clone pool on the client side of the virtual "
            "server); asymmetric routing can also send the replies past the mirror point",
            see("only-one-direction-mirrored")]
    return res
