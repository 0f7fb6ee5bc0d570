"""`tlsmirror inventory`: the command line of :mod:`tlsmirror.shell.offline.inventory`."""

from __future__ import annotations

import argparse
from typing import Any

from .args import add_secret_and_port_args, byte_size, rsa_password


def register(sub: Any) -> None:
    p = sub.add_parser("inventory", help="an API inventory (OpenAPI, JSON, HTML report) from captures or calls",
                       description="Template the routes of every API call (from capture files, decrypted as "
                                   "`replay` does, or from JSON-lines call records) and write openapi.json, "
                                   "inventory.json and a self-contained inventory.html into --out-dir.")
    p.add_argument("capture", nargs="*", help="pcap or pcapng file, optionally gzip-compressed")
    p.add_argument("--calls", action="append", default=[], metavar="FILE.jsonl",
                   help="JSON-lines call records (tlsmirror replay or run output; repeatable)")
    add_secret_and_port_args(p)
    p.add_argument("--out-dir", default=".", metavar="DIR", help="where the three files go (default .)")
    p.add_argument("--previous", metavar="FILE",
                   help="an earlier inventory.json or an OpenAPI file to diff against (new, removed, changed)")
    p.add_argument("--seed-openapi", metavar="FILE", help="an OpenAPI file whose paths seed the route templates")
    p.add_argument("--state", metavar="FILE", help="route table read at start (if present) and written at the end")
    p.add_argument("--max-routes", type=int, default=200, metavar="N", help="routes per service at most (200)")
    p.add_argument("--max-siblings", type=int, default=20, metavar="N",
                   help="distinct values at one path level before they merge into a {param} (20)")
    p.add_argument("--body-limit", type=byte_size, default=128 * 1024, metavar="BYTES",
                   help="bytes of each body read for schemas (default 128k)")
    p.add_argument("--title", default="API inventory", help="the report's and the OpenAPI document's title")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..offline.inventory import inventory_main

    if args.rsa_password_env:
        rsa_password(args.rsa_password_env)  # an unset variable is a clear error before any work
    return inventory_main(args.capture, args.calls, args.keylog, args.rsa_key, args.port, args.out_dir,
                          args.previous, args.seed_openapi, args.state, args.max_routes, args.max_siblings,
                          args.body_limit, args.title)
