"""`tlsmirror doctor`: check a running install and say what to do about what is wrong."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .args import seconds_up_to


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor", help="check a running sensor: service, capture, keys, match rate, exporter, drops",
        description="Check a running `tlsmirror run` and print one line per check (OK, WARN, FAIL; SKIP when "
                    "a check does not apply) with what to do. Reads the same configuration as `run`. Exit "
                    "code 0 when no check failed, 1 otherwise. Run as root to sample the capture interface "
                    "and read a protected configuration or token file.")
    p.add_argument("--config", metavar="FILE",
                   help="YAML configuration (default: $TLSMIRROR_CONFIG, else /etc/tlsmirror/config.yaml if it "
                        "exists)")
    p.add_argument("--url", metavar="URL",
                   help="metrics server of the sensor (default: from metrics.host/metrics.port, "
                        "http://127.0.0.1:9464)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--wait", type=seconds_up_to(60), default=2.0, metavar="S",
                   help="seconds between the two readings of the counters, and of the packet sample "
                        "(default 2)")
    p.add_argument("-i", "--interface", action="append", dest="interfaces", metavar="IFACE",
                   help="check this interface instead of capture.interfaces (repeatable)")
    p.add_argument("--unit", default="tlsmirror", help="systemd unit name (default tlsmirror)")
    p.add_argument("--timeout", type=seconds_up_to(60), default=3.0, metavar="S",
                   help="timeout of each network probe (default 3)")
    p.add_argument("--no-sample", action="store_true",
                   help="do not sample packets on the capture interfaces")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..doctor.result import DoctorOptions, exit_code, render_json, render_text
    from ..doctor.run import run_doctor

    opts = DoctorOptions(config=args.config, url=args.url, wait=args.wait, interfaces=args.interfaces,
                         unit=args.unit, timeout=max(0.2, args.timeout), sample=not args.no_sample)
    results = run_doctor(opts)
    sys.stdout.write(render_json(results) if args.json else render_text(results))
    sys.stdout.flush()
    return exit_code(results)
