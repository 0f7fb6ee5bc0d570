"""`tlsmirror doctor`: checks of a running install, each with what to do when it is not OK.

The checks read the configuration (the same file, environment and defaults as ``tlsmirror run``),
the sensor's ``/metrics`` and ``/healthz`` twice (``wait`` seconds apart, for rates), the capture
interfaces' kernel counters, a short sample of the packets arriving on them (with ``CAP_NET_RAW``),
and probe the key listener (a TCP connect and a TLS handshake that sends nothing: the listener counts
it as a probe) and the OTLP collector (a TCP connect and an empty export request carrying the token).

Every network operation has a short timeout and the slow parts run in parallel during the wait, so a
run takes about ``wait`` + a few seconds at most. Results are :class:`Result` objects: a status
(``OK``, ``WARN``, ``FAIL``, or ``SKIP`` when a check does not apply), one line of what was found, and
for anything not OK, what to do. Secrets (the OTLP token, key material) never appear in the output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, load_config, read_token
from ..errors import InputError

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
_RANK = {OK: 0, SKIP: 0, WARN: 1, FAIL: 2}

DOC = "docs/troubleshooting.md"
DROP_RATIO = 0.001  # drops above 0.1 % of packets / calls: WARN
MATCH_RATIO = 0.90  # decrypted / (decrypted + no_key) below this: WARN
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
class Result:
    """One checked thing: ``status`` is OK, WARN, FAIL or SKIP; ``advice`` says what to do."""

    check: str
    status: str
    message: str
    advice: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "message": self.message, "advice": list(self.advice),
                "data": dict(self.data)}


@dataclass
class DoctorOptions:
    """What ``tlsmirror doctor`` was asked to do."""

    config: str | None = None  # YAML file (None: $TLSMIRROR_CONFIG, else /etc/tlsmirror/config.yaml)
    url: str | None = None  # metrics server (None: from metrics.host/metrics.port of the configuration)
    wait: float = 2.0  # seconds between the two readings of counters
    interfaces: list[str] | None = None  # instead of capture.interfaces
    unit: str = "tlsmirror"  # systemd unit
    timeout: float = 3.0  # per network operation
    sample: bool = True  # sample packets on the capture interfaces (needs CAP_NET_RAW)
    env: Mapping[str, str] | None = None  # environment for the configuration (None: os.environ)


def worst(results: list[Result]) -> str:
    return max((r.status for r in results), key=lambda s: _RANK[s], default=OK)


def exit_code(results: list[Result]) -> int:
    """0 when nothing failed, 1 otherwise."""
    return 1 if any(r.status == FAIL for r in results) else 0


# ---------------------------------------------------------------------------- small helpers
def _n(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,.2f}"


def _pl(x: float, word: str) -> str:
    """``1 packet``, ``2 packets``."""
    return f"{_n(x)} {word}" + ("" if x == 1 else "s")


def _size(x: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if x >= size:
            return f"{x / size:.1f} {unit}"
    return f"{int(x)} B"


def _pct(part: float, whole: float) -> str:
    if not whole:
        return "0%"
    p = 100.0 * part / whole
    return f"{p:.0f}%" if p >= 10 or p == 0 else f"{p:.2g}%"


def _see(anchor: str) -> str:
    return f"details: {DOC}#{anchor}"


def _local_host(host: str) -> str:
    """Where to connect to reach a server bound to *host* from this machine."""
    if host in ("", "0.0.0.0", "*"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "::1"
    return host.strip("[]")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Task:
    """A function run in a daemon thread (it can never keep the process alive), with a deadline."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._fn = fn
        threading.Thread(target=self._run, daemon=True, name="doctor").start()

    def _run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:  # reported by get()
            self.error = exc
        finally:
            self._done.set()

    def get(self, deadline: float) -> tuple[bool, Any]:
        """(finished, value); re-raises what the function raised."""
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            return False, None
        if self.error is not None:
            raise self.error
        return True, self.value


# ---------------------------------------------------------------------------- metrics
class Scrape:
    """One reading of /metrics (and /healthz) of the sensor."""

    def __init__(self, text: str, health: dict[str, Any] | None, at: float) -> None:
        from ..daemon.metrics import parse_metrics

        self.m = parse_metrics(text)
        self.health = health
        self.at = at

    def value(self, name: str, **labels: str) -> float:
        series = self.m.get("tlsmirror_" + name) or self.m.get("tlsmirror_" + name + "_total") or {}
        return float(series.get(tuple(sorted(labels.items())), 0.0))

    def by(self, name: str, label: str) -> dict[str, float]:
        series = self.m.get("tlsmirror_" + name + "_total") or self.m.get("tlsmirror_" + name) or {}
        out: dict[str, float] = {}
        for key, v in series.items():
            k = dict(key).get(label, "")
            out[k] = out.get(k, 0.0) + float(v)
        return out

    def exporters(self) -> dict[str, dict[str, float]]:
        series = self.m.get("tlsmirror_exporter_total") or self.m.get("tlsmirror_exporter") or {}
        out: dict[str, dict[str, float]] = {}
        for key, v in series.items():
            d = dict(key)
            out.setdefault(d.get("exporter", "?"), {})[d.get("counter", "?")] = float(v)
        return out


def metrics_base(url: str) -> str:
    base = url.rstrip("/")
    for suffix in ("/metrics", "/healthz", "/health"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    if "://" not in base:
        base = "http://" + base
    return base


def scrape(url: str, timeout: float) -> Scrape:
    """Read /metrics and /healthz. Raises OSError (with a readable message) when they do not answer."""
    base = metrics_base(url)
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code} from {base}/metrics") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise OSError(str(reason)) from None
    health: dict[str, Any] | None = None
    with contextlib.suppress(urllib.error.URLError, OSError, ValueError), \
            urllib.request.urlopen(base + "/healthz", timeout=timeout) as resp:
        data = json.loads(resp.read())
        health = data if isinstance(data, dict) else None
    try:
        return Scrape(text, health, time.monotonic())
    except ValueError as exc:
        raise OSError(f"{base}/metrics is not Prometheus text ({exc}): is --url the sensor's metrics "
                      "server?") from None


# ---------------------------------------------------------------------------- configuration
def check_config(opts: DoctorOptions) -> tuple[Config, Result]:
    """The effective configuration, or the defaults when it cannot be loaded (reported)."""
    env = os.environ if opts.env is None else opts.env
    try:
        cfg = load_config(opts.config, env=env)
    except InputError as exc:
        text = str(exc)
        cfg = load_config(None, env={}, use_default_path=False)
        if "Permission denied" in text:
            return cfg, Result("config", WARN, f"cannot read the configuration: {text}",
                               ["run doctor as root (sudo), or as the service user, to read it; "
                                "the checks below use the defaults"])
        return cfg, Result("config", FAIL, text,
                           ["`tlsmirror run` refuses this configuration too: fix it, check with "
                            "`tlsmirror config check`; the checks below use the defaults"])
    where = cfg.path or "none (defaults and environment)"
    res = Result("config", OK, f"{where}: valid", data={"path": cfg.path})
    if cfg.warnings:
        res.status = WARN
        res.message += f"; {len(cfg.warnings)} warning(s)"
        res.advice = list(cfg.warnings)
    return cfg, res


# ---------------------------------------------------------------------------- service
def check_service(unit: str, timeout: float) -> Result:
    """``systemctl is-active UNIT`` when systemd runs this machine."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not os.path.isdir("/run/systemd/system"):
        return Result("service", SKIP, "systemd is not running here: the unit was not checked "
                                       "(the metrics line below tells whether the sensor runs)")
    try:
        out = subprocess.run([systemctl, "is-active", unit], capture_output=True, text=True, timeout=timeout)
        state = (out.stdout.strip() or out.stderr.strip() or "unknown").splitlines()[0]
        show = subprocess.run([systemctl, "show", unit, "-p", "LoadState", "-p", "NRestarts", "-p", "SubState"],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return Result("service", WARN, f"systemctl failed: {exc}", ["check by hand: systemctl status " + unit])
    props = dict(line.split("=", 1) for line in show.stdout.splitlines() if "=" in line)
    data = {"state": state, **props}
    if props.get("LoadState") == "not-found":
        return Result("service", FAIL, f"the systemd unit {unit} is not installed", [
            "install with bin/install.sh (docs/install.md), or give the unit's name with --unit"], data)
    restarts = int(props.get("NRestarts", "0") or 0) if props.get("NRestarts", "").isdigit() else 0
    if state == "active":
        res = Result("service", OK, f"{unit} is active", data=data)
        if restarts:
            res.status = WARN
            res.message += f", restarted {restarts} times by systemd"
            res.advice = [f"it crashed or exited with an error: journalctl -u {unit} -n 100 shows why"]
        return res
    if state in ("activating", "reloading", "deactivating"):
        return Result("service", WARN, f"{unit} is {state}", [
            f"run doctor again in a few seconds; if it stays so: journalctl -u {unit} -n 50"], data)
    return Result("service", FAIL, f"{unit} is {state}", [
        f"start it: sudo systemctl start {unit}; if it stops again, journalctl -u {unit} -n 50 shows why "
        "(a configuration error is one line naming the key and the fix)", _see("sensor-not-running")], data)


def check_metrics(url: str | None, s0: Scrape | None, error: str | None, why_no_url: str = "") -> Result:
    """The metrics endpoint answers, /healthz, workers."""
    if url is None:
        return Result("metrics", SKIP, why_no_url or "no metrics URL", [
            "enable metrics (metrics.enabled: true) or give --url; without them only the probes below run"])
    base = metrics_base(url)
    if s0 is None:
        return Result("metrics", FAIL, f"{base} does not answer: {error}", [
            "is `tlsmirror run` running (systemctl status tlsmirror)? with metrics on this address "
            "(metrics.host/metrics.port, or give --url)?", _see("sensor-not-running")], {"url": base})
    h = s0.health or {}
    alive = s0.value("workers_alive")
    configured = s0.value("workers_configured")
    restarts = s0.value("worker_restarts")
    data = {"url": base, "health": h, "workers_alive": alive, "workers_configured": configured,
            "worker_restarts": restarts}
    status = h.get("status", "?")
    msg = (f"{base}: {status}, {_n(alive)}/{_n(configured)} workers, up {_n(round(h.get('uptime_s', 0)))} s"
           if h else f"{base}: /metrics answers, /healthz does not")
    res = Result("metrics", OK, msg, data=data)
    if not h:
        res.status = WARN
        res.advice.append("/healthz did not answer: is --url the sensor's metrics server?")
    reasons = [str(r) for r in h.get("reasons", [])]
    if status not in ("ok", "?") or reasons:
        res.status = WARN
        res.message += ": " + "; ".join(reasons)
        for r in reasons:
            if r.startswith("worker down"):
                res.advice.append("a worker process is down: the log (journalctl -u tlsmirror) shows why; "
                                  "it is restarted after 0.5 s unless it keeps crashing")
            elif r.startswith("no packets"):
                res.advice.append("no packet was captured lately: see the interface line below")
    if restarts:
        res.status = WARN
        res.message += f"; {_n(restarts)} worker restarts"
        res.advice.append("workers died and were restarted: the log has the traceback (report it); "
                          "their flows were lost")
    return res


# ---------------------------------------------------------------------------- interfaces
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
            "mirror arrives on", _see("no-packets")])
    data: dict[str, Any] = {"operstate": before.operstate, "up": bool(before.flags & IFF_UP),
                            "promiscuous": bool(before.flags & IFF_PROMISC)}
    if not before.flags & IFF_UP:
        return Result(label, FAIL, f"{name} is down (administratively)", [
            f"bring it up: sudo ip link set {name} up (and make it persistent in the network configuration)",
            _see("no-packets")], data)
    if before.operstate in ("down", "lowerlayerdown", "notpresent"):
        return Result(label, FAIL, f"{name} is up but has no link ({before.operstate})", [
            "no carrier: check the cable / the switch's mirror (SPAN) destination port / the VM's "
            "vNIC attachment", _see("no-packets")], data)
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
    res.message += f", {_pl(rx, 'packet')} received in {wait:g} s ({_n(round(rate))}/s)"
    res.message += ", promiscuous" if before.flags & IFF_PROMISC else ", not promiscuous"
    if wait > 0 and rx == 0:
        res.status = WARN
        res.advice += [
            "nothing arrives: check that the mirror session (switch SPAN/RSPAN/ERSPAN, cloud traffic "
            "mirroring, F5 clone pool member) targets this interface and that traffic flows now",
            f"confirm with: sudo tcpdump -c 20 -n -i {name}", _see("no-packets")]
    if nic_drops and rx and nic_drops / (rx + nic_drops) > DROP_RATIO:
        res.status = WARN
        res.message += f"; the NIC dropped {_n(nic_drops)} (rx_missed/fifo)"
        res.advice.append(f"the NIC's receive ring overflows: raise it (ethtool -g {name}; "
                          f"sudo ethtool -G {name} rx 4096) and spread interrupts (irqbalance)")
    if captured and s0 is not None and s1 is not None and wait > 0:
        got = s1.value("packets") - s0.value("packets")
        data["sensor_packets"] = got
        last = s1.value("last_packet_timestamp_seconds")
        age = max(0.0, time.time() - last) if last else None
        if got or age is None:
            res.message += f"; sensor captured {_n(got)}" + (" on all its interfaces" if shared else "")
        else:  # workers report every metrics.stats_interval: a short wait can miss the report
            res.message += f"; sensor's latest packet {age:.1f} s ago"
        if rx >= 100 and got == 0 and (age is None or age > wait + 2 * stats_interval + 1):
            res.status = WARN
            res.advice.append("packets arrive but the sensor captured none of them: is it capturing on "
                              f"{name} (capture.interfaces)? does capture.bpf exclude them? (the default "
                              "filter passes TCP and VXLAN/GENEVE/GRE tunnels only)")
    return res


# ---------------------------------------------------------------------------- packet sample
def host_addresses(timeout: float = 2.0) -> set[bytes]:
    """This host's IP addresses, packed (from `ip -j addr`, else the host name)."""
    out: set[bytes] = {socket.inet_pton(socket.AF_INET, "127.0.0.1"), socket.inet_pton(socket.AF_INET6, "::1")}
    ip = shutil.which("ip")
    found = False
    if ip is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError, TypeError):
            proc = subprocess.run([ip, "-j", "addr", "show"], capture_output=True, text=True, timeout=timeout)
            for link in json.loads(proc.stdout or "[]"):
                for a in link.get("addr_info", []):
                    fam = socket.AF_INET6 if a.get("family") == "inet6" else socket.AF_INET
                    with contextlib.suppress(OSError, TypeError):
                        out.add(socket.inet_pton(fam, str(a.get("local", "")).split("%")[0]))
                        found = True
    if not found:
        with contextlib.suppress(OSError):
            for fam, _t, _p, _c, sa in socket.getaddrinfo(socket.gethostname(), None):
                with contextlib.suppress(OSError):
                    out.add(socket.inet_pton(fam, str(sa[0]).split("%")[0]))
    return out


def _outer_ip(linktype: int, data: bytes) -> tuple[bytes, bytes, int, int, int] | None:
    """(src, dst, protocol, sport, dport) of the outermost IP header, or None (not IP)."""
    from ...frames.errors import FrameSkip
    from ...frames.layers import K_ETH, K_IP, K_IPV4, K_IPV6
    from ...frames.link import ethernet_payload, link_payload

    try:
        kind, off = link_payload(linktype, data)
        if kind == K_ETH:
            kind, off = ethernet_payload(data, off, len(data))
    except FrameSkip:
        return None
    if off >= len(data):
        return None
    if kind == K_IP:
        kind = {4: K_IPV4, 6: K_IPV6}.get(data[off] >> 4, -1)
    if kind == K_IPV4:
        if off + 20 > len(data) or data[off] >> 4 != 4:
            return None
        ihl = (data[off] & 0x0F) * 4
        proto = data[off + 9]
        src, dst = data[off + 12:off + 16], data[off + 16:off + 20]
        l4 = off + ihl
        frag = struct.unpack_from("!H", data, off + 6)[0] & 0x1FFF
        if frag:
            return src, dst, proto, 0, 0
    elif kind == K_IPV6:
        if off + 40 > len(data) or data[off] >> 4 != 6:
            return None
        proto = data[off + 6]
        src, dst = data[off + 8:off + 24], data[off + 24:off + 40]
        l4 = off + 40
    else:
        return None
    sport = dport = 0
    if proto in (6, 17) and l4 + 4 <= len(data):
        sport, dport = struct.unpack_from("!HH", data, l4)
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

    def add(self, linktype: int, data: bytes, pkttype: int, own: set[bytes], sensor_ports: frozenset[int],
            decoder: Any = None) -> None:
        self.frames += 1
        if pkttype in (PACKET_BROADCAST, PACKET_MULTICAST):
            self.non_ip += 1
            return
        outer = _outer_ip(linktype, data)
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
    parts = [f"{_pl(sample.counted, 'packet')} sampled: {mirrored} mirrored"]
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
            _see("the-capture-shows-the-hosts-own-traffic")]
    both, one = sample.directions()
    if one >= 3 and both == 0:
        res.status = WARN
        res.message += f"; all {one} TCP flows sampled show one direction only"
        res.advice += [
            "the mirror carries one direction: mirror both ingress and egress (SPAN `both`, traffic "
            "mirror filters for inbound and outbound, clone pool on the client side of the virtual "
            "server); asymmetric routing can also send the replies past the mirror point",
            _see("only-one-direction-mirrored")]
    return res


# ---------------------------------------------------------------------------- key listener
def probe_key_listener(cfg: Config, timeout: float) -> Result:
    """TCP connect to the key listener and, with TLS, a handshake that sends nothing (a probe)."""
    k = cfg.keys
    label = "key listener"
    if not k.enabled:
        return Result(label, SKIP, "the key listener is off (keys.enabled: false)")
    if k.port == 0:
        return Result(label, SKIP, "keys.port is 0 (any free port): the port is not known, nothing probed")
    host = _local_host(k.host)
    where = _hostport(host, k.port)
    data: dict[str, Any] = {"address": where, "tls": k.tls}
    try:
        sock = socket.create_connection((host, k.port), timeout=timeout)
    except ConnectionRefusedError:
        return Result(label, FAIL, f"nothing listens on {where}", [
            "the sensor is not running, runs without the key listener (--no-keys), or on another "
            "keys.port; see the service and metrics lines", _see("no-keys-arriving")], data)
    except TimeoutError:
        return Result(label, FAIL, f"{where} does not answer within {timeout:g} s", [
            "a firewall drops the connection, or keys.host is an address of another machine"], data)
    except OSError as exc:
        return Result(label, FAIL, f"cannot connect to {where}: {exc.strerror or exc}", [
            "check keys.host / keys.port"], data)
    refused_hint = ""
    if k.allow:
        import ipaddress

        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(host)
            if not any(ip in ipaddress.ip_network(c, strict=False) for c in k.allow):
                refused_hint = (f"keys.allow does not include {host}: the listener closes this probe; "
                                "that is expected, run doctor from an allowed host to test TLS")
    with sock:
        if not k.tls:
            return Result(label, OK, f"{where} accepts connections (plain TCP: secrets cross the network "
                                     "unencrypted)", data=data)
        if k.client_ca:
            return Result(label, OK, f"{where} accepts connections; TLS not probed: the listener "
                                     "requires a client certificate (keys.client_ca)", data=data)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock.settimeout(timeout)
        try:
            with ctx.wrap_socket(sock, server_hostname=None) as tls:
                version = tls.version() or "?"
                der = tls.getpeercert(binary_form=True)
        except (ssl.SSLError, OSError) as exc:
            advice = [refused_hint] if refused_hint else [
                "the listener accepts TCP but the TLS handshake fails: is keys.tls the same on both sides? "
                "is the certificate (keys.cert/keys.key, or the self-signed one in keys.state_dir) readable "
                "by the service user? the sensor's log says more"]
            status = WARN if refused_hint else FAIL
            return Result(label, status, f"{where}: TLS handshake failed: {exc}", advice, data)
    data["tls_version"] = version
    msg = f"{where} accepts TLS ({version})"
    res = Result(label, OK, msg, data=data)
    if der:
        try:
            from cryptography import x509

            cert = x509.load_der_x509_certificate(der)
            left = (cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
            days = int(left // 86400)
            data["certificate_days_left"] = days
            if left <= 0:
                res.status = FAIL
                res.message += ", its certificate has EXPIRED"
                res.advice.append("senders that verify it (the F5 server-ssl profile) refuse it: renew "
                                  "keys.cert (or delete the self-signed pair in keys.state_dir and restart), "
                                  "import it on the F5, then `systemctl reload tlsmirror`")
            elif days < 14:
                res.status = WARN
                res.message += f", its certificate expires in {days} days"
                res.advice.append("renew keys.cert, import it on the F5 (server-ssl ca-file), then "
                                  "`systemctl reload tlsmirror` (SIGHUP reloads it)")
            else:
                res.message += f", certificate valid {days} more days"
        except (ValueError, ImportError):
            pass
    return res


def check_keys(cfg: Config, s0: Scrape | None, s1: Scrape | None, wait: float) -> Result:
    """Secrets arriving at the key listener; the listener's refusal counters."""
    label = "keys"
    if s0 is None:
        return Result(label, SKIP, "needs the metrics endpoint")
    last = s1 or s0
    received = last.value("keys_received")
    preloaded = last.value("keys_preloaded")
    matched = last.value("keys_matched")
    expired = last.value("keys_expired")
    delta = received - s0.value("keys_received") if s1 is not None else 0.0
    ks = last.by("keyserver", "counter")
    data: dict[str, Any] = {"received": received, "received_in_wait": delta, "preloaded": preloaded,
                            "matched": matched, "expired": expired, "keyserver": ks}
    if not cfg.keys.enabled:
        if preloaded:
            return Result(label, OK, f"key listener off; {_n(preloaded)} secrets preloaded from key log "
                                     f"files, {_n(matched)} matched", data=data)
        return Result(label, WARN, "no key source: the key listener is off and no key log file was loaded", [
            "nothing can be decrypted: enable the key listener (keys.enabled: true) for the F5 iRule, "
            "or give keys.keylog_files", _see("no-keys-arriving")], data)
    advice: list[str] = []
    senders = ks.get("connections", 0) - ks.get("probes", 0) - ks.get("refused_network", 0)
    if ks.get("refused_network"):
        advice.append(f"{_n(ks['refused_network'])} connections refused by keys.allow: add the F5 self IP of the "
                      "egress VLAN (SNAT automap) to keys.allow")
    if ks.get("tls_failed"):
        advice.append(f"{_n(ks['tls_failed'])} TLS handshakes with senders failed: the F5 server-ssl profile "
                      "must trust the listener's certificate (ca-file = keyserver-cert.pem or keys.cert)")
    if ks.get("refused_client_cert"):
        advice.append(f"{_n(ks['refused_client_cert'])} senders had no acceptable client certificate "
                      "(keys.client_ca): give the server-ssl profile a cert/key signed by that CA")
    if ks.get("not_tls"):
        advice.append(f"{_n(ks['not_tls'])} senders spoke plain TCP to the TLS listener: the sideband virtual "
                      "server needs a server-ssl profile (or HSL: run the listener plain, keys.tls: false, "
                      "with keys.allow)")
    if ks.get("malformed"):
        advice.append(f"{_n(ks['malformed'])} malformed key log lines: empty TLS 1.3 secrets mean the "
                      "BIG-IP lacks SSL::tls13_secret (upgrade, or limit the client-ssl profile to TLS 1.2); "
                      "paste the iRule again from `tlsmirror f5 irule`")
    if ks.get("evicted"):
        advice.append(f"{_n(ks['evicted'])} sender connections evicted (listener full): raise "
                      "keys.max_connections or find what holds connections open")
    if received == 0:
        msg = "no secrets received since start"
        if ks:
            probes = ks.get("probes", 0)
            msg += f" ({_pl(ks.get('connections', 0), 'connection')}, {_n(probes)} of them doctor/monitor probes)"
        if preloaded:
            msg += f"; {_n(preloaded)} preloaded from key log files"
        if senders <= 0 and not advice:
            advice.append("no sender connected: attach the iRule to the API's virtual server "
                          "(`tlsmirror f5 irule` / `f5 tmsh`), check that the sideband pool member is up and "
                          f"that TCP {cfg.keys.port} is allowed from the F5 self IPs to this host")
        advice.append(_see("no-keys-arriving"))
        return Result(label, WARN, msg, advice, data)
    msg = f"{_n(received)} secrets received"
    if s1 is not None:
        msg += f" (+{_n(delta)} in {wait:g} s)"
    msg += f", {_n(matched)} matched, {_n(expired)} expired unused"
    res = Result(label, OK, msg, data=data)
    if s1 is not None and delta == 0:
        no_key = s1.value("tls_connections", outcome="no_key") - s0.value("tls_connections", outcome="no_key")
        if no_key > 0:
            res.status = WARN
            res.message += f"; none arrived while {_n(no_key)} connections ended without their key"
            advice.insert(0, "secrets stopped arriving: the F5 log (/var/log/ltm, `tlsmirror:` lines) says why; "
                             "check the sideband pool member and the listener counters")
    if advice:
        res.status = WARN
        res.advice = [*advice, _see("no-keys-arriving")]
    return res


# ---------------------------------------------------------------------------- TLS outcomes
def check_match(s0: Scrape | None, s1: Scrape | None) -> Result:
    """Share of TLS connections whose secrets were found: decrypted vs no_key."""
    label = "match rate"
    if s0 is None:
        return Result(label, SKIP, "needs the metrics endpoint")
    last = s1 or s0
    out = last.by("tls_connections", "outcome")
    matched = out.get("decrypted", 0) + out.get("gap", 0)
    no_key = out.get("no_key", 0)
    total = matched + no_key
    data: dict[str, Any] = {"decrypted": out.get("decrypted", 0), "gap": out.get("gap", 0), "no_key": no_key}
    if total == 0:
        tls_flows = last.by("engine", "counter").get("tls_flows", 0)
        return Result(label, SKIP, f"no TLS connection with its handshake has ended yet ({_n(tls_flows)} TLS "
                                   "flows seen); outcomes count when a connection closes or idles out "
                                   "(engine.idle_timeout)", data=data)
    ratio = matched / total
    data["ratio"] = round(ratio, 4)
    msg = f"{_n(matched)} of {_n(total)} TLS connections had their secrets ({_pct(matched, total)})"
    if matched != out.get("decrypted", 0):
        msg += f"; {_n(out.get('gap', 0))} of them with gaps"
    if ratio >= MATCH_RATIO:
        return Result(label, OK, msg, data=data)
    advice: list[str] = []
    received = last.value("keys_received") + last.value("keys_preloaded")
    expired = last.value("keys_expired")
    if received == 0:
        advice.append("no secrets arrive at all: see the keys line")
    else:
        if expired:
            advice.append(f"{_n(expired)} secrets expired unused: keys arrive for connections the mirror "
                          "does not carry: the iRule is on a virtual server whose traffic is not mirrored here "
                          "(wrong virtual server, another VLAN or F5 unit)")
        advice.append("the iRule must be attached to every virtual server that is mirrored (an iRule missing "
                      "on one virtual server leaves its connections without keys)")
        advice.append("keys that arrive later than engine.key_wait (30 s) after their records are too late: "
                      "F5 sideband timeouts or a slow listener (check /var/log/ltm); raise engine.key_wait")
        advice.append("a mirror that misses one direction or drops packets makes handshakes unreadable: "
                      "see the mirror and drops lines")
    advice.append(_see("keys-arrive-but-do-not-match"))
    return Result(label, WARN, msg + f", below {MATCH_RATIO:.0%}", advice, data)


_REASONS = ("to see each connection's reason, record a minute of the mirror (sudo tcpdump -i IFACE -w /tmp/m.pcap) "
            "with keys.keylog_out set, then run `tlsmirror decrypt /tmp/m.pcap --keylog KEYLOG_OUT`")


def check_outcomes(s0: Scrape | None, s1: Scrape | None) -> Result:
    """The other TLS outcomes: decrypt failures, unsupported, no handshake, gaps."""
    label = "TLS outcomes"
    if s0 is None:
        return Result(label, SKIP, "needs the metrics endpoint")
    last = s1 or s0
    out = last.by("tls_connections", "outcome")
    total = sum(out.values())
    data = dict(out)
    if total == 0:
        return Result(label, SKIP, "no TLS connection has ended yet", data=data)
    shown = ", ".join(f"{k} {_n(v)}" for k, v in sorted(out.items()) if v)
    res = Result(label, OK, f"{_n(total)} connections: {shown}", data=data)
    failed = out.get("decrypt_failed", 0)
    unsupported = out.get("unsupported", 0)
    no_hs = out.get("no_handshake", 0)
    gap = out.get("gap", 0)
    if failed / total > 0.01:
        res.status = WARN
        res.advice += [f"{_n(failed)} connections failed to decrypt: a secret for another session, frames cut "
                       "by the mirror (truncation/slicing on the SPAN/ERSPAN session, capture.snaplen too "
                       "small) or corrupted; " + _REASONS, _see("decrypt-failures")]
    if unsupported / total > 0.01:
        res.status = WARN
        res.advice += [f"{_n(unsupported)} connections use a version or cipher suite tlsmirror cannot decrypt "
                       "(ARIA, Camellia-GCM, GOST or SM4 suites, SSL 2.0); " + _REASONS,
                       _see("unsupported-suites-or-versions")]
    if no_hs / total > 0.10:
        res.status = WARN
        res.advice += [f"{_n(no_hs)} connections without a readable handshake: normal for connections that "
                       "began before the sensor started; otherwise the mirror misses one direction (the "
                       "ClientHello and ServerHello are both needed), or tunnelled mirrors split flows "
                       "across workers (capture.workers: 1)", _see("only-one-direction-mirrored")]
    if gap / total > 0.10:
        res.status = WARN
        res.advice += [f"{_n(gap)} connections lost bytes (TCP gaps): kernel or mirror drops; see the drops "
                       "line", _see("gaps-and-kernel-drops")]
    return res


# ---------------------------------------------------------------------------- exporter
def _otlp_address(endpoint: str, protocol: str, insecure: bool) -> tuple[str, int] | None:
    if protocol == "http":
        url = endpoint if "://" in endpoint else f"{'http' if insecure else 'https'}://{endpoint}"
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        return (parts.hostname, port) if parts.hostname else None
    rest = endpoint.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port_text = rest.rpartition(":")
    if not sep or not port_text.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port_text)


def probe_otlp(cfg: Config, timeout: float) -> Result:
    """TCP connect to the collector, then an empty export request with the configured headers/token."""
    o = cfg.otlp
    label = "exporter"
    assert o.endpoint is not None
    data: dict[str, Any] = {"endpoint": o.endpoint, "protocol": o.protocol}
    addr = _otlp_address(o.endpoint, o.protocol, o.insecure)
    name = f"OTLP/{o.protocol} {o.endpoint}"
    if addr is not None:
        try:
            socket.create_connection(addr, timeout=timeout).close()
        except ConnectionRefusedError:
            return Result(label, FAIL, f"{name}: connection refused", [
                "the collector / platform agent is not running there, or otlp.endpoint has the wrong port "
                "(OTLP: 4317 gRPC, 4318 HTTP); spans wait in the spool meanwhile",
                _see("exporter-errors-and-authentication")], data)
        except TimeoutError:
            return Result(label, FAIL, f"{name}: no answer within {timeout:g} s", [
                "a firewall drops the connection or the address is wrong (otlp.endpoint)",
                _see("exporter-errors-and-authentication")], data)
        except OSError as exc:
            return Result(label, FAIL, f"{name}: cannot connect: {exc.strerror or exc}", [
                "check otlp.endpoint (host name resolvable? route?)",
                _see("exporter-errors-and-authentication")], data)
    token: str | None = None
    token_note = ""
    try:
        token = read_token(cfg)
    except InputError:
        token_note = "otlp.token_file is not readable as this user (run doctor with sudo to test the token)"
    try:
        from ..export.otlp import GrpcTransport, HttpTransport, OtlpConfig
    except ImportError:
        return Result(label, OK, f"{name} accepts connections (the OTLP exporter is not in this build)",
                      data=data)
    headers = list(o.headers.items())
    if token:
        headers.append((o.token_header, token))
    ocfg = OtlpConfig(endpoint=o.endpoint, protocol=o.protocol, insecure=o.insecure, ca=o.ca, cert=o.cert,
                      key=o.key, timeout=timeout, compression=o.compression)
    transport: Any = None
    try:
        transport = GrpcTransport(ocfg, headers) if o.protocol == "grpc" else HttpTransport(ocfg, headers)
        outcome = transport.send(b"")  # an empty ExportTraceServiceRequest: no spans
    except InputError as exc:
        return Result(label, FAIL, f"{name}: {exc}", ["fix the TLS files of the otlp section"], data)
    except Exception as exc:  # a transport problem must not stop the other checks
        return Result(label, WARN, f"{name}: the empty export request could not be made ({type(exc).__name__})",
                      data=data)
    finally:
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
    message = str(getattr(outcome, "message", "") or "")
    if token:
        message = message.replace(token, "***")
    message = message[:160]
    data["probe"] = "ok" if outcome.ok else message
    if outcome.ok:
        res = Result(label, OK, f"{name}: an empty export was accepted" + (" (token sent)" if token else ""),
                     data=data)
        if token_note:
            res.status = WARN
            res.advice.append(token_note)
        return res
    code = message.split(":", 1)[0].strip()
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "HTTP 401", "HTTP 403"):
        if token_note or not token:
            return Result(label, FAIL, f"{name}: authentication required ({code}) and no token was sent", [
                token_note or "set otlp.token_file (install.sh -t / --token-file) to the platform's agent token",
                _see("exporter-errors-and-authentication")], data)
        return Result(label, FAIL, f"{name}: token rejected ({code})", [
            "the collector refuses otlp.token / otlp.token_file: put a valid (not expired) agent token there, "
            f"check otlp.token_header ({o.token_header}), then `systemctl restart tlsmirror`",
            _see("exporter-errors-and-authentication")], data)
    if code in ("UNIMPLEMENTED", "HTTP 404", "HTTP 405"):
        return Result(label, FAIL, f"{name}: not an OTLP trace receiver ({code})", [
            "wrong port or protocol: OTLP/gRPC is usually 4317 (otlp.protocol: grpc), OTLP/HTTP 4318 with "
            "path /v1/traces (otlp.protocol: http)", _see("exporter-errors-and-authentication")], data)
    if code == "UNAVAILABLE" and addr is not None:
        return Result(label, FAIL, f"{name}: accepts TCP but not OTLP/gRPC ({message})", [
            "TLS mismatch (otlp.insecure / https:// vs a plaintext collector, or the reverse), a wrong CA "
            "(otlp.ca), or an HTTP port given to the gRPC exporter", _see("exporter-errors-and-authentication")],
            data)
    return Result(label, WARN, f"{name}: the empty export request failed: {message}", [
        "the collector answered with an error; its log says why", _see("exporter-errors-and-authentication")],
        data)


def check_exporter(cfg: Config, probe: Result | None, s0: Scrape | None, s1: Scrape | None,
                   wait: float) -> Result:
    """The probe result, plus the exporters' failure/drop counters and the OTLP spool."""
    label = "exporter"
    if probe is None:
        out = cfg.output.jsonl
        res = Result(label, OK, "OTLP export is off (otlp.endpoint not set); API calls go to "
                                + ("stdout" if out in (None, "-") else out))
        if out not in (None, "-"):
            directory = os.path.dirname(os.path.abspath(out))
            if not os.path.isdir(directory):
                res.status, res.message = FAIL, f"output.jsonl {out}: the directory {directory} does not exist"
                res.advice.append("create it (writable by the service user) or fix output.jsonl")
    else:
        res = dataclasses.replace(probe, advice=list(probe.advice), data=dict(probe.data))
    if s0 is None:
        return res
    last = s1 or s0
    exporters = last.exporters()
    before = s0.exporters()
    res.data["exporters"] = exporters
    problems: list[str] = []
    for ex, c in sorted(exporters.items()):
        prev = before.get(ex, {})
        failed = c.get("failed", 0) + c.get("errors", 0)
        dropped = c.get("dropped", 0)
        retries_now = c.get("retries", 0) - prev.get("retries", 0) if s1 is not None else 0
        if failed:
            problems.append(f"{ex}: {_n(failed)} failed")
        if dropped:
            problems.append(f"{ex}: {_n(dropped)} dropped")
        if c.get("partial_rejected"):
            problems.append(f"{ex}: {_n(c['partial_rejected'])} rejected by the receiver")
        if retries_now > 0:
            problems.append(f"{ex}: retrying now ({_n(retries_now)} retries in {wait:g} s)")
        spool = c.get("spool_bytes", 0)
        if spool:
            limit = cfg.otlp.spool_max_bytes if cfg.otlp.spool_dir else 64 << 20
            res.data["spool_bytes"] = spool
            res.message += f"; spool {_size(spool)} of {_size(limit)}"
            if limit and spool / limit > 0.5:
                problems.append(f"{ex}: spool {_pct(spool, limit)} full")
        if "exported" in c:
            res.message += f"; {ex} exported {_n(c['exported'])}"
    queue_drops = last.value("dropped", where="export_queue")
    if queue_drops:
        problems.append(f"export queue: {_n(queue_drops)} API calls dropped (exporters too slow)")
    if cfg.otlp.spool_dir and os.path.isdir(cfg.otlp.spool_dir):
        with contextlib.suppress(OSError):
            st = os.statvfs(cfg.otlp.spool_dir)
            free = st.f_bavail * st.f_frsize
            res.data["spool_disk_free"] = free
            if free < cfg.otlp.spool_max_bytes:
                problems.append(f"only {_size(free)} free on the spool's file system (otlp.spool_max_bytes "
                                f"{_size(cfg.otlp.spool_max_bytes)})")
    if problems:
        if res.status == OK:
            res.status = WARN
        res.message += "; " + "; ".join(problems)
        res.advice += [
            "the exporter cannot deliver fast enough or at all: check the collector (the probe above), the "
            "network, and the sensor's log for `OTLP export ... failed` lines",
            "a spool that grows means the collector is unreachable or slower than the traffic; at "
            "otlp.spool_max_bytes new batches are dropped (counted as dropped)", _see("spool-filling")]
    return res


# ---------------------------------------------------------------------------- drops, memory
def check_drops(s0: Scrape | None, s1: Scrape | None, wait: float) -> Result:
    """Kernel (socket buffer) drops and drops inside the sensor, against 0.1 % of the traffic."""
    label = "drops"
    if s0 is None:
        return Result(label, SKIP, "needs the metrics endpoint")
    last = s1 or s0
    kd = last.value("kernel_drops")
    kp = last.value("kernel_packets")
    packets = max(kp, last.value("packets") + kd)
    dropped = last.by("dropped", "where")
    internal = sum(dropped.values())
    calls = sum(last.by("exchanges", "http_version").values())
    budget = last.by("tcp", "counter").get("budget_dropped_bytes", 0)
    data: dict[str, Any] = {"kernel_drops": kd, "kernel_packets": kp, "internal": dropped, "api_calls": calls,
                            "tcp_budget_dropped_bytes": budget}
    msg = f"kernel {_n(kd)} of {_n(packets)} packets ({_pct(kd, packets)})"
    msg += f", internal {_n(internal)} of {_n(calls + internal)} API calls"
    if s1 is not None:
        dk = kd - s0.value("kernel_drops")
        di = internal - sum(s0.by("dropped", "where").values())
        msg += f" (+{_n(dk)} / +{_n(di)} in {wait:g} s)"
        data.update(kernel_drops_in_wait=dk, internal_in_wait=di)
    res = Result(label, OK, msg, data=data)
    if packets and kd / packets > DROP_RATIO:
        res.status = WARN
        res.advice += [
            "the kernel drops packets because the workers do not read fast enough: add workers "
            "(capture.workers, up to one per core), raise capture.buffer_bytes (e.g. 256MiB) for bursts, "
            "narrow the capture (capture.bpf, engine.ports), and keep other load off the sensor's cores",
            _see("gaps-and-kernel-drops")]
    if internal and internal / (calls + internal) > DROP_RATIO:
        res.status = WARN
        where = ", ".join(f"{k} {_n(v)}" for k, v in sorted(dropped.items()) if v)
        res.message += f" [{where}]"
        if dropped.get("worker_outbox"):
            res.advice.append("worker_outbox: the parent process does not take API calls fast enough "
                              "(busy exporters or an overloaded machine); capture.outbox_bytes absorbs bursts")
        if dropped.get("export_queue"):
            res.advice.append("export_queue: the exporters are slower than the traffic or stalled: see the "
                              "exporter line; output.queue_size absorbs bursts")
        res.advice.append(_see("gaps-and-kernel-drops"))
    if budget:
        res.message += f"; reassembly budget dropped {_size(budget)}"
    return res


def check_memory(url: str | None, s0: Scrape | None, s1: Scrape | None) -> Result:
    """Resident memory of the sensor's processes against the machine's memory."""
    label = "memory"
    last = s1 or s0
    if last is None:
        return Result(label, SKIP, "needs the metrics endpoint")
    rss = last.by("memory_rss_bytes", "process")
    total = sum(rss.values())
    held = last.value("tls_held_bytes")
    buffered = last.value("tcp_buffered_bytes")
    data: dict[str, Any] = {"rss": rss, "rss_total": total, "tls_held_bytes": held, "tcp_buffered_bytes": buffered}
    msg = f"{_size(total)} resident in {len(rss)} processes (TLS held {_size(held)}, TCP out-of-order " \
          f"{_size(buffered)})"
    res = Result(label, OK, msg, data=data)
    host = urllib.parse.urlsplit(metrics_base(url or "http://127.0.0.1")).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return res
    mem_total = 0
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    if mem_total:
        data["mem_total"] = mem_total
        res.message += f", {_pct(total, mem_total)} of the machine's {_size(mem_total)}"
        if total / mem_total > 0.6:
            res.status = WARN
            res.advice += [
                "memory per worker is bounded by engine.max_total_buffer + engine.max_hold_bytes_total plus the "
                "flow table (engine.max_flows): lower them, lower engine.idle_timeout / engine.key_wait, or use "
                "fewer workers", _see("high-memory")]
    return res


# ---------------------------------------------------------------------------- the run
def _metrics_url(cfg: Config, given: str | None) -> tuple[str | None, str]:
    if given:
        return given, ""
    m = cfg.metrics
    if not m.enabled:
        return None, "metrics are off (metrics.enabled: false): counters cannot be read"
    if m.port == 0:
        return None, "metrics.port is 0 (any free port): give the sensor's metrics address with --url"
    return f"http://{_hostport(_local_host(m.host), m.port)}", ""


def _sensor_ports(cfg: Config) -> frozenset[int]:
    ports = set()
    if cfg.keys.enabled and cfg.keys.port:
        ports.add(cfg.keys.port)
    if cfg.metrics.enabled and cfg.metrics.port:
        ports.add(cfg.metrics.port)
    if cfg.otlp.endpoint:
        addr = _otlp_address(cfg.otlp.endpoint, cfg.otlp.protocol, cfg.otlp.insecure)
        if addr is not None:
            ports.add(addr[1])
    return frozenset(ports)


def _sample(name: str, wait: float, ports: frozenset[int], timeout: float) -> PacketSample | str:
    return sample_interface(name, wait, host_addresses(min(timeout, 2.0)), ports)


def run_doctor(opts: DoctorOptions) -> list[Result]:
    """Run every check; the results in display order."""
    timeout = max(0.2, opts.timeout)
    wait = max(0.0, min(opts.wait, 60.0))
    cfg, config_result = check_config(opts)
    url, why = _metrics_url(cfg, opts.url)
    interfaces = list(opts.interfaces) if opts.interfaces else list(cfg.capture.interfaces)
    captured = set(cfg.capture.interfaces)

    tasks: dict[str, _Task] = {"service": _Task(lambda: check_service(opts.unit, timeout))}
    if cfg.keys.enabled:
        tasks["keys"] = _Task(lambda: probe_key_listener(cfg, timeout))
    if cfg.otlp.endpoint:
        tasks["otlp"] = _Task(lambda: probe_otlp(cfg, timeout))

    s0: Scrape | None = None
    error: str | None = None
    if url is not None:
        try:
            s0 = scrape(url, timeout)
        except OSError as exc:
            error = str(exc)
    t0 = time.monotonic()
    states0 = {name: read_interface(name) for name in interfaces}
    if opts.sample and interfaces and wait > 0:
        ports = _sensor_ports(cfg)
        for name in interfaces:
            if states0[name].exists:
                tasks["sample:" + name] = _Task(functools.partial(_sample, name, wait, ports, timeout))
    if wait > 0:
        time.sleep(max(0.0, t0 + wait - time.monotonic()))
    states1 = {name: read_interface(name) for name in interfaces}
    elapsed = time.monotonic() - t0
    s1: Scrape | None = None
    if s0 is not None and url is not None and wait > 0:
        with contextlib.suppress(OSError):
            s1 = scrape(url, timeout)
    deadline = time.monotonic() + timeout + 1.0

    def collect(key: str, what: str) -> Any:
        task = tasks.get(key)
        if task is None:
            return None
        try:
            done, value = task.get(deadline)
        except Exception as exc:  # a bug in one check must not hide the others
            return Result(what, WARN, f"the check failed: {type(exc).__name__}: {exc}")
        if not done:
            return Result(what, WARN, f"no answer within {timeout:g} s (check timed out)")
        return value

    results = [config_result, collect("service", "service"), check_metrics(url, s0, error, why)]
    wait_s = round(elapsed, 1) if wait > 0 else 0.0
    if not interfaces:
        if cfg.capture.pcap:
            results.append(Result("capture", SKIP, f"the sensor reads a capture file ({cfg.capture.pcap}): "
                                                   "no interface to check (give -i IFACE to check one)"))
        else:
            results.append(Result("capture", FAIL, "no capture interface configured", [
                "set capture.interfaces (install.sh -i IFACE) to the interface the mirror arrives on",
                _see("no-packets")]))
    for name in interfaces:
        before = states0[name]
        results.append(check_interface(name, before, states1.get(name) if wait > 0 else None, wait_s,
                                       captured=name in captured, s0=s0, s1=s1, shared=len(captured) > 1,
                                       stats_interval=cfg.metrics.stats_interval))
        sample = collect("sample:" + name, f"mirror {name}") if before.exists else None
        if isinstance(sample, Result):
            results.append(sample)
        else:
            if sample is None and before.exists and opts.sample and wait == 0:
                sample = "no sample with --wait 0"
            results.append(check_mirror(name, sample, wait))
    key_probe = collect("keys", "key listener")
    results.append(key_probe if key_probe is not None else
                   Result("key listener", SKIP, "the key listener is off (keys.enabled: false)"))
    results.append(check_keys(cfg, s0, s1, wait_s))
    results.append(check_match(s0, s1))
    results.append(check_outcomes(s0, s1))
    otlp = collect("otlp", "exporter")
    results.append(check_exporter(cfg, otlp, s0, s1, wait_s))
    results.append(check_drops(s0, s1, wait_s))
    results.append(check_memory(url, s0, s1))
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------- output
def render_text(results: list[Result]) -> str:
    width = max((len(r.check) for r in results), default=8)
    lines = []
    for r in results:
        lines.append(f"{r.status:<4}  {r.check:<{width}}  {r.message}")
        if r.status != OK:
            lines.extend(f"{'':4}  {'':<{width}}  -> {a}" for a in r.advice)
    counts = {s: sum(1 for r in results if r.status == s) for s in (OK, WARN, FAIL, SKIP)}
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no checks")
    return "\n".join(lines) + "\n"


def render_json(results: list[Result]) -> str:
    doc = {"status": worst(results), "exit_code": exit_code(results),
           "counts": {s: sum(1 for r in results if r.status == s) for s in (OK, WARN, FAIL, SKIP)},
           "checks": [r.as_dict() for r in results]}
    return json.dumps(doc, indent=2, default=str) + "\n"
