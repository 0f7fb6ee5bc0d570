"""The shell's parsers of values given by people: sizes, ports and durations, for settings and flags alike.

One rule each, so ``--body-limit 64MiB`` and ``output.max_bytes: 64MiB`` mean the same, and a port is
checked the same way everywhere: a port to *listen* on may be 0 (the system picks one, as tests do), a
port to *match or connect to* is 1-65535. Each raises :class:`~tlsmirror.shell.errors.BadValue`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import BadValue

_SIZE = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?\s*$")
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
          "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}


def parse_size(value: Any) -> int:
    """Bytes from an int or a text like ``64MiB``, ``1G``, ``512k``, ``10MB`` (k/M/G/T and KiB/MiB/GiB/TiB:
    powers of 1024; kB/MB/GB/TB: powers of 1000)."""
    if isinstance(value, bool):
        raise BadValue("is not a size", "give bytes as a number, or with a unit like 64MiB")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise BadValue("is not a size", "give bytes as a number, or with a unit like 64MiB, 512k, 1G")
        n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    if n < 0:
        raise BadValue("is negative", "give a size of 0 or more bytes")
    return n


def parse_port(value: Any, *, listen: bool = False) -> int:
    """A TCP port: 1-65535, or 0-65535 when ``listen`` (0: any free port)."""
    low = 0 if listen else 1
    fix = f"give a port number {low}-65535" + (" (0: any free port)" if listen else "")
    try:
        if isinstance(value, bool):
            raise ValueError
        n = int(str(value).strip()) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        raise BadValue(f"{value!r} is not a port number", fix) from None
    if not low <= n <= 65535:
        raise BadValue(f"port {n} is out of range", fix)
    return n


def parse_seconds(value: Any, *, maximum: float | None = None) -> float:
    """A finite, non-negative number of seconds, at most ``maximum`` when given."""
    fix = "give a number of seconds" + (f" from 0 to {maximum:g}" if maximum is not None else ", 0 or more")
    try:
        if isinstance(value, bool):
            raise ValueError
        x = float(value)
    except (TypeError, ValueError):
        raise BadValue(f"{value!r} is not a number of seconds", fix) from None
    if not math.isfinite(x) or x < 0 or (maximum is not None and x > maximum):
        raise BadValue(f"{value!r} is out of range", fix)
    return x
