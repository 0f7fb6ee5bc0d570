"""Schema summaries: types, optionality, formats, bounds; query/header parameters; auth schemes."""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.inventory.schema import (
    MAX_DEPTH,
    MAX_FIELDS,
    ParamSet,
    Shape,
    auth_schemes,
    header_params,
    string_format,
)

JWT = (base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode() + "."
       + base64.urlsafe_b64encode(b'{"sub":"1"}').rstrip(b"=").decode() + ".c2lnbmF0dXJl")


def test_json_summary() -> None:
    s = Shape()
    s.observe({"id": 1, "email": "a@b.example", "created": "2024-05-01T10:00:00Z", "tags": ["x"],
               "owner": {"uuid": "0b7c5e2d-1c9a-4f7e-9a63-0c5a2f0e8d11"}, "score": 1.5})
    s.observe({"id": 2, "email": "c@d.example", "created": "2024-05-02T10:00:00Z", "tags": [],
               "score": 2, "note": None})
    sch = s.to_schema()
    assert sch["type"] == "object"
    assert sch["required"] == ["created", "email", "id", "score", "tags"]
    p = sch["properties"]
    assert p["id"] == {"type": "integer"}
    assert p["email"] == {"type": "string", "format": "email"}
    assert p["created"]["format"] == "date-time"
    assert p["score"] == {"type": "number"}
    assert p["tags"] == {"type": "array", "items": {"type": "string"}}
    assert p["owner"]["properties"]["uuid"]["format"] == "uuid"
    assert p["note"] == {"type": "null"}
    assert s.fields()["owner.uuid"] == "string"
    # values are never stored
    dumped = json.dumps(s.to_dict())
    for secret in ("a@b.example", "2024-05-01", "0b7c5e2d"):
        assert secret not in dumped
    assert Shape.from_dict(json.loads(dumped)).to_schema() == sch


def test_bounds() -> None:
    s = Shape()
    s.observe({f"f{i}": i for i in range(MAX_FIELDS * 3)})
    assert len(s.properties) == MAX_FIELDS and s.dropped == MAX_FIELDS * 2
    deep: object = 1
    for _ in range(100):
        deep = {"a": deep}
    s2 = Shape()
    s2.observe(deep)
    assert max(len(k.split(".")) for k in s2.fields()) <= MAX_DEPTH


def test_formats() -> None:
    assert string_format("2024-01-02") == "date"
    assert string_format("https://x.example/a") == "uri"
    assert string_format("10.0.0.1") == "ipv4"
    assert string_format("hello") is None


def test_params() -> None:
    ps = ParamSet()
    ps.observe([("page", "1"), ("q", "shoes"), ("since", "2024-01-01")])
    ps.observe([("page", "2"), ("q", "hats")])
    assert ps.required("page") and not ps.required("since")
    assert ps.to_schema("page") == {"type": "integer"}
    assert ps.to_schema("since") == {"type": "string", "format": "date"}
    assert "shoes" not in json.dumps(ps.to_dict())
    hp = header_params([("Host", "h"), ("X-Tenant", "t1"), ("Authorization", "Bearer x"), ("x-api-key", "k")])
    assert hp == [("x-tenant", "t1")]


def test_auth() -> None:
    assert auth_schemes([("Authorization", "Bearer " + JWT)]) == {"bearer:jwt"}
    assert auth_schemes([("authorization", "Bearer opaque123")]) == {"bearer"}
    assert auth_schemes([("Authorization", "Basic dXNlcjpwYXNz")]) == {"basic"}
    assert auth_schemes([("X-API-Key", "k")]) == {"apiKey:header:x-api-key"}
    assert auth_schemes([("Cookie", "theme=dark; sessionid=abc")]) == {"apiKey:cookie:sessionid"}
    assert auth_schemes([], [("api_key", "v")]) == {"apiKey:query:api_key"}
    assert auth_schemes([("Accept", "*/*")]) == set()


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=5), c, max_size=5),
                    max_leaves=30))
def test_any_json(v: object) -> None:
    s = Shape()
    s.observe(v)
    s.observe(v)
    json.dumps(s.to_schema())
    assert Shape.from_dict(json.loads(json.dumps(s.to_dict()))).to_schema() == s.to_schema()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=8))
def test_any_headers(h: list[tuple[str, str]]) -> None:
    auth_schemes(h, h)
    header_params(h)
