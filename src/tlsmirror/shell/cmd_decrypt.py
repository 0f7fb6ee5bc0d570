"""`tlsmirror decrypt`: the command line of shell/decrypt.py."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..cli import port_number
from .errors import InputError


def register(sub: Any) -> None:
    d = sub.add_parser("decrypt", help="decrypt the TLS connections of a capture file",
                       description="Decrypt every TLS connection of a pcap/pcapng(.gz) file and write one "
                                   "JSON line per connection.")
    d.add_argument("capture", help="pcap or pcapng file, optionally gzip-compressed")
    add_secret_and_port_args(d)
    d.add_argument("-o", "--output", default="-", metavar="OUT", help="JSON lines output (default stdout)")
    d.add_argument("--dump-dir", metavar="DIR", help="also write each connection's decrypted streams here")
    d.set_defaults(func=run)


def add_secret_and_port_args(p: argparse.ArgumentParser) -> None:
    """The options that say where secrets come from and which flows to look at (decrypt, replay)."""
    p.add_argument("--keylog", action="append", default=[], metavar="FILE",
                   help="NSS key log file (repeatable)")
    p.add_argument("--rsa-key", action="append", default=[], metavar="PEM",
                   help="server RSA private key for static-RSA key exchange (repeatable)")
    p.add_argument("--rsa-password-env", metavar="VAR",
                   help="environment variable holding the RSA key password")
    p.add_argument("--port", action="append", default=[], type=port_number, metavar="N",
                   help="only look at TCP flows with this port (repeatable; default: all ports)")


def rsa_password(var: str | None) -> bytes | None:
    if not var:
        return None
    value = os.environ.get(var)
    if value is None:
        raise InputError(f"environment variable {var} (--rsa-password-env) is not set")
    return value.encode()


def run(args: argparse.Namespace) -> int:
    from .decrypt import decrypt_main

    return decrypt_main(args.capture, args.keylog, args.rsa_key, args.port, args.output, args.dump_dir,
                        rsa_password(args.rsa_password_env))
