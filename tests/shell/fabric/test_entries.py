"""The fabric's entry and message format: every key log label round-trips; anything else is an error."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.keys.events import CLIENT_RANDOM, LABELS, RSA, RSA_SESSION, Secret
from tlsmirror.keys.keylog import parse_keylog_line
from tlsmirror.shell.errors import FabricEntryError
from tlsmirror.shell.fabric.entries import (
    CHANNEL,
    SECRETS,
    decode_message,
    encode_message,
    parse_entry,
    parse_secret_lines,
    secret_key,
    secret_line,
)


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
