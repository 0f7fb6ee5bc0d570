"""The fabric's entry and message format: every key log label round-trips; anything else is an error."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.keys.events import CLIENT_RANDOM, LABELS, RSA, RSA_SESSION, Secret
from tlsmirror.keys.keylog import parse_keylog_line
from tlsmirror.shell.errors import FabricEntryError
from tlsmirror.shell.fabric.entries import (
    CHANNEL,
    FACTS,
    RESUME,
    SECRETS,
    decode_message,
    encode_message,
    facts_key,
    facts_line,
    flow_key,
    parse_entry,
    parse_facts_entry,
    parse_facts_lines,
    parse_resumption_entry,
    parse_resumption_lines,
    parse_secret_lines,
    resumption_key,
    resumption_line,
    secret_key,
    secret_line,
)
from tlsmirror.shell.offline.facts import facts_from_dict, facts_to_dict
from tlsmirror.tls.events import HandshakeFacts, ResumptionState


def _secret(label: str) -> Secret:
    ident = os.urandom(8 if label == RSA else 16 if label == RSA_SESSION else 32)
    return Secret(label, ident, os.urandom(48))


@pytest.mark.parametrize("label", sorted(LABELS))
def test_every_label_round_trips_through_key_and_line(label: str) -> None:
    s = _secret(label)
    key, line = secret_key(s), secret_line(s)
    assert key == f"tlsmirror:secret:{label}:{s.ident.hex()}"
    assert parse_keylog_line(line) == s  # the value is a plain key log line
    assert parse_entry(key.encode(), line.encode()) == s
    assert parse_entry(key.upper().replace("TLSMIRROR:SECRET:", "tlsmirror:secret:"), line.upper()) == s


def test_a_value_that_does_not_match_its_key_is_refused() -> None:
    a, b = _secret(CLIENT_RANDOM), _secret(CLIENT_RANDOM)
    with pytest.raises(FabricEntryError, match="does not match"):
        parse_entry(secret_key(a), secret_line(b))
    for key, value in ((secret_key(a), b"CLIENT_RANDOM 00 11"), (secret_key(a), b"\xff\xfe"),
                       (secret_key(a), "# a comment"), ("other:key", secret_line(a))):
        with pytest.raises(FabricEntryError) as err:
            parse_entry(key, value)
        assert a.value.hex() not in str(err.value)


def test_messages_carry_kind_sender_and_key_log_lines() -> None:
    secrets = [_secret(CLIENT_RANDOM), _secret("SERVER_TRAFFIC_SECRET_0")]
    data = encode_message(SECRETS, "sensor-a", [secret_line(s) for s in secrets] + ["BOGUS 00 00"])
    m = decode_message(data)
    assert (m.kind, m.sender) == (SECRETS, "sensor-a")
    got, bad = parse_secret_lines(m.body)
    assert got == secrets and bad == 1
    assert decode_message(encode_message("facts", "b", ["x"])).kind == "facts"  # a later kind: readable
    for wrong in (b"", b"tlsmirror/2 secrets a\n", b"tlsmirror/1 secrets\n", b"tlsmirror/1 SECRETS a\n",
                  b"tlsmirror/1 secrets a b\n", b"\xff", b"tlsmirror/1 secrets bad/id\n"):
        with pytest.raises(FabricEntryError):
            decode_message(wrong)
    assert CHANNEL == "tlsmirror:fabric"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_fuzzed_entries_and_messages_only_raise_the_entry_error(key: bytes, value: bytes) -> None:
    for call in (lambda: parse_entry(key, value), lambda: decode_message(value),
                 lambda: decode_message(b"tlsmirror/1 secrets s\n" + value)):
        with contextlib.suppress(FabricEntryError):
            call()
    parse_secret_lines(value.decode("latin-1"))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(LABELS)), st.binary(min_size=1, max_size=64))
def test_fuzzed_values_under_a_real_key(label: str, value: bytes) -> None:
    s = _secret(label)
    with contextlib.suppress(FabricEntryError):
        assert parse_entry(secret_key(s), value) == s


# ---------------------------------------------------------------------- handshake facts
def _facts(v6: bool = False, version: int = 0x0303, suite: int = 0xC02F) -> HandshakeFacts:
    if v6:
        ca, sa = bytes.fromhex("20010db8000000000000000000000001"), bytes.fromhex("20010db8000000000000000000000002")
    else:
        ca, sa = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    return HandshakeFacts(ca, 40001, sa, 443, os.urandom(32), os.urandom(32), version, suite, True, False,
                          "http/1.1", 1714564800.25, "api.example.test")


def test_facts_round_trip_through_key_value_and_message_lines_with_the_files_codec() -> None:
    f12, f13, f6 = _facts(), _facts(version=0x0304, suite=0x1301), _facts(v6=True)
    for f in (f12, f13, f6):
        key, line = facts_key(f), facts_line(f)
        assert key == f"tlsmirror:facts:{f.client_random.hex()}"
        assert json.loads(line) == facts_to_dict(f)  # the --facts-out object: one codec for both
        assert facts_from_dict(json.loads(line)) == f
        assert parse_facts_entry(key.encode(), line.encode()) == f
        assert line.isascii() and "\n" not in line
    assert flow_key(f12) == "tlsmirror:flow:10.0.0.1:40001:10.0.0.2:443"
    assert flow_key(f6) == "tlsmirror:flow:[2001:db8::1]:40001:[2001:db8::2]:443"
    m = decode_message(encode_message(FACTS, "sensor-a", [facts_line(f12), "{\"nope\": 1}", "", facts_line(f13)]))
    assert (m.kind, m.sender) == (FACTS, "sensor-a")
    assert parse_facts_lines(m.body) == ([f12, f13], 1)


def test_a_facts_value_that_does_not_match_its_key_or_parse_is_refused() -> None:
    a, b = _facts(), _facts()
    with pytest.raises(FabricEntryError, match="does not match"):
        parse_facts_entry(facts_key(a), facts_line(b))
    bad_suite = facts_line(a).replace("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_NOPE")
    for key, value in ((facts_key(a), "not json"), (facts_key(a), "[1, 2]"), (facts_key(a), bad_suite),
                       (facts_key(a), b"\xff"), (secret_key(_secret(CLIENT_RANDOM)), facts_line(a))):
        with pytest.raises(FabricEntryError) as err:
            parse_facts_entry(key, value)
        assert a.server_random.hex() not in str(err.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzzed_facts_entries_and_lines_only_raise_the_entry_error(value: bytes) -> None:
    f = _facts()
    with contextlib.suppress(FabricEntryError):
        parse_facts_entry(facts_key(f), value)
    text = value.decode("latin-1")
    with contextlib.suppress(FabricEntryError):
        parse_facts_entry(facts_key(f), facts_line(f)[:len(text)] + text)
    parse_facts_lines(text)
    parse_facts_lines(facts_line(f).replace("443", text.replace("\n", "")))


# ---------------------------------------------------------------------- resumption states
def _state(kind: str = "ticket") -> ResumptionState:
    return ResumptionState(kind, os.urandom(32), os.urandom(48), 0x0303, 0xC02F, True, 1234.5)


@pytest.mark.parametrize("kind", ["id", "ticket"])
def test_resumption_states_round_trip_through_key_value_and_message_lines(kind: str) -> None:
    s = _state(kind)
    key, line = resumption_key(s), resumption_line(s)
    assert key == f"tlsmirror:resume:{kind}:{s.digest.hex()}" and line.isascii()
    assert parse_resumption_entry(key.encode(), line.encode()) == s
    assert parse_resumption_entry(key.upper().replace("TLSMIRROR:RESUME:", "tlsmirror:resume:"), line) == s
    msg = decode_message(encode_message(RESUME, "sensor-a", [line, "", "not json", resumption_line(_state())]))
    states, bad = parse_resumption_lines(msg.body)
    assert msg.kind == RESUME and states[0] == s and len(states) == 2 and bad == 1


def test_a_resumption_value_that_does_not_match_its_key_or_parse_is_refused() -> None:
    s = _state()
    good = json.loads(resumption_line(s))
    key = resumption_key(s)
    broken = [{**good, "kind": "psk"}, {**good, "digest": good["digest"][:-2]},
              {**good, "digest": good["digest"].upper()},
              {**good, "master": good["master"][:-2]}, {**good, "master": 7}, {**good, "version": 0x0304},
              {**good, "version": True}, {**good, "suite": 1 << 16}, {**good, "ems": 1}, {**good, "ts": -1},
              {**good, "ts": "now"}, {k: v for k, v in good.items() if k != "suite"}, [good], "x"]
    for value in [json.dumps(b) for b in broken] + ["{", "\xff", json.dumps({**good, "kind": "id"})]:
        with pytest.raises(FabricEntryError) as err:
            parse_resumption_entry(key, value)
        assert s.master.hex() not in str(err.value) and s.digest.hex() not in str(err.value)
    with pytest.raises(FabricEntryError, match="not a resumption key"):
        parse_resumption_entry(secret_key(_secret(CLIENT_RANDOM)), resumption_line(s))
    assert s.master.hex() not in repr(s)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=100),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=8), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), _JSON,
       st.dictionaries(st.sampled_from(["kind", "digest", "master", "version", "suite", "ems", "ts"]), _JSON))
def test_fuzzed_resumption_entries_and_lines_only_raise_the_entry_error(
        value: bytes, obj: object, fields: dict[str, object]) -> None:
    s = _state()
    good = json.loads(resumption_line(s))
    for v in (value, json.dumps(obj), json.dumps({**good, **fields})):
        with contextlib.suppress(FabricEntryError):
            got = parse_resumption_entry(resumption_key(s), v)
            assert got.kind in ("id", "ticket") and len(got.digest) == 32 and len(got.master) == 48
        with contextlib.suppress(FabricEntryError):
            parse_resumption_entry(value, v)
    parse_resumption_lines(value.decode("latin-1"))
    with contextlib.suppress(FabricEntryError):
        decode_message(b"tlsmirror/1 resume s\n" + value)
