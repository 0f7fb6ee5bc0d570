"""`tlsmirror status`: the running sensor's /metrics and /healthz as a readable table."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..errors import InputError


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="show a running sensor's statistics",
                       description="Read /metrics and /healthz of a running `tlsmirror run` and print them.")
    p.add_argument("--url", default="http://127.0.0.1:9464",
                   help="metrics server of the sensor (default http://127.0.0.1:9464)")
    p.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="SECONDS",
                   help="refresh every SECONDS (default 2) until Ctrl-C")
    p.set_defaults(func=run)


def fetch(url: str, timeout: float = 5.0) -> tuple[str, dict[str, Any] | None]:
    import urllib.error  # here, not at the top: every command's start-up imports this module
    import urllib.request

    base = url.rstrip("/")
    if base.endswith("/metrics"):
        base = base[: -len("/metrics")]
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"cannot read {base}/metrics: {reason}; is `tlsmirror run` running with "
                         "metrics enabled? (give its address with --url)") from None
    health: dict[str, Any] | None = None
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=timeout) as resp:
            health = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        health = None
    return text, health


def run(args: argparse.Namespace) -> int:
    from ..daemon.metrics import status_table

    if not args.watch:
        text, health = fetch(args.url)
        sys.stdout.write(status_table(text, health))
        return 0
    try:
        while True:
            try:
                text, health = fetch(args.url)
                body = status_table(text, health)
            except InputError as exc:
                body = f"{exc}\n"
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            sys.stdout.write(f"tlsmirror status  {args.url}  {time.strftime('%H:%M:%S')}\n\n{body}")
            sys.stdout.flush()
            time.sleep(max(0.2, args.watch))
    except KeyboardInterrupt:
        return 0
