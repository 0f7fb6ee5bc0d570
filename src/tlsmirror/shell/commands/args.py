"""Argument types and option groups shared by the commands (argparse only; the rules are in
:mod:`tlsmirror.shell.values`)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import BadValue, InputError
from ..values import parse_port, parse_seconds, parse_size


@contextlib.contextmanager
def no_collections() -> Iterator[None]:
    """The cyclic collector paused (as it was after): importing a command's room builds modules, classes and
    functions, no garbage for a collection to find."""
    collect = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collect:
            gc.enable()


def _arg_type(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except BadValue as bad:
            raise argparse.ArgumentTypeError(f"{bad.problem}: {bad.fix}") from None

    convert.__name__ = name  # argparse names the type in its messages
    return convert


port = _arg_type(parse_port, "port")
"""A port to match or connect to: 1-65535."""

listen_port = _arg_type(lambda t: parse_port(t, listen=True), "listen_port")
"""A port to listen on: 0-65535 (0: any free port)."""

byte_size = _arg_type(parse_size, "byte_size")
"""A byte count: ``65536``, ``64k``, ``64MiB``, ``1G``."""

seconds = _arg_type(parse_seconds, "seconds")
"""A non-negative number of seconds."""


def seconds_up_to(maximum: float) -> Callable[[str], float]:
    """A number of seconds from 0 to ``maximum``."""
    return _arg_type(lambda t: parse_seconds(t, maximum=maximum), "seconds")


def add_secret_and_port_args(p: argparse.ArgumentParser) -> None:
    """The options that say where secrets come from and which flows to look at (decrypt, replay)."""
    p.add_argument("--keylog", action="append", default=[], metavar="FILE",
                   help="NSS key log file (repeatable)")
    p.add_argument("--rsa-key", action="append", default=[], metavar="PEM",
                   help="server RSA private key for static-RSA key exchange (repeatable)")
    p.add_argument("--rsa-password-env", metavar="VAR",
                   help="environment variable holding the RSA key password")
    p.add_argument("--port", action="append", default=[], type=port, metavar="N",
                   help="only look at TCP flows with this port (repeatable; default: all ports)")
    p.add_argument("--facts", action="append", default=[], metavar="FILE",
                   help="handshake facts (JSON lines, from --facts-out of a run that saw the handshakes): "
                        "connections whose handshake this capture lacks are decrypted from mid-stream "
                        "(repeatable)")
    p.add_argument("--facts-out", metavar="FILE",
                   help="write the handshake facts of the connections seen here (JSON lines, mode 0600)")


def worker_count(text: str) -> int:
    """A number of worker processes: 1-64."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"{n}: give 1 to 64 worker processes")
    return n


def add_output_args(p: argparse.ArgumentParser, what: str) -> None:
    """``-o FILE``, ``--append`` and ``--workers N``: one rule for every capture-file command (decrypt,
    replay): ``-o`` overwrites, ``--append`` appends; N processes share the flows."""
    p.add_argument("-o", "--output", default="-", metavar="FILE",
                   help=f"{what} output file (default stdout); an existing file is overwritten")
    p.add_argument("--append", action="store_true", help="append to the output file instead of overwriting it")
    p.add_argument("--workers", type=worker_count, default=0, metavar="N",
                   help="N processes, each reading the files and keeping its share of the flows "
                        "(output sorted by start time, the same for any N; default: one process, "
                        "records in the order they complete)")


def rsa_password(var: str | None) -> bytes | None:
    """The RSA key password from the environment variable ``var`` (never from the command line)."""
    if not var:
        return None
    value = os.environ.get(var)
    if value is None:
        raise InputError(f"environment variable {var} (--rsa-password-env) is not set")
    return value.encode()
