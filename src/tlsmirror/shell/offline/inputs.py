"""Secrets given as files to a capture-file run: NSS key logs and static-RSA server keys."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ...keys.errors import KeyLogError
from ...keys.events import RsaKey, Secret
from ...keys.keylog import KeyLogProblem, parse_keylog
from ...keys.rsa import load_rsa_key
from ..errors import InputError

MAX_KEYLOG_WARNINGS = 20  # skipped lines reported one by one per key log; the rest are counted


def report_problems(where: str, problems: list[KeyLogProblem], warn: Callable[[str], None],
                    line: str = ":") -> None:
    """Say which key log lines of ``where`` were skipped and why (never the line itself: it may hold a
    secret), the first :data:`MAX_KEYLOG_WARNINGS` one by one and the rest as a count."""
    for p in problems[:MAX_KEYLOG_WARNINGS]:
        warn(f"{where}{line}{p.line_no}: skipped key log line: {p.reason}")
    if len(problems) > MAX_KEYLOG_WARNINGS:
        warn(f"{where}: {len(problems) - MAX_KEYLOG_WARNINGS} more key log lines skipped")


def load_keylog_files(paths: Iterable[str], warn: Callable[[str], None]) -> list[Secret]:
    """Every secret of the key log files at ``paths``; bad lines are reported through ``warn`` and
    skipped. A file that cannot be read is an :class:`InputError`."""
    secrets: list[Secret] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"{path}: cannot read key log: {exc.strerror or exc}") from None
        found, problems = parse_keylog(data)
        report_problems(path, problems, warn)
        if problems and not found:
            warn(f"{path}: no usable key log line ({len(problems)} skipped): is this an NSS key log?")
        secrets.extend(found)
    return secrets


def load_rsa_files(paths: Iterable[str], password: bytes | None = None) -> list[RsaKey]:
    """The RSA private keys in the PEM/DER files at ``paths``."""
    keys = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"{path}: cannot read RSA key: {exc.strerror or exc}") from None
        try:
            keys.append(load_rsa_key(data, password))
        except KeyLogError as exc:
            raise InputError(f"{path}: {exc}") from None
    return keys
