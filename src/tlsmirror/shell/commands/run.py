"""`tlsmirror run`: the sensor daemon (live capture or a capture file through the same path)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .args import listen_port, seconds

# flag destination -> configuration key
FLAG_KEYS = {
    "interfaces": "capture.interfaces", "pcap": "capture.pcap", "pcap_speed": "capture.pcap_speed",
    "pcap_linger": "capture.pcap_linger", "workers": "capture.workers", "bpf": "capture.bpf",
    "key_port": "keys.port", "output": "output.jsonl", "metrics_port": "metrics.port",
    "keylog": "keys.keylog_files", "log_level": "log.level", "log_format": "log.format",
}


def add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="YAML configuration (default: $TLSMIRROR_CONFIG, else /etc/tlsmirror/config.yaml "
                        "if it exists)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="set_",
                   help="set any configuration key (repeatable), e.g. --set engine.idle_timeout=60")


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the sensor: capture, decrypt, export API calls",
                       description="Capture mirrored traffic (or replay a capture file), decrypt TLS with "
                                   "secrets from the key listener / key log files, and export API calls. "
                                   "Flags override environment variables (TLSMIRROR_<SECTION>_<KEY>), which "
                                   "override the configuration file.")
    p.add_argument("-i", "--interface", action="append", dest="interfaces", metavar="IFACE",
                   help="capture on this interface (repeatable)")
    p.add_argument("--pcap", metavar="FILE", help="replay this capture file through the daemon path")
    p.add_argument("--pcap-speed", type=float, metavar="X",
                   help="replay speed: 0 as fast as possible (default), 1 real time")
    p.add_argument("--pcap-linger", type=seconds, metavar="S",
                   help="keep running S seconds after the capture file ends (late secrets)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (default: one per core)")
    p.add_argument("--bpf", metavar="EXPR", help="capture filter (tcpdump syntax)")
    p.add_argument("--key-port", type=listen_port, metavar="PORT", help="key listener port (default 8001)")
    p.add_argument("--no-keys", action="store_true", help="do not run the key listener")
    p.add_argument("--keylog", action="append", metavar="FILE",
                   help="NSS key log file to preload (repeatable)")
    p.add_argument("-o", "--output", metavar="FILE", help="JSON lines output ('-': stdout)")
    p.add_argument("--metrics-port", type=listen_port, metavar="PORT", help="metrics/health port (default 9464)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics and /healthz")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", choices=("json", "text"))
    add_config_flags(p)
    p.set_defaults(func=run)


def flags_from_args(args: argparse.Namespace) -> dict[str, Any]:
    from ..config import parse_assignment

    flags: dict[str, Any] = {}
    for assignment in getattr(args, "set_", []) or []:
        key, value = parse_assignment(assignment)
        flags[key] = value
    for dest, key in FLAG_KEYS.items():
        given = getattr(args, dest, None)
        if given is not None:
            flags[key] = given
    if getattr(args, "no_keys", False):
        flags["keys.enabled"] = False
    if getattr(args, "no_metrics", False):
        flags["metrics.enabled"] = False
    return flags


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..daemon.supervisor import Daemon, load_preload
    from ..logs import get_logger, setup_logging

    cfg = load_config(args.config, env=os.environ, flags=flags_from_args(args))
    setup_logging(cfg.log.level, cfg.log.format, cfg.log.rate)
    log = get_logger("run")
    for w in cfg.warnings:
        log.warning("%s", w)
    preload = load_preload(cfg.keys.keylog_files)
    return Daemon(cfg, preload=preload).run()
