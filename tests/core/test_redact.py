"""tlsmirror.redact: header, JSON field, form/query and pattern masking; capture limits."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.redact import (
    MASK,
    RedactionConfig,
    RedactionError,
    Redactor,
    media_type,
    redact_json_fields,
)

SECRET = "S3CR3T-zq81-VALUE"


def test_default_headers_masked_case_insensitively() -> None:
    r = Redactor()
    for name in ("Authorization", "cookie", "SET-COOKIE", "Proxy-Authorization", "X-Api-Key"):
        assert r.header_value(name, f"Bearer {SECRET}") == MASK
    assert r.header_value("Accept", "text/html") == "text/html"
    assert r.headers([("Cookie", "a=1"), ("Host", "h")]) == [("Cookie", MASK), ("Host", "h")]


def test_configured_headers_patterns_and_mask() -> None:
    r = Redactor(RedactionConfig(headers=frozenset({"X-Secret"}), patterns=(r"\b\d{4}-\d{4}-\d{4}-\d{4}\b",),
                                 mask="***"))
    assert r.header_value("x-secret", "v") == "***"
    assert r.header_value("Authorization", "v") == "v"  # replaced the default list
    assert r.header_value("X-Note", "card 4111-1111-1111-1111 used") == "card *** used"


def test_disabled_masks_nothing_but_still_limits_bodies() -> None:
    r = Redactor(RedactionConfig(enabled=False, fields=frozenset({"password"}), patterns=("x",),
                                 body_limit=4))
    assert r.header_value("Authorization", "Bearer x") == "Bearer x"
    assert r.url("/a?password=x") == "/a?password=x"
    cap = r.body(b'{"password": "x"}', "application/json")
    assert cap.data == b'{"pa' and cap.truncated and cap.masked == 0
    assert r.body(b"\x00\x01", "image/png").data is None


def test_json_fields_nested_any_value_kind() -> None:
    doc = {"user": {"name": "ann", "Password": SECRET, "cards": [{"pan": SECRET, "n": 1}]},
           "token": {"a": [SECRET, {"b": SECRET}]}, "pan": 1234, "ok": "keep"}
    r = Redactor(RedactionConfig(fields=frozenset({"password", "pan", "token"})))
    cap = r.body(json.dumps(doc, indent=2).encode(), "application/json")
    assert cap.data is not None
    out = json.loads(cap.data)
    assert SECRET.encode() not in cap.data
    assert out["user"]["Password"] == MASK and out["user"]["cards"][0]["pan"] == MASK
    assert out["token"] == MASK and out["pan"] == MASK and out["ok"] == "keep"
    assert out["user"]["cards"][0]["n"] == 1 and cap.masked == 4


def test_json_fields_in_truncated_body_and_escapes() -> None:
    names = frozenset({"secret"})
    data = b'{"a": "x \\" \\"secret\\": no", "secret": "' + SECRET.encode()
    out, n = redact_json_fields(data, names, b"M")
    assert n == 1 and SECRET.encode() not in out and out.endswith(b'"secret": "M"')
    assert b'\\"secret\\": no' in out  # a look-alike inside a string value is left alone
    out, n = redact_json_fields(b'[{"secret": {"deep": ["' + SECRET.encode(), names, b"M")
    assert n == 1 and SECRET.encode() not in out


def test_form_and_query_fields() -> None:
    r = Redactor(RedactionConfig(fields=frozenset({"password", "api_key"})))
    assert r.url("/login?user=a&password=hunter2&API_KEY=k#frag") == \
        f"/login?user=a&password={MASK}&API_KEY={MASK}#frag"
    cap = r.body(b"user=a&password=hunter2", "application/x-www-form-urlencoded")
    assert cap.data == f"user=a&password={MASK}".encode()


def test_content_type_allow_list_and_limit() -> None:
    r = Redactor(RedactionConfig(body_limit=5))
    assert r.body(b"abcdefgh", "text/plain").data == b"abcde"
    assert r.body(b"\xff" * 10, "application/octet-stream").data is None
    assert r.body(b"{}", None).data is None  # no Content-Type: not captured by default
    assert r.body(b"{}", "application/problem+json").data == b"{}"
    # a cut never splits a UTF-8 character
    assert Redactor(RedactionConfig(body_limit=5)).body("aaé€".encode(), "text/plain").data == "aaé".encode()
    assert Redactor(RedactionConfig(body_limit=3)).body("aaé€".encode(), "text/plain").data == b"aa"
    assert Redactor(RedactionConfig(content_types=("*",))).body(b"\x00", None).data == b"\x00"


def test_masking_happens_before_the_cut() -> None:
    r = Redactor(RedactionConfig(patterns=(SECRET,), body_limit=8))
    cap = r.body(b"..." + SECRET.encode() + b"......", "text/plain")
    assert cap.data is not None and b"S3CR3T" not in cap.data and cap.truncated


def test_bad_pattern_is_reported() -> None:
    with pytest.raises(RedactionError, match="does not compile"):
        Redactor(RedactionConfig(patterns=("(unclosed",)))


def test_media_type() -> None:
    assert media_type([("Content-Type", "Application/JSON; charset=utf-8")]) == "application/json"
    assert media_type([("Host", "x")]) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["a", "b", "pw"]), inner,
                                                                 max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(json_values, st.data())
def test_json_secret_never_survives_even_when_cut(doc: object, data: st.DataObject) -> None:
    wrapped = {"x": doc, "pw": SECRET, "y": [doc, {"pw": {"k": SECRET}}]}
    raw = json.dumps(wrapped).encode()
    cut = data.draw(st.integers(0, len(raw)))
    out, _ = redact_json_fields(raw[:cut], frozenset({"pw"}), b"M")
    assert SECRET.encode() not in out
    if cut == len(raw):
        assert "M" in json.dumps(json.loads(out))  # still valid JSON


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_json_scanner_total_on_any_bytes(data: bytes) -> None:
    out, n = redact_json_fields(data, frozenset({"a", ""}), b"M")
    assert isinstance(out, bytes) and n >= 0
    r = Redactor(RedactionConfig(fields=frozenset({"a"}), patterns=("[0-9]+",)))
    for mtype in ("application/json", "text/plain", "application/x-www-form-urlencoded", None):
        r.body(data, mtype)
    r.url(data.decode("latin-1"))
