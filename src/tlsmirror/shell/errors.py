"""The shell's one exception family: everything the command line prints as one line (exit code 1).

:class:`ShellError` derives from :class:`tlsmirror.errors.TlsmirrorError`. The CLI catches
``ShellError`` and prints its message, never a traceback; any other exception reaching it is a bug.
"""

from __future__ import annotations

from ..errors import TlsmirrorError


class ShellError(TlsmirrorError):
    """A user-facing error: the message is one line that names the input and the fix, free of secrets."""


class InputError(ShellError):
    """An input file or setting is missing, unreadable or invalid. The message names it and the fix."""


class CaptureFileError(InputError):
    """A capture file cannot be opened or is not a pcap/pcapng file (its name is in the message)."""


class SendError(ShellError):
    """A connection to a key listener failed; the message is one line, free of secrets."""


class SpoolError(ShellError, OSError):
    """The spool directory cannot be used (unwritable, or in use by another process)."""


class BadValue(InputError, ValueError):
    """A value (of a setting or an argument) that does not parse: ``problem`` says what is wrong with it,
    ``fix`` what to give instead. The caller adds where the value came from."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}: {fix}")
        self.problem = problem
        self.fix = fix


class FabricError(ShellError):
    """The key fabric (Redis shared by several sensors) cannot be used: unreachable, refused, too slow."""


class FabricEntryError(FabricError, ValueError):
    """One entry or message of the fabric does not parse; it is skipped and counted, never fatal."""
