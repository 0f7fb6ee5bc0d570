"""The BIG-IP objects for tlsmirror as a bash script of tmsh commands (run in the BIG-IP's bash shell).

Objects, in order: a node for the sensor; the key listener pool (TCP 8001, ``tcp`` monitor); for the
sideband transport a server-ssl profile and an internal virtual server enabled on no VLAN (only
iRules reach it) that wraps the iRule's sideband connections in TLS; the iRule (loaded with
``tmsh load sys config merge``); the clone pool that copies the client-side packets to the
sensor's capture interface; finally the iRule and the clone pool attached to the API's virtual
server, keeping the iRules already there.

Every object is created once. The key pool may double as the clone pool (one pool for both, as some
reference layouts have it: ``clone_pool_name == pool_name``): a clone pool copies packets to its
members' MAC addresses whatever the port, so the key listener member serves both. Two different
objects given one name are refused.

Several sensors (active-active): one node per sensor (``<node_name>_<n>``, or the names given one per
sensor), every sensor's key listener in the key pool and every sensor's capture address in the clone
pool. The BIG-IP load balances both per connection: each client connection is cloned to one sensor,
and each session's keys reach one sensor (sideband: the internal virtual server's pool; hsl: the HSL
pool), not necessarily the same one, so the sensors must share their secrets through the key fabric
(``keys.fabric``). The script says so in a comment; it cannot check the sensors' configuration.
With ``active_passive`` the members get priority groups (the first sensor highest, ``min-active-members
1``): the BIG-IP sends everything to the first sensor while its members are up, then to the next.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from .. import __version__
from .errors import F5ConfigError
from .irule import TRANSPORTS, IruleOptions, render_irule
from .names import check_partition, full_path

__all__ = ["TmshOptions", "render_tmsh"]


@dataclass(frozen=True, slots=True)
class TmshOptions:
    """Names and addresses for the generated commands. Names without a partition go in ``partition``."""

    sensor: str | Sequence[str]  # the key listener address of the sensor, or of each sensor (active-active)
    virtual: str  # the API's virtual server (client SSL profile) that gets the iRule and clone pool
    port: int = 8001
    partition: str = "Common"
    transport: str = "sideband"
    # the capture interface of the sensor (or one per sensor, in order) for the clone pool (default: the
    # sensor's address)
    capture_ip: str | Sequence[str] | None = None
    # one name (with several sensors: <name>_1, <name>_2, ...) or one name per sensor, used as given
    node_name: str | Sequence[str] = "tlsmirror_sensor"
    capture_node_name: str | Sequence[str] = "tlsmirror_sensor_capture"
    pool_name: str = "tlsmirror_keys_pool"
    sideband_name: str = "tlsmirror_keys_vs"
    sideband_destination: str = "192.0.2.1"  # any unused address: the virtual server is on no VLAN
    serverssl_name: str = "tlsmirror_keys_serverssl"
    rule_name: str = "tlsmirror_keys"
    clone_pool_name: str = "tlsmirror_clone_pool"
    clone: bool = True
    # several sensors: the first is active, the others stand by (priority groups in both pools); without
    # it, all are active (active-active, connections and keys spread over them)
    active_passive: bool = False
    sensor_cert_file: str | None = None  # path on the BIG-IP of the listener's certificate or its CA
    client_cert_file: str | None = None  # paths on the BIG-IP of a client certificate/key (mTLS)
    client_key_file: str | None = None
    timeout_ms: int = 1000
    merge_file: str = "/var/tmp/tlsmirror_keys_rule.conf"  # where the script writes the iRule for tmsh
    tls12_only: bool = False  # the iRule without SSL::tls13_secret (BIG-IP versions before 14.0)


def _ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise F5ConfigError(f"{what} must be an IP address, got {text!r}") from None


def _member(node: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"{node}.{port}" if ip.version == 6 else f"{node}:{port}"


def _local_file(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    if not path.startswith("/") or any(c.isspace() or c in "'\"$`\\;&|<>(){}*?[]" for c in path):
        raise F5ConfigError(f"{what} must be an absolute path on the BIG-IP without spaces or shell "
                            f"characters, got {path!r}")
    return path


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class _Sensor:
    address: Address  # key listener
    node: str
    capture: Address  # capture interface (the clone pool member)
    capture_node: str  # == node when capture == address


def _times(k: int) -> str:
    return "once" if k == 1 else f"{k} times"


def _several(value: str | Sequence[str], n: int, what: str) -> list[str]:
    """One value per sensor: a single value (for one sensor), or exactly one per sensor."""
    values = [value] if isinstance(value, str) else list(value)
    if len(values) != n:
        raise F5ConfigError(f"{what} given {_times(len(values))} for {n} sensors: give it once per --sensor, "
                            f"in the same order")
    return values


def _names(value: str | Sequence[str], n: int, partition: str, what: str) -> list[str]:
    """Node names: one name as given for one sensor, ``<name>_<n>`` for several, or one per sensor."""
    names = [value] if isinstance(value, str) else list(value)
    if len(names) == 1 and n > 1:
        names = [f"{names[0]}_{i}" for i in range(1, n + 1)]
    if len(names) != n:
        raise F5ConfigError(f"{what} given {_times(len(names))} for {n} sensors: give it once (numbered "
                            f"_1, _2, ...) or once per --sensor")
    return [full_path(x, partition, "node") for x in names]


def _sensors(o: TmshOptions) -> list[_Sensor]:
    p = o.partition
    addresses = [_ip(a, "the sensor address") for a in ([o.sensor] if isinstance(o.sensor, str) else o.sensor)]
    n = len(addresses)
    if n == 0:
        raise F5ConfigError("no sensor address (--sensor IP, once per sensor)")
    if o.capture_ip is None or (not isinstance(o.capture_ip, str) and len(o.capture_ip) == 0):
        captures = list(addresses)
    else:
        captures = [_ip(c, "the capture address") for c in _several(o.capture_ip, n, "--capture-ip")]
    nodes = _names(o.node_name, n, p, "--node-name")
    capture_nodes = _names(o.capture_node_name, n, p, "--capture-node-name")
    sensors: list[_Sensor] = []
    for address, node, capture, capture_node in zip(addresses, nodes, captures, capture_nodes, strict=True):
        if capture == address:
            capture_node = node
        elif capture_node == node:
            raise F5ConfigError(f"the capture address {capture} needs its own node: the node name {node} is "
                                f"the sensor's ({address})")
        sensors.append(_Sensor(address, node, capture, capture_node))
    # BIG-IP keeps one node per address and one address per node name
    by_address: dict[Address, str] = {}
    by_name: dict[str, Address] = {}
    for s in sensors:
        for address, node in ((s.address, s.node), (s.capture, s.capture_node)):
            if by_address.setdefault(address, node) != node:
                raise F5ConfigError(f"the address {address} is given twice (nodes {by_address[address]} and "
                                    f"{node}): each sensor needs its own key listener and capture addresses")
            if by_name.setdefault(node, address) != address:
                raise F5ConfigError(f"two nodes named {node} ({by_name[node]} and {address}): give them "
                                    f"different names")
    return sensors


def render_tmsh(o: TmshOptions) -> str:
    """A bash script of tmsh commands creating every object, commented step by step."""
    if o.transport not in TRANSPORTS:
        raise F5ConfigError(f"unknown transport {o.transport!r} (expected one of {', '.join(TRANSPORTS)})")
    if not 0 < o.port < 65536:
        raise F5ConfigError(f"port out of range 1-65535: {o.port}")
    check_partition(o.partition)
    sensors = _sensors(o)
    several = len(sensors) > 1
    if o.active_passive and not several:
        raise F5ConfigError("active/passive needs at least two sensors (--sensor ACTIVE --sensor STANDBY)")
    standby = o.active_passive
    n = len(sensors)

    def members(port: int, capture: bool) -> str:
        out = []
        for i, x in enumerate(sensors):
            m = _member(x.capture_node, x.capture, port) if capture else _member(x.node, x.address, port)
            out.append(f"{m} {{ priority-group {n - i} }}" if standby else m)
        return " ".join(out)

    pool_opts = " min-active-members 1" if standby else ""
    sideband_ip = _ip(o.sideband_destination, "the sideband virtual server's destination")
    p = o.partition
    pool = full_path(o.pool_name, p, "pool")
    sideband = full_path(o.sideband_name, p, "virtual server")
    serverssl = full_path(o.serverssl_name, p, "profile")
    rule = full_path(o.rule_name, p, "iRule")
    clone_pool = full_path(o.clone_pool_name, p, "pool")
    virtual = full_path(o.virtual, p, "virtual server")
    shared_pool = o.clone and clone_pool == pool
    if shared_pool and any(s.capture != s.address for s in sensors):
        raise F5ConfigError(f"one pool for keys and cloning ({pool}) needs the capture address to be the "
                            f"sensor's: give --clone-pool-name another name, or drop --capture-ip")
    if o.transport == "sideband" and sideband == virtual:
        raise F5ConfigError(f"the sideband virtual server and the API's virtual server are both {virtual}")
    sensor_cert = _local_file(o.sensor_cert_file, "--sensor-cert-file")
    client_cert = _local_file(o.client_cert_file, "--client-cert-file")
    client_key = _local_file(o.client_key_file, "--client-key-file")
    merge = _local_file(o.merge_file, "the merge file")
    if bool(client_cert) != bool(client_key):
        raise F5ConfigError("a client certificate needs both the certificate and the key file")
    if o.transport == "hsl" and (sensor_cert or client_cert):
        raise F5ConfigError("the hsl transport is plain TCP: it takes no certificates")
    irule = render_irule(IruleOptions(transport=o.transport, virtual=sideband, pool=pool, partition=p,
                                      timeout_ms=o.timeout_ms, tls12_only=o.tls12_only))
    sep = "." if sideband_ip.version == 6 else ":"
    L: list[str] = []
    add = L.append
    add("#!/bin/bash")
    add(f"# tlsmirror: BIG-IP objects for key export ({o.transport}) and packet cloning, generated by")
    add(f"# `tlsmirror f5 tmsh` (tlsmirror {__version__}). Run it in the BIG-IP's bash shell as an")
    add("# administrator, or type the tmsh lines one by one into tmsh (without the leading 'tmsh').")
    add("# Read docs/f5.md first. Nothing here changes traffic until the last step attaches the iRule")
    add(f"# and the clone pool to {virtual}.")
    if standby:
        add("#")
        add(f"# Active/passive: {n} sensors in priority groups. The BIG-IP sends every connection and every")
        add(f"# session's keys to the first sensor ({sensors[0].address}) while its members are up, and to the")
        add("# next one when they are down. The key fabric is optional: with it (the same keys.fabric on")
        add("# every sensor, docs/fabric.md) the standby already holds every secret when it takes over.")
    elif several:
        add("#")
        add(f"# Active-active: {len(sensors)} sensors. The BIG-IP load balances per connection: each client")
        add("# connection is cloned to one sensor, and each session's keys go to one sensor of the key pool,")
        add("# often another one. THE SENSORS MUST SHARE THEIR SECRETS THROUGH THE KEY FABRIC: set the same")
        add("# keys.fabric in every sensor's configuration (docs/fabric.md), or most calls stay encrypted.")
        add("# This script cannot check that.")
    add("set -euo pipefail")
    add("")
    if several:
        add(f"# 1. The {len(sensors)} sensors, as nodes (the addresses of their key listeners).")
    else:
        add("# 1. The sensor, as a node (the address of its key listener).")
    for x in sensors:
        add(f"tmsh create ltm node {x.node} address {x.address}")
    add("")
    if standby:
        add(f"# 2. The pool of the sensors' key listeners, TCP {o.port}, one member per sensor, in priority groups")
        add("#    (the first sensor highest; min-active-members 1: only the highest group with a member up")
        add("#    is used). The tcp monitor only opens and closes a connection; the listener counts it as a")
        add("#    probe, not an error.")
    elif several:
        add(f"# 2. The pool of the sensors' key listeners, TCP {o.port}, one member per sensor (round robin: any")
        add("#    member may receive any session's keys; the fabric hands them to the others). The tcp monitor")
        add("#    only opens and closes a connection; the listener counts it as a probe, not an error.")
    else:
        add(f"# 2. The pool of the sensor's key listener, TCP {o.port}. The tcp monitor only opens and closes a")
        add("#    connection; the listener counts it as a probe, not an error.")
    add(f"tmsh create ltm pool {pool}{pool_opts} members add {{ {members(o.port, False)} }} monitor tcp")
    add("")
    if o.transport == "sideband":
        add("# 3. The server-ssl profile: the TLS client side of the sideband connections to the sensor.")
        extra = ""
        if sensor_cert:
            add("#    Verify the sensor: its listener certificate (the self-signed listener.crt that")
            add("#    install.sh made in /var/lib/tlsmirror, or the CA that issued its certificate), copied")
            add("#    to the BIG-IP first.")
            if several:
                add("#    With several sensors this file must hold every sensor's listener certificate (one")
                add("#    PEM bundle), or the CA that issued all of them.")
            add(f"tmsh install sys crypto cert /{p}/tlsmirror_sensor_ca.crt from-local-file {sensor_cert}")
            extra += f" ca-file /{p}/tlsmirror_sensor_ca.crt peer-cert-mode require"
        else:
            add("#    WARNING: the sensor's certificate is not verified (no --sensor-cert-file): the keys")
            add("#    are encrypted in transit, but the BIG-IP would send them to anyone answering on that")
            add("#    address.")
            extra += " peer-cert-mode ignore"
        if client_cert and client_key:
            add("#    The BIG-IP's client certificate, for a listener that requires one (client_ca).")
            add(f"tmsh install sys crypto key /{p}/tlsmirror_client.key from-local-file {client_key}")
            add(f"tmsh install sys crypto cert /{p}/tlsmirror_client.crt from-local-file {client_cert}")
            extra += f" cert /{p}/tlsmirror_client.crt key /{p}/tlsmirror_client.key"
        add(f"tmsh create ltm profile server-ssl {serverssl} defaults-from /Common/serverssl{extra}")
        add("")
        add("# 4. The sideband virtual server: the iRule's `connect` goes to it by name; it is enabled on no")
        add("#    VLAN (vlans-enabled with an empty list), so nothing outside the BIG-IP reaches it. Its")
        add("#    server-ssl profile wraps each connection in TLS; SNAT automap makes the sensor answer the")
        add("#    BIG-IP's self IP.")
        if standby:
            add("#    Its pool holds every sensor; the priority groups send the connections to the active one.")
        elif several:
            add("#    Its pool holds every sensor: each connection (one per TLS session) goes to one of them.")
        add(f"tmsh create ltm virtual {sideband} destination {sideband_ip}{sep}{o.port} ip-protocol tcp"
            f" profiles add {{ /Common/tcp {{ }} {serverssl} {{ context serverside }} }} pool {pool}"
            " source-address-translation { type automap } vlans-enabled")
        add("")
        step = 5
    else:
        add("# 3. (hsl transport: no server-ssl profile and no sideband virtual server. The iRule streams")
        add("#    PLAIN TCP to the pool above; run the sensor's listener with plain TCP and an allow list.)")
        if several and not standby:
            add("#    HSL spreads its few long-lived connections over the pool's members: each sensor gets")
            add("#    some sessions' keys, whatever connections it captures.")
        add("")
        step = 4
    add(f"# {step}. The iRule (printed by `tlsmirror f5 irule`), loaded as a config merge file.")
    add(f"cat > {merge} <<'TLSMIRROR_IRULE_END'\nltm rule {rule} {{")
    add(irule.rstrip("\n"))
    add("}\nTLSMIRROR_IRULE_END")
    add(f"tmsh load sys config merge file {merge} verify")
    add(f"tmsh load sys config merge file {merge}")
    add(f"rm -f {merge}")
    add("")
    step += 1
    if shared_pool and standby:
        add(f"# {step}. The clone pool is the key listeners' pool {pool} (created above): the BIG-IP copies")
        add("#    every client-side packet to the MAC address of the active sensor's member, by the same")
        add("#    priority groups (the port does not matter for cloning).")
        add("")
        step += 1
    elif shared_pool and several:
        add(f"# {step}. The clone pool is the key listeners' pool {pool} (created above): the BIG-IP copies")
        add("#    every client-side packet of a connection to the MAC address of one member, chosen per")
        add("#    connection (the port does not matter for cloning). Each sensor captures its share there.")
        add("")
        step += 1
    elif shared_pool:
        add(f"# {step}. The clone pool is the key listener's pool {pool} (created above): the BIG-IP copies")
        add("#    every client-side packet of the virtual server to its member's MAC address (the port does")
        add("#    not matter for cloning). The sensor captures them there (tlsmirror run, capture interface).")
        add("")
        step += 1
    elif o.clone:
        if standby:
            add(f"# {step}. The clone pool, one member per sensor (its capture interface, on a VLAN directly")
            add("#    attached to the BIG-IP; port 0 = any), in the same priority groups: the BIG-IP copies every")
            add("#    client-side packet to the active sensor, to the next one when it is down.")
        elif several:
            add(f"# {step}. The clone pool, one member per sensor (its capture interface, on a VLAN directly")
            add("#    attached to the BIG-IP; port 0 = any): the BIG-IP copies every client-side packet of a")
            add("#    connection to one member, chosen per connection. Each sensor captures its share.")
        else:
            add(f"# {step}. The clone pool: the BIG-IP copies every client-side packet of the virtual server to")
            add("#    this member (the sensor's capture interface, on a VLAN directly attached to the BIG-IP;")
            add("#    port 0 = any). The sensor captures them there (tlsmirror run, capture interface).")
        for x in sensors:
            if x.capture_node != x.node:
                add(f"tmsh create ltm node {x.capture_node} address {x.capture}")
        add(f"tmsh create ltm pool {clone_pool}{pool_opts} members add {{ {members(0, True)} }}"
            " monitor gateway_icmp")
        add("")
        step += 1
    add(f"# {step}. Attach to the API's virtual server {virtual} (it must have a client-ssl profile).")
    add("#    `rules` replaces the whole list, so the iRules already attached are read first and kept,")
    add("#    in order, with the tlsmirror iRule last.")
    short = rule.rsplit("/", 1)[1]
    add(f"tlsmirror_rules=$(tmsh list ltm virtual {virtual} rules | awk '/rules \\{{/{{f=1; next}} "
        f"/\\}}/{{f=0}} f && $1 != \"{rule}\" && $1 != \"{short}\" {{print $1}}' | tr '\\n' ' ')")
    add(f"tmsh modify ltm virtual {virtual} rules {{ ${{tlsmirror_rules}} {rule} }}")
    if o.clone:
        add(f"tmsh modify ltm virtual {virtual} clone-pools add {{ {clone_pool} {{ context clientside }} }}")
    add("")
    add("tmsh save sys config")
    check = "rules clone-pools" if o.clone else "rules"
    add(f"echo 'tlsmirror objects created; check with: tmsh list ltm virtual {virtual} {check}'")
    _check_created_once(L)
    return "\n".join(L) + "\n"


def _check_created_once(lines: list[str]) -> None:
    """A last guard: no ``tmsh create``/``install`` of the same object twice (under ``set -e`` the
    second would stop the script half way, before the iRule and the clone pool are attached)."""
    seen: set[tuple[str, ...]] = set()
    for line in lines:
        words = line.split()
        if words[:2] == ["tmsh", "create"] and len(words) > 4:
            obj = tuple(words[2:6]) if words[3] == "profile" else tuple(words[2:5])
        elif words[:4] == ["tmsh", "install", "sys", "crypto"] and len(words) > 5:
            obj = tuple(words[2:6])
        else:
            continue
        if obj in seen:
            raise F5ConfigError(f"two objects named {obj[-1]} ({' '.join(obj[:-1])}): give them different names")
        seen.add(obj)
