"""Secrets given as files to a capture-file run: NSS key logs and static-RSA server keys."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ...keys.errors import KeyLogError
from ...keys.events import RsaKey, Secret
from ...keys.keylog import KeyLogProblem, parse_keylog
from ...keys.rsa import load_rsa_key
from ..errors import InputError
from .pcapfile import CapturedFrame, CaptureReader

MAX_KEYLOG_WARNINGS = 20  # skipped lines reported one by one per key log; the rest are counted
SECRETS_PEEK = 1000  # items at the start of a capture looked at for a Decryption Secrets Block
_CAPTURE_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
                   b"\x34\xcd\xb2\xa1", b"\xa1\xb2\xcd\x34", b"\x0a\x0d\x0d\x0a")


def report_problems(where: str, problems: list[KeyLogProblem], warn: Callable[[str], None],
                    line: str = ":") -> None:
    """Say which key log lines of ``where`` were skipped and why (never the line itself: it may hold a
    secret), the first :data:`MAX_KEYLOG_WARNINGS` one by one and the rest as a count."""
    for p in problems[:MAX_KEYLOG_WARNINGS]:
        warn(f"{where}{line}{p.line_no}: skipped key log line: {p.reason}")
    if len(problems) > MAX_KEYLOG_WARNINGS:
        warn(f"{where}: {len(problems) - MAX_KEYLOG_WARNINGS} more key log lines skipped")


def _read(path: str) -> bytes:
    """The file's bytes (not pathlib's ``read_bytes``: importing pathlib is 2 ms of every command's start)."""
    with open(path, "rb") as fh:
        return fh.read()


def load_keylog_files(paths: Iterable[str], warn: Callable[[str], None]) -> list[Secret]:
    """Every secret of the key log files at ``paths``; bad lines are reported through ``warn`` and
    skipped. A file that cannot be read is an :class:`InputError`."""
    secrets: list[Secret] = []
    for path in paths:
        try:
            data = _read(path)
        except OSError as exc:
            raise InputError(f"{path}: cannot read key log: {exc.strerror or exc}") from None
        found, problems = parse_keylog(data)
        report_problems(path, problems, warn)
        if problems and not found:
            warn(f"{path}: no usable key log line ({len(problems)} skipped): is this an NSS key log?")
        secrets.extend(found)
    return secrets


def captures_hold_secrets(captures: Iterable[str]) -> bool:
    """Whether one of ``captures`` holds a Decryption Secrets Block among its first items (where
    ``editcap --inject-secrets`` and the daemon's recorder put them)."""
    for path in captures:
        with CaptureReader(path) as reader:
            for n, item in enumerate(reader):
                if type(item) is not CapturedFrame:
                    return True
                if n >= SECRETS_PEEK:
                    break
    return False


def load_keylogs_for(paths: Sequence[str], captures: Sequence[str], warn: Callable[[str], None]) -> list[Secret]:
    """Every secret of the key logs at ``paths``, given for ``captures``: one rule for every command.

    A file that cannot work is an :class:`InputError` with one line: a capture file given as a key log,
    or a key log without a usable line (unless the captures hold secrets themselves: then a warning).
    Bad lines of a key log that has good ones are reported through ``warn`` and skipped."""
    secrets: list[Secret] = []
    hold: bool | None = None
    for path in paths:
        try:
            data = _read(path)
        except OSError as exc:
            raise InputError(f"{path}: cannot read key log: {exc.strerror or exc}") from None
        if data[:4] in _CAPTURE_MAGICS or data[:2] == b"\x1f\x8b":
            what = "gzip-compressed" if data[:2] == b"\x1f\x8b" else "a capture file"
            raise InputError(f"{path}: is {what}, not an NSS key log (--keylog FILE takes a key log; "
                             "captures are given as arguments)")
        found, problems = parse_keylog(data)
        if not found:
            if hold is None:
                hold = captures_hold_secrets(captures)
            detail = (f"{len(problems)} lines skipped, line {problems[0].line_no}: {problems[0].reason}"
                      if problems else "the file is empty")
            if not hold:
                raise InputError(f"{path}: no usable key log line ({detail}); is this an NSS key log?")
            warn(f"{path}: no usable key log line ({detail}); using the secrets the capture holds")
            continue
        report_problems(path, problems, warn)
        secrets.extend(found)
    return secrets


def load_rsa_files(paths: Iterable[str], password: bytes | None = None) -> list[RsaKey]:
    """The RSA private keys in the PEM/DER files at ``paths``."""
    keys = []
    for path in paths:
        try:
            data = _read(path)
        except OSError as exc:
            raise InputError(f"{path}: cannot read RSA key: {exc.strerror or exc}") from None
        try:
            keys.append(load_rsa_key(data, password))
        except KeyLogError as exc:
            raise InputError(f"{path}: {exc}") from None
    return keys
