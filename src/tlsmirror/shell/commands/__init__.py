"""The command line: ``tlsmirror COMMAND ...``. Argument parsing only; each command's work lives in its room.

One module per command (``decrypt``, ``replay``, ``run``, ``keys``, ``f5``, ``config``, ``status``,
``doctor``), each with ``register(subparsers)``; the parser it adds sets ``func``, a callable taking the
parsed arguments and returning the exit code. Shared argument types are in :mod:`.args`.

Exit codes: 0 done, 1 an input, setting or check failed (a :class:`~tlsmirror.shell.errors.ShellError`,
printed as one line), 2 a bad command line (argparse), 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys

from ... import __version__, build
from ..errors import ShellError

EXIT_OK = 0
EXIT_INPUT = 1

COMMANDS = ("decrypt", "replay", "inventory", "run", "keys", "f5", "config", "status", "doctor")


class _Version(argparse.Action):
    """``--version``: the version and how this install was built (compiled or pure Python)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, nargs=0,
                         help="show the version and the build (compiled or pure Python), and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(f"tlsmirror {__version__} ({build()})")  # on standard output, as argparse's own version action
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``tlsmirror`` argument parser: with ``command`` (a name of :data:`COMMANDS`) only that command
    is registered (start-up: each command module imports what its options need), else every command."""
    p = argparse.ArgumentParser(prog="tlsmirror", description="Turn mirrored TLS traffic into API calls.")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in (command,) if command in COMMANDS else COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command line; returns its exit code."""
    words = sys.argv[1:] if argv is None else argv
    program = argv is None  # the process's own command line (the console script, python -m tlsmirror)
    collect = gc.isenabled()
    if program:
        gc.disable()  # start-up builds modules, classes and functions: a collection would find no garbage
    try:
        # the command named first is the only one parsed: the others' modules are not imported
        args = build_parser(words[0] if words else None).parse_args(argv)
    finally:
        if collect:
            gc.enable()
    try:
        code: int = args.func(args)
        if program:
            # the command is done and its outputs closed: what is left is freed by the interpreter's exit,
            # whose collections then skip it (measured: 20 M instructions at the end of a decrypt run)
            gc.freeze()
        return code
    except ShellError as exc:
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
