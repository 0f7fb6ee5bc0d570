"""Command line entry point. Each command lives in its own shell module with a ``register`` function."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__

EXIT_OK = 0
EXIT_INPUT = 1  # a file is missing, unreadable or not what it should be; bad configuration
EXIT_USAGE = 2  # bad command line (argparse)

# Modules under tlsmirror.shell that each add one command (``register(subparsers)``); the
# command's parser sets ``func``: a callable taking the parsed arguments and returning an exit code.
COMMAND_MODULES = ("cmd_decrypt", "cmd_replay", "cmd_run", "cmd_keys", "cmd_f5", "cmd_config", "cmd_status",
                   "cmd_doctor")


class CliError(Exception):
    """A user-facing, one-line error (exit code 1)."""


def port_number(text: str) -> int:
    """argparse type for a TCP port."""
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
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"tlsmirror.shell.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tlsmirror.shell.{name}":
                raise
            continue  # a command not built yet
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .shell.errors import user_errors

    try:
        code: int = args.func(args)
        return code
    except user_errors() as exc:
        print(f"tlsmirror: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into a command that stopped reading (head, less): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
