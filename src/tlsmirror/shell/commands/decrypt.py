"""`tlsmirror decrypt`: the command line of :mod:`tlsmirror.shell.offline.decrypt`."""

from __future__ import annotations

import argparse
from typing import Any

from .args import add_output_args, add_secret_and_port_args, no_collections, rsa_password


def register(sub: Any) -> None:
    d = sub.add_parser("decrypt", help="decrypt the TLS connections of a capture file",
                       description="Decrypt every TLS connection of a pcap/pcapng(.gz) file and write one "
                                   "JSON line per connection.")
    d.add_argument("capture", help="pcap or pcapng file, optionally gzip-compressed")
    add_secret_and_port_args(d)
    add_output_args(d, "JSON lines")
    d.add_argument("--dump-dir", metavar="DIR", help="also write each connection's decrypted streams here")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with no_collections():
        from ..offline.decrypt import decrypt_main

    return decrypt_main(args.capture, args.keylog, args.rsa_key, args.port, args.output, args.dump_dir,
                        rsa_password(args.rsa_password_env), workers=args.workers, append=args.append,
                        facts_files=args.facts, facts_out=args.facts_out)
