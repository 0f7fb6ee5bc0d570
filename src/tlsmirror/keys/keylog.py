"""NSS key log (SSLKEYLOGFILE) parsing. Error messages name the label and the problem, never secret hex."""

from __future__ import annotations

import binascii
import re
from typing import Any

from tlsmirror.keys.errors import KeyLogError
from tlsmirror.keys.events import (
    CLIENT_RANDOM,
    PMS_CLIENT_RANDOM,
    RSA,
    RSA_SESSION,
    Secret,
)

__all__ = ["KeyLogProblem", "parse_keylog", "parse_keylog_line"]

# label -> (ident length, allowed secret lengths; None = any length from 1 to 1024 bytes)
_TLS13_LENGTHS = (32, 48)
_SHAPES: dict[str, tuple[int, tuple[int, ...] | None]] = {
    CLIENT_RANDOM: (32, (48,)),
    PMS_CLIENT_RANDOM: (32, None),
    RSA: (8, (48,)),
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET": (32, _TLS13_LENGTHS),
    "SERVER_HANDSHAKE_TRAFFIC_SECRET": (32, _TLS13_LENGTHS),
    "CLIENT_TRAFFIC_SECRET_0": (32, _TLS13_LENGTHS),
    "SERVER_TRAFFIC_SECRET_0": (32, _TLS13_LENGTHS),
    "CLIENT_EARLY_TRAFFIC_SECRET": (32, _TLS13_LENGTHS),
    "EARLY_EXPORTER_SECRET": (32, _TLS13_LENGTHS),
    "EXPORTER_SECRET": (32, _TLS13_LENGTHS),
}
_MAX_SECRET = 1024
# OpenSSL 3.0 logs the secrets after a TLS 1.3 KeyUpdate under these labels, without a counter; they
# follow from *_TRAFFIC_SECRET_0 (RFC 8446 section 7.2), so they are recognised and skipped.
_IGNORED = frozenset({"CLIENT_TRAFFIC_SECRET_N", "SERVER_TRAFFIC_SECRET_N"})
_HEXISH = re.compile(r"[0-9A-Fa-f]{12,}")
_SAFE_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,47}")


class KeyLogProblem:
    """A line that was skipped, with a reason free of secret material."""

    __slots__ = ("line_no", "reason")

    line_no: int
    reason: str

    def __init__(self, line_no: int, reason: str) -> None:
        self.line_no = line_no
        self.reason = reason

    def __repr__(self) -> str:
        return f"KeyLogProblem(line_no={self.line_no!r}, reason={self.reason!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not KeyLogProblem:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[KeyLogProblem], tuple[Any, ...]]:
        return KeyLogProblem, (self.line_no, self.reason)


def _describe_label(label: str) -> str:
    """The label for an error message, unless it might be secret hex."""
    if _SAFE_LABEL.fullmatch(label) and not _HEXISH.search(label):
        return label
    return f"<{len(label)} characters, not shown>"


def _unhex(label: str, what: str, text: str) -> bytes:
    if len(text) % 2:
        raise KeyLogError(f"{label}: {what} has an odd number of hex digits ({len(text)})")
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise KeyLogError(f"{label}: {what} is not hex") from None


def _parse_rsa_session(fields: list[str]) -> Secret:
    # "RSA Session-ID:<hex> Master-Key:<hex>"
    if len(fields) != 3:
        raise KeyLogError(f"RSA Session-ID: expected 3 fields, got {len(fields)}")
    sid_field, mk_field = fields[1], fields[2]
    if not sid_field.lower().startswith("session-id:"):
        raise KeyLogError("RSA Session-ID: second field must start with Session-ID:")
    if not mk_field.lower().startswith("master-key:"):
        raise KeyLogError("RSA Session-ID: third field must start with Master-Key:")
    sid = _unhex(RSA_SESSION, "session id", sid_field[len("session-id:") :])
    master = _unhex(RSA_SESSION, "master key", mk_field[len("master-key:") :])
    if not 1 <= len(sid) <= 32:
        raise KeyLogError(f"{RSA_SESSION}: session id must be 1-32 bytes, got {len(sid)}")
    if len(master) != 48:
        raise KeyLogError(f"{RSA_SESSION}: master key must be 48 bytes, got {len(master)}")
    return Secret(RSA_SESSION, sid, master)


def parse_keylog_line(line: str | bytes) -> Secret | None:
    """One key log line -> Secret; KeyLogError when malformed.

    None for blank and comment lines and for OpenSSL's ``*_TRAFFIC_SECRET_N`` KeyUpdate lines.
    """
    if isinstance(line, bytes):
        try:
            line = line.decode("ascii")
        except UnicodeDecodeError:
            raise KeyLogError("line is not ASCII") from None
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split()
    label = fields[0].upper()
    if label == RSA and len(fields) >= 2 and fields[1].lower().startswith("session-id:"):
        return _parse_rsa_session(fields)
    shape = _SHAPES.get(label)
    if shape is None and label in _IGNORED:
        return None
    if shape is None:
        raise KeyLogError(f"unknown label {_describe_label(fields[0])}")
    if len(fields) != 3:
        raise KeyLogError(f"{label}: expected 3 fields, got {len(fields)}")
    ident_len, secret_lens = shape
    ident = _unhex(label, "first field", fields[1])
    if len(ident) != ident_len:
        raise KeyLogError(f"{label}: first field must be {ident_len} bytes, got {len(ident)}")
    value = _unhex(label, "secret", fields[2])
    if secret_lens is None:
        if not 1 <= len(value) <= _MAX_SECRET:
            raise KeyLogError(f"{label}: secret of {len(value)} bytes")
    elif len(value) not in secret_lens:
        want = " or ".join(str(n) for n in secret_lens)
        raise KeyLogError(f"{label}: secret must be {want} bytes, got {len(value)}")
    return Secret(label, ident, value)


def parse_keylog(data: str | bytes) -> tuple[list[Secret], list[KeyLogProblem]]:
    """Parse a whole key log; malformed lines become problems (1-based line numbers), never exceptions."""
    if isinstance(data, bytes):
        data = data.decode("ascii", errors="replace")
    secrets: list[Secret] = []
    problems: list[KeyLogProblem] = []
    for no, line in enumerate(data.splitlines(), start=1):
        try:
            secret = parse_keylog_line(line)
        except KeyLogError as e:
            problems.append(KeyLogProblem(no, str(e)))
            continue
        if secret is not None:
            secrets.append(secret)
    return secrets, problems
