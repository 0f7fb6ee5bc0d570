"""BIG-IP object names: checked, and made full paths (/Partition/name)."""

from __future__ import annotations

import re

from .errors import F5ConfigError

__all__ = ["F5ConfigError", "check_partition", "full_path"]

# Letters, digits and . _ - in each path component; a name starts with a letter or underscore. This is
# stricter than BIG-IP, on purpose: no character is special to Tcl, tmsh or bash.
_COMPONENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")


def check_partition(partition: str) -> str:
    part = partition.strip("/")
    if not _COMPONENT.fullmatch(part):
        raise F5ConfigError(f"not a BIG-IP partition name: {partition!r}")
    return part


def full_path(name: str, partition: str = "Common", what: str = "object") -> str:
    """``name`` or ``/Partition/name`` (or ``/Partition/folder/name``) -> a checked full path."""
    part = check_partition(partition)
    if name.startswith("/"):
        parts = name[1:].split("/")
        if len(parts) < 2 or not all(_COMPONENT.fullmatch(p) for p in parts):
            raise F5ConfigError(f"not a BIG-IP {what} path (letters, digits, . _ - only): {name!r}")
        return name
    if not _COMPONENT.fullmatch(name):
        raise F5ConfigError(f"not a BIG-IP {what} name (letters, digits, . _ - only): {name!r}")
    return f"/{part}/{name}"
