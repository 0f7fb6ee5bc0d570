"""`tlsmirror f5 irule|tmsh`: print the F5 BIG-IP key export iRule and the tmsh commands around it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import InputError
from .args import port


def register(sub: Any) -> None:
    f = sub.add_parser("f5", help="print the F5 BIG-IP iRule and tmsh commands for tlsmirror",
                       description="Print F5 BIG-IP configuration for tlsmirror (see docs/f5.md).")
    fsub = f.add_subparsers(dest="f5_command", metavar="SUBCOMMAND")
    fsub.required = True

    r = fsub.add_parser("irule", help="print the key export iRule",
                        description="Print the iRule that sends each client-side TLS session's secrets "
                                    "to the sensor's key listener.")
    _transport_options(r)
    r.set_defaults(func=run_irule)

    t = fsub.add_parser("tmsh", help="print the tmsh commands for every object (bash script)",
                        description="Print a bash script of tmsh commands creating the sensor node, the key "
                                    "listener pool, the sideband virtual server with its server-ssl profile, "
                                    "the iRule and the clone pool, and attaching them to a virtual server.")
    t.add_argument("--sensor", required=True, action="append", metavar="IP",
                   help="address of the sensor's key listener; repeat it for several active sensors (one "
                        "clone pool and key pool member each; they must share keys.fabric)")
    t.add_argument("--port", type=port, default=8001, help="key listener port (default 8001)")
    t.add_argument("--virtual", required=True, metavar="NAME",
                   help="the API's virtual server (with a client-ssl profile) to attach the iRule and clone "
                        "pool to")
    t.add_argument("--capture-ip", action="append", metavar="IP",
                   help="sensor address for the clone pool, when packets arrive on another interface (with "
                        "several sensors: once per --sensor, in the same order)")
    t.add_argument("--node-name", action="append", metavar="NAME",
                   help="node of the sensor (default tlsmirror_sensor); with several sensors NAME_1, NAME_2, "
                        "..., or repeat it once per --sensor to use the names as given")
    t.add_argument("--capture-node-name", action="append", metavar="NAME",
                   help="node of the capture address, with --capture-ip (default tlsmirror_sensor_capture; "
                        "numbered or repeated like --node-name)")
    t.add_argument("--pool-name", default="tlsmirror_keys_pool", metavar="NAME",
                   help="pool of the key listener (default tlsmirror_keys_pool)")
    t.add_argument("--sideband-name", default="tlsmirror_keys_vs", metavar="NAME",
                   help="sideband virtual server (default tlsmirror_keys_vs)")
    t.add_argument("--sideband-destination", default="192.0.2.1", metavar="IP",
                   help="unused address for the sideband virtual server, which is enabled on no VLAN "
                        "(default 192.0.2.1)")
    t.add_argument("--rule-name", default="tlsmirror_keys", metavar="NAME",
                   help="iRule (default tlsmirror_keys)")
    t.add_argument("--clone-pool-name", default="tlsmirror_clone_pool", metavar="NAME",
                   help="clone pool (default tlsmirror_clone_pool); the --pool-name value makes one pool "
                        "serve for keys and cloning")
    t.add_argument("--active-passive", action="store_true",
                   help="with several --sensor: the first is active, the others stand by (priority groups in "
                        "both pools); default: all active, connections spread over them")
    t.add_argument("--no-clone", action="store_true",
                   help="no clone pool (packets reach the sensor by a port mirror, TAP or cloud mirror)")
    t.add_argument("--sensor-cert-file", metavar="PATH",
                   help="path ON THE BIG-IP of the listener's certificate (or its CA), to verify the sensor")
    t.add_argument("--client-cert-file", metavar="PATH",
                   help="path ON THE BIG-IP of a client certificate, for a listener requiring one")
    t.add_argument("--client-key-file", metavar="PATH", help="path ON THE BIG-IP of its private key")
    t.add_argument("--partition", default="Common", help="partition for the objects (default Common)")
    t.add_argument("--transport", choices=("sideband", "hsl"), default="sideband",
                   help="sideband: TLS via a sideband virtual server (default); hsl: plain TCP High Speed "
                        "Logging")
    t.add_argument("--timeout-ms", type=int, default=1000, metavar="MS",
                   help="sideband connect/send timeout (default 1000)")
    t.add_argument("--tls12-only", action="store_true", help=_TLS12_HELP)
    t.set_defaults(func=run_tmsh)


_TLS12_HELP = ("the iRule without SSL::tls13_secret, for BIG-IP versions before 14.0 (no TLS 1.3): limit the "
               "client-ssl profile to TLS 1.2")


def _transport_options(r: argparse.ArgumentParser) -> None:
    r.add_argument("--transport", choices=("sideband", "hsl"), default="sideband",
                   help="sideband: one TLS connection per handshake via the sideband virtual server "
                        "(default); hsl: High Speed Logging, plain TCP straight to --pool")
    r.add_argument("--virtual", default="tlsmirror_keys_vs", metavar="NAME",
                   help="sideband virtual server the iRule connects to (default tlsmirror_keys_vs)")
    r.add_argument("--pool", default="tlsmirror_keys_pool", metavar="NAME",
                   help="pool of the key listener, for --transport hsl (default tlsmirror_keys_pool)")
    r.add_argument("--partition", default="Common", help="partition of names without one (default Common)")
    r.add_argument("--timeout-ms", type=int, default=1000, metavar="MS",
                   help="sideband connect/send timeout (default 1000)")
    r.add_argument("--log-facility", default="local0", help="syslog facility for errors (default local0)")
    r.add_argument("--tls12-only", action="store_true", help=_TLS12_HELP)


def run_irule(args: argparse.Namespace) -> int:
    from ...f5 import F5ConfigError, IruleOptions, render_irule

    try:
        text = render_irule(IruleOptions(transport=args.transport, virtual=args.virtual, pool=args.pool,
                                         partition=args.partition, timeout_ms=args.timeout_ms,
                                         log_facility=args.log_facility, tls12_only=args.tls12_only))
    except F5ConfigError as exc:
        raise InputError(str(exc)) from None
    sys.stdout.write(text)
    return 0


def run_tmsh(args: argparse.Namespace) -> int:
    from ...f5 import F5ConfigError, TmshOptions, render_tmsh

    try:
        text = render_tmsh(TmshOptions(
            sensor=tuple(args.sensor), virtual=args.virtual, port=args.port, partition=args.partition,
            transport=args.transport, capture_ip=tuple(args.capture_ip or ()),
            node_name=tuple(args.node_name or ("tlsmirror_sensor",)),
            capture_node_name=tuple(args.capture_node_name or ("tlsmirror_sensor_capture",)), pool_name=args.pool_name,
            sideband_name=args.sideband_name, sideband_destination=args.sideband_destination,
            rule_name=args.rule_name, clone_pool_name=args.clone_pool_name, clone=not args.no_clone,
            active_passive=args.active_passive,
            sensor_cert_file=args.sensor_cert_file, client_cert_file=args.client_cert_file,
            client_key_file=args.client_key_file, timeout_ms=args.timeout_ms, tls12_only=args.tls12_only,
        ))
    except F5ConfigError as exc:
        raise InputError(str(exc)) from None
    sys.stdout.write(text)
    return 0
