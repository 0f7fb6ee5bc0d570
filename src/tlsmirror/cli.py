"""Command line: `tlsmirror decrypt ...` and friends."""

from __future__ import annotations

import argparse
import sys

from . import __version__

EXIT_OK = 0
EXIT_INPUT = 1  # a file is missing, unreadable or not what it should be
EXIT_USAGE = 2  # bad command line (argparse)


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < n < 65536:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tlsmirror", description="Turn mirrored TLS traffic into API calls.")
    p.add_argument("--version", action="version", version=f"tlsmirror {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("decrypt", help="decrypt the TLS connections of a capture file",
                       description="Decrypt every TLS connection of a pcap/pcapng(.gz) file and write one "
                                   "JSON line per connection.")
    d.add_argument("capture", help="pcap or pcapng file, optionally gzip-compressed")
    d.add_argument("--keylog", action="append", default=[], metavar="FILE",
                   help="NSS key log file (repeatable)")
    d.add_argument("--rsa-key", action="append", default=[], metavar="PEM",
                   help="server RSA private key for static-RSA key exchange (repeatable)")
    d.add_argument("--rsa-password-env", metavar="VAR",
                   help="environment variable holding the RSA key password")
    d.add_argument("--port", action="append", default=[], type=_port, metavar="N",
                   help="only look at TCP flows with this port (repeatable; default: all ports)")
    d.add_argument("-o", "--output", default="-", metavar="OUT", help="JSON lines output (default stdout)")
    d.add_argument("--dump-dir", metavar="DIR", help="also write each connection's decrypted streams here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .shell.decrypt import InputError
    from .shell.pcapfile import CaptureFileError

    try:
        if args.command == "decrypt":
            import os

            from .shell.decrypt import decrypt_main
            password = None
            if args.rsa_password_env:
                value = os.environ.get(args.rsa_password_env)
                if value is None:
                    raise InputError(f"environment variable {args.rsa_password_env} is not set")
                password = value.encode()
            return decrypt_main(args.capture, args.keylog, args.rsa_key, args.port, args.output,
                                args.dump_dir, password)
    except (InputError, CaptureFileError) as exc:
        print(f"tlsmirror: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
