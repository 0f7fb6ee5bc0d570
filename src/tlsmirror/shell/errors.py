"""The shell's user-facing errors: printed as one line by the CLI (exit code 1), never a traceback."""

from __future__ import annotations


class InputError(Exception):
    """An input file or setting is missing, unreadable or invalid. The message names it and the fix."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every exception type the CLI reports as a one-line error."""
    from ..cli import CliError
    from .pcapfile import CaptureFileError

    return (InputError, CliError, CaptureFileError)
