"""The fabric's format: Redis key names, the values stored under them, the messages of its channel.

Version 1 (docs/fabric.md is the reference):

- a secret: key ``tlsmirror:secret:<LABEL>:<ident hex>`` (the ident is the client random for most
  labels), value the NSS key log line itself, with a TTL of ``engine.key_ttl``;
- a connection's handshake facts (mid-stream pickup by a sensor that did not see the handshake):
  key ``tlsmirror:facts:<client random hex>``, value the JSON object of ``--facts-out`` files
  (:mod:`tlsmirror.shell.offline.facts`, one codec for both), and the index
  ``tlsmirror:flow:<client>:<server>`` -> client random hex, both with a TTL of ``engine.key_ttl``;
- the channel ``tlsmirror:fabric``: each message is a header line ``tlsmirror/1 <kind> <sensor id>``
  then its body; kind ``secrets`` has key log lines as its body, kind ``facts`` one JSON object of
  facts per line. Other kinds are left to later versions and ignored by a sensor that does not know them;
- a sensor's presence: key ``tlsmirror:sensor:<sensor id>``, a small JSON object, refreshed while the
  sensor runs (``tlsmirror doctor`` lists the peers from them).

Secrets are parsed with the core's key log parser, facts with the facts files' codec; an entry that does
not parse, or whose key does not match its value, raises :class:`~tlsmirror.shell.errors.FabricEntryError`
(the caller skips and counts it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ...frames.addresses import ip_text
from ...keys.errors import KeyLogError
from ...keys.events import RSA_SESSION, Secret
from ...keys.keylog import parse_keylog_line
from ...tls.events import HandshakeFacts
from ..errors import FabricEntryError
from ..offline.facts import facts_from_dict, facts_to_dict

VERSION = "tlsmirror/1"
SECRET_PREFIX = "tlsmirror:secret:"
SECRET_PATTERN = SECRET_PREFIX + "*"
SENSOR_PREFIX = "tlsmirror:sensor:"
SENSOR_PATTERN = SENSOR_PREFIX + "*"
CHANNEL = "tlsmirror:fabric"
FACTS_PREFIX = "tlsmirror:facts:"
FACTS_PATTERN = FACTS_PREFIX + "*"
FLOW_PREFIX = "tlsmirror:flow:"
FLOW_PATTERN = FLOW_PREFIX + "*"
SECRETS = "secrets"
FACTS = "facts"
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


# ---------------------------------------------------------------------- handshake facts
def facts_key(f: HandshakeFacts) -> str:
    """The Redis key of a connection's handshake facts: ``tlsmirror:facts:<client random hex>``."""
    return f"{FACTS_PREFIX}{f.client_random.hex()}"


def _end(addr: bytes, port: int) -> str:
    ip = ip_text(addr)
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def flow_key(f: HandshakeFacts) -> str:
    """The index entry of a connection's 4-tuple: ``tlsmirror:flow:<client ip>:<port>:<server ip>:<port>``
    (an IPv6 address in brackets)."""
    return f"{FLOW_PREFIX}{_end(f.client_addr, f.client_port)}:{_end(f.server_addr, f.server_port)}"


def facts_line(f: HandshakeFacts) -> str:
    """The facts as one line of JSON (ASCII), the object ``--facts-out`` writes."""
    return json.dumps(facts_to_dict(f), separators=(",", ":"))


def parse_facts_line(line: str) -> HandshakeFacts:
    """One line of JSON -> HandshakeFacts; FabricEntryError saying what is wrong (never the values)."""
    try:
        return facts_from_dict(json.loads(line))
    except (ValueError, TypeError, RecursionError) as exc:
        raise FabricEntryError(f"facts: {exc if type(exc) is ValueError else 'not JSON'}") from None


def parse_facts_entry(key: bytes | str, value: bytes | str) -> HandshakeFacts:
    """A facts entry (key, value) -> HandshakeFacts; FabricEntryError when it does not parse or match its key."""
    k = _text(key, "key")
    if not k.startswith(FACTS_PREFIX):
        raise FabricEntryError("not a facts key")
    facts = parse_facts_line(_text(value, "value"))
    if facts_key(facts) != k.lower():
        raise FabricEntryError("key does not match its value's client random")
    return facts


def parse_facts_lines(body: str) -> tuple[list[HandshakeFacts], int]:
    """The lines of a ``facts`` message -> (facts, number of lines that did not parse)."""
    out: list[HandshakeFacts] = []
    bad = 0
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            out.append(parse_facts_line(line))
        except FabricEntryError:
            bad += 1
    return out, bad
