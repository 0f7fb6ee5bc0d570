"""The fabric's format: Redis key names, the values stored under them, the messages of its channel.

Version 1 (docs/fabric.md is the reference):

- a secret: key ``tlsmirror:secret:<LABEL>:<ident hex>`` (the ident is the client random for most
  labels), value the NSS key log line itself, with a TTL of ``engine.key_ttl``;
- a connection's handshake facts (mid-stream pickup by a sensor that did not see the handshake):
  key ``tlsmirror:facts:<client random hex>``, value the JSON object of ``--facts-out`` files
  (:mod:`tlsmirror.shell.offline.facts`, one codec for both), and the index
  ``tlsmirror:flow:<client>:<server>`` -> client random hex, both with a TTL of ``engine.key_ttl``;
- a TLS 1.2 session's resumption state (an abbreviated handshake resuming it, seen by another sensor):
  key ``tlsmirror:resume:<kind>:<digest hex>`` (kind ``id`` or ``ticket``, the SHA-256 of the session
  id or ticket: never the ticket), value one JSON object (:func:`resumption_line`) holding the master
  secret, with a TTL of ``engine.key_ttl``;
- the channel ``tlsmirror:fabric``: each message is a header line ``tlsmirror/1 <kind> <sensor id>``
  then its body; kind ``secrets`` has key log lines as its body, kind ``facts`` one JSON object of
  facts per line, kind ``resume`` one resumption state per line. Other kinds are left to later versions
  and ignored by a sensor that does not know them;
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
from ...tls.events import HandshakeFacts, ResumptionState
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
RESUME_PREFIX = "tlsmirror:resume:"
RESUME_PATTERN = RESUME_PREFIX + "*"
SECRETS = "secrets"
FACTS = "facts"
RESUME = "resume"
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


# ---------------------------------------------------------------------- resumption state
RESUME_KINDS = ("id", "ticket")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MASTER = re.compile(r"[0-9a-fA-F]{96}")  # 48 bytes


def resumption_key(st: ResumptionState) -> str:
    """The Redis key of a resumption state: ``tlsmirror:resume:<kind>:<digest hex>``."""
    return f"{RESUME_PREFIX}{st.kind}:{st.digest.hex()}"


def resumption_line(st: ResumptionState) -> str:
    """A resumption state as one line of JSON (ASCII); it holds the master secret."""
    return json.dumps({"kind": st.kind, "digest": st.digest.hex(), "master": st.master.hex(),
                       "version": st.version, "suite": st.suite, "ems": st.extended_master_secret,
                       "ts": st.ts}, separators=(",", ":"))


def _int(obj: dict[str, object], name: str, low: int, high: int) -> int:
    v = obj.get(name)
    if type(v) is not int or not low <= v <= high:
        raise FabricEntryError(f"resumption state: {name} is not an integer in {low:#x}..{high:#x}")
    return v


def parse_resumption_line(line: str) -> ResumptionState:
    """One line of JSON -> ResumptionState; FabricEntryError saying what is wrong (never the values)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise FabricEntryError("resumption state: not JSON") from None
    if type(obj) is not dict:
        raise FabricEntryError("resumption state: not a JSON object")
    kind, digest, master = obj.get("kind"), obj.get("digest"), obj.get("master")
    if kind not in RESUME_KINDS:
        raise FabricEntryError("resumption state: kind is not 'id' nor 'ticket'")
    if type(digest) is not str or _HEX64.fullmatch(digest) is None:
        raise FabricEntryError("resumption state: digest is not 64 lower-case hex digits")
    if type(master) is not str or _MASTER.fullmatch(master) is None:
        raise FabricEntryError("resumption state: master is not 48 bytes in hex")
    ems = obj.get("ems")
    if type(ems) is not bool:
        raise FabricEntryError("resumption state: ems is not a boolean")
    ts = obj.get("ts", 0.0)
    if type(ts) not in (int, float) or not 0.0 <= ts < 1e11:  # (NaN fails too)
        raise FabricEntryError("resumption state: ts is not a time")
    return ResumptionState(str(kind), bytes.fromhex(digest), bytes.fromhex(master),
                           _int(obj, "version", 0x0300, 0x0303), _int(obj, "suite", 0, 0xFFFF), ems, float(ts))


def parse_resumption_entry(key: bytes | str, value: bytes | str) -> ResumptionState:
    """A resumption entry (key, value) -> ResumptionState; FabricEntryError when it does not parse or match
    its key."""
    k = _text(key, "key")
    if not k.startswith(RESUME_PREFIX):
        raise FabricEntryError("not a resumption key")
    st = parse_resumption_line(_text(value, "value"))
    if resumption_key(st) != k.lower():
        raise FabricEntryError("key does not match its value's kind and digest")
    return st


def parse_resumption_lines(body: str) -> tuple[list[ResumptionState], int]:
    """The lines of a ``resume`` message -> (states, number of lines that did not parse)."""
    out: list[ResumptionState] = []
    bad = 0
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            out.append(parse_resumption_line(line))
        except FabricEntryError:
            bad += 1
    return out, bad
