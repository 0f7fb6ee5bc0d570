"""The fabric's format: Redis key names, the values stored under them, the messages of its channel.

Version 1 (docs/fabric.md is the reference):

- a secret: key ``tlsmirror:secret:<LABEL>:<ident hex>`` (the ident is the client random for most
  labels), value the NSS key log line itself, with a TTL of ``engine.key_ttl``;
- the channel ``tlsmirror:fabric``: each message is a header line ``tlsmirror/1 <kind> <sensor id>``
  then its body; kind ``secrets`` has key log lines as its body. Other kinds are left to later
  versions (``facts``: TLS 1.2 handshake facts, planned) and ignored by a sensor that does not know them;
- a sensor's presence: key ``tlsmirror:sensor:<sensor id>``, a small JSON object, refreshed while the
  sensor runs (``tlsmirror doctor`` lists the peers from them).

Values are parsed with the core's key log parser; an entry that does not parse, or whose key does not
match its line, raises :class:`~tlsmirror.shell.errors.FabricEntryError` (the caller skips and counts it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...keys.errors import KeyLogError
from ...keys.events import RSA_SESSION, Secret
from ...keys.keylog import parse_keylog_line
from ..errors import FabricEntryError

VERSION = "tlsmirror/1"
SECRET_PREFIX = "tlsmirror:secret:"
SECRET_PATTERN = SECRET_PREFIX + "*"
SENSOR_PREFIX = "tlsmirror:sensor:"
SENSOR_PATTERN = SENSOR_PREFIX + "*"
CHANNEL = "tlsmirror:fabric"
SECRETS = "secrets"
PROBE = "probe"  # `tlsmirror doctor`'s round trip; sensors ignore it
MAX_MESSAGE = 4 << 20  # bytes; a larger message is refused whole
_SENSOR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")


def valid_sensor_id(text: str) -> bool:
    return _SENSOR_ID.fullmatch(text) is not None


def secret_key(s: Secret) -> str:
    """The Redis key of a secret: ``tlsmirror:secret:<LABEL>:<ident hex>``."""
    return f"{SECRET_PREFIX}{s.label}:{s.ident.hex()}"


def secret_line(s: Secret) -> str:
    """The NSS key log line of a secret (what the key listener and key log files carry)."""
    if s.label == RSA_SESSION:
        return f"RSA Session-ID:{s.ident.hex()} Master-Key:{s.value.hex()}"
    return f"{s.label} {s.ident.hex()} {s.value.hex()}"


def _text(value: bytes | str, what: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise FabricEntryError(f"{what} is not ASCII") from None
    return value


def parse_entry(key: bytes | str, value: bytes | str) -> Secret:
    """A secret entry (key, value) -> Secret; FabricEntryError when it does not parse or match its key."""
    k = _text(key, "key")
    if not k.startswith(SECRET_PREFIX):
        raise FabricEntryError("not a secret key")
    try:
        secret = parse_keylog_line(_text(value, "value"))
    except KeyLogError as exc:
        raise FabricEntryError(f"value: {exc}") from None
    if secret is None:
        raise FabricEntryError("value holds no secret")
    if secret_key(secret).lower() != k.lower():
        raise FabricEntryError("key does not match its value's label and ident")
    return secret


@dataclass(frozen=True, slots=True)
class FabricMessage:
    """One message of the channel: its kind, the sensor that sent it, and its body (text)."""

    kind: str
    sender: str
    body: str


def encode_message(kind: str, sender: str, lines: list[str]) -> bytes:
    return ("\n".join([f"{VERSION} {kind} {sender}", *lines]) + "\n").encode("ascii")


def decode_message(data: bytes | str) -> FabricMessage:
    """A channel message -> FabricMessage; FabricEntryError when its header is not version 1's."""
    if len(data) > MAX_MESSAGE:
        raise FabricEntryError(f"message of {len(data)} bytes (limit {MAX_MESSAGE})")
    text = _text(data, "message")
    head, _, body = text.partition("\n")
    fields = head.split(" ")
    if len(fields) != 3 or fields[0] != VERSION:
        raise FabricEntryError("message header is not 'tlsmirror/1 KIND SENSOR'")
    if not _KIND.fullmatch(fields[1]) or not valid_sensor_id(fields[2]):
        raise FabricEntryError("message header has a bad kind or sensor id")
    return FabricMessage(fields[1], fields[2], body)


def parse_secret_lines(body: str) -> tuple[list[Secret], int]:
    """The key log lines of a ``secrets`` message -> (secrets, number of lines that did not parse)."""
    secrets: list[Secret] = []
    bad = 0
    for line in body.splitlines():
        try:
            s = parse_keylog_line(line)
        except KeyLogError:
            bad += 1
            continue
        if s is not None:
            secrets.append(s)
    return secrets, bad
