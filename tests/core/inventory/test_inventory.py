"""Folding records into an inventory: endpoints by route, counts, status mix, latency, schemas, auth,
sensitive data; order independence; no values in the output."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.inventory.inventory import Inventory, percentile
from tlsmirror.inventory.routes import RouteConfig

from .records import record

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
CARD = "4539578763621486"


def records() -> list[dict]:
    out = []
    for i in range(1, 201):
        out.append(record("GET", f"/users/{i}?expand=orders", 200 if i % 10 else 404, ts=1.7e9 + i * 10,
                          duration_ms=5.0 + i % 20, req_headers=[["authorization", f"Bearer {JWT}"]],
                          resp_json={"id": i, "email": f"user{i}@example.com", "created": "2024-05-01T10:00:00Z"}
                          if i % 10 else {"error": "not found"}))
    for o in range(30):
        out.append(record("POST", f"/owner{o}x/repo{o}/hooks", 201, ts=1.7e9 + o,
                          req_headers=[["x-api-key", "k" * 20], ["x-tenant", "t"]],
                          req_json={"url": "https://hooks.example/x", "card": CARD}, resp_json={"id": o}))
    out.append(record("GET", "/health", 200, resp_json=None, resp_ct="text/plain"))
    out.append(record("GET", "/slow", None))
    return out


def test_fold() -> None:
    inv = Inventory()
    inv.add_all(records())
    d = inv.to_dict()
    eps = {(e["method"], e["route"]): e for e in d["services"][0]["endpoints"]}
    assert set(eps) == {("GET", "/users/{user_id}"), ("POST", "/{param}/{param2}/hooks"), ("GET", "/health"),
                        ("GET", "/slow")}
    u = eps[("GET", "/users/{user_id}")]
    assert u["count"] == 200 and u["status"] == {"200": 180, "404": 20}
    assert 8 <= u["latency_ms"]["p50"] <= 16 and u["latency_ms"]["p99"] <= 25.5
    assert u["first_seen"] == 1.7e9 + 10 and u["last_seen"] == 1.7e9 + 2000
    assert len(u["timeline"]) == 8 and sum(b["count"] for b in u["timeline"]) == 200
    assert u["query"] == [{"name": "expand", "required": True, "schema": {"type": "string"}, "count": 200}]
    assert u["auth"] == {"bearer:jwt": 200}
    assert u["responses"]["200"]["schema"]["properties"]["email"] == {"type": "string", "format": "email"}
    assert u["responses"]["404"]["fields"] == {"error": "string"}
    assert {"type": "email", "location": "response.body:email", "count": 180} in u["sensitive"]
    assert {"type": "jwt", "location": "header:authorization", "count": 200} in u["sensitive"]
    h = eps[("POST", "/{param}/{param2}/hooks")]
    assert h["count"] == 30 and h["auth"] == {"apiKey:header:x-api-key": 30}
    assert [p["name"] for p in h["headers"]] == ["x-tenant"]
    assert h["request"]["schema"]["required"] == ["card", "url"]
    assert {"type": "card_number", "location": "request.body:card", "count": 30} in h["sensitive"]
    assert eps[("GET", "/slow")]["status"] == {"none": 1}
    text = json.dumps(d)
    for value in (JWT, CARD, "user5@example.com", "hooks.example", "k" * 20):
        assert value not in text


def test_percentile() -> None:
    assert percentile({}, 0.5) is None
    inv = Inventory()
    for i in range(1000):
        inv.add(record("GET", "/x", 200, duration_ms=float(i + 1)))
    lat = inv.to_dict()["services"][0]["endpoints"][0]["latency_ms"]
    for q, want in (("p50", 500), ("p95", 950), ("p99", 990)):
        assert abs(lat[q] - want) / want < 0.03


@settings(max_examples=5, deadline=None)
@given(st.randoms(use_true_random=False))
def test_order_independent(rnd: random.Random) -> None:
    recs = records()
    a = Inventory()
    a.add_all(recs)
    shuffled = list(recs)
    rnd.shuffle(shuffled)
    b = Inventory()
    b.add_all(shuffled)
    da, db = a.to_dict(), b.to_dict()
    assert da["services"] == db["services"]


def test_bounded_keys() -> None:
    inv = Inventory.with_config(RouteConfig(max_paths=50))
    inv.max_keys = 20
    for i in range(500):
        inv.add(record("GET", f"/files/name{i}x", 200))
    assert len(inv.keys) <= 21
    eps = inv.to_dict()["services"][0]["endpoints"]
    assert [(e["route"], e["count"]) for e in eps] == [("/files/{file}", 500)]


def test_skips_and_bad_records() -> None:
    inv = Inventory()
    inv.add({"method": None, "path": None})
    inv.add({"method": "GET", "path": "/a", "request": "junk", "response": 3, "query": "x", "status": "x"})
    d = inv.to_dict()
    assert d["skipped"] == 1 and d["calls"] == 1


def test_merge_equals_one_inventory_of_all_calls() -> None:
    recs = records()
    random.Random(8).shuffle(recs)
    whole = Inventory()
    whole.add_all(recs)
    parts = [Inventory(), Inventory(), Inventory()]
    for i, r in enumerate(recs):
        parts[i % 3].add(r)
    merged = Inventory()
    for p in parts:
        merged.merge(p)
    assert merged.to_dict() == whole.to_dict()
    assert parts[0].calls + parts[1].calls + parts[2].calls == whole.calls  # the parts are unchanged


def test_merge_respects_the_caps() -> None:
    small = Inventory(max_keys=3)
    other = Inventory()
    other.add_all(records())
    small.merge(other)
    assert small.calls == other.calls
    assert len(small.keys) <= 3 + 4  # past the cap, folds gather under their route
    eps = {(e["method"], e["route"]): e["count"] for e in small.to_dict()["services"][0]["endpoints"]}
    assert eps[("GET", "/users/{user_id}")] == 200


# JSON values for bodies: nested, some wide objects (past MAX_FIELDS properties: the caps), sensitive strings
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**13),
                     st.floats(allow_nan=False, allow_infinity=False),
                     st.sampled_from(["", "x", "user@example.com", CARD, JWT, "2024-05-01", "+44 20 7946 0958",
                                      "123e4567-e89b-12d3-a456-426614174000", "https://a.example/b"]))
_KEYS = st.sampled_from(["id", "email", "items", "a", "b", "c"]) | st.text("abcdefghij", min_size=1, max_size=3)
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_KEYS, inner, max_size=5)
                     | st.builds(lambda n, v: {f"f{i}": v for i in range(n)}, st.integers(60, 70), inner),
                     max_leaves=30)


def _body_record(rnd_body: object, text: str | None, ct: str | None, status: int | None, path: str,
                 headers: list[list[str]], truncated: bool, side: str) -> dict:
    r = record("POST", path, status, req_headers=headers, resp_ct=ct)
    if text is None:
        text = json.dumps(rnd_body)
    body = {"size": len(text), "wire_size": len(text), "captured": len(text), "truncated": truncated,
            "decode_error": None, "encoding": "utf-8", "text": text}
    r[side]["body"] = body
    r[side]["content_type"] = ct
    return r


_RECORD = st.builds(
    _body_record, _JSON,
    st.one_of(st.none(), st.sampled_from(["{not json", "a=1&email=user%40example.com", "[1, 2", "plain " + CARD])),
    st.sampled_from(["application/json", "application/x-www-form-urlencoded", None, "text/plain",
                     "application/problem+json; charset=utf-8"]),
    st.sampled_from([200, 201, 404, None]),
    st.sampled_from(["/users/7", "/users/jane%40example.com/cards", "/v1/" + CARD, "/health"]),
    st.lists(st.sampled_from([["Authorization", f"Bearer {JWT}"], ["authorization", "Basic dTpw"],
                              ["Authorization", "tok3n"], ["Cookie", "sessionid=1; theme=dark; jwt=x"],
                              ["X-Api-Key", "k" * 20], ["X-Tenant", "t1"], ["x-tenant", "2024-05-01"],
                              [":authority", "a"], ["Accept", "*/*"]]), max_size=4),
    st.booleans(), st.sampled_from(["request", "response"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(_RECORD, min_size=1, max_size=12), st.lists(st.integers(0, 11), max_size=24))
def test_folding_from_memory_gives_the_inventory_of_fresh_folding(recs: list[dict], repeats: list[int]) -> None:
    """What folding remembers (repeated bodies folded from their remembered shape and findings, paths,
    header kinds, auth values) changes nothing: the same document and the same shapes (drop counts
    included) as an inventory that starts its memory afresh at every call."""
    from tlsmirror.inventory.sensitive import QuickRules, SensitiveRules

    calls = recs + [recs[i % len(recs)] for i in repeats] + recs + recs  # every body at least three times
    for rules in (SensitiveRules(), QuickRules()):
        remembered = Inventory(rules=rules)
        fresh = Inventory(rules=rules)
        for r in calls:
            remembered.add(r)
            fresh.memo = None  # a new memory: nothing is folded from an earlier call
            fresh.add(r)
        assert remembered.to_dict() == fresh.to_dict()
        for key, st_fresh in fresh.keys.items():
            st_mem = remembered.keys[key]
            assert (st_mem.request_shape is None) == (st_fresh.request_shape is None)
            if st_fresh.request_shape is not None:
                assert st_mem.request_shape is not None
                assert st_mem.request_shape.to_dict() == st_fresh.request_shape.to_dict()
            assert {s: sh.to_dict() for s, sh in st_mem.responses.items()} == \
                {s: sh.to_dict() for s, sh in st_fresh.responses.items()}
            assert st_mem.sensitive == st_fresh.sensitive and st_mem.auth == st_fresh.auth


def test_a_remembered_body_meets_the_caps_as_observing_it_does() -> None:
    """Items full (64 properties from a first body), then a body whose items bring a new property twice:
    dropped twice, folded from memory or not."""
    wide = [{f"f{i}": i for i in range(64)}]
    late = [{"x": 1}, {"x": 2, "f1": 3}]
    recs = [record("POST", "/a", 200, resp_json=v) for v in (wide, late, late, late, wide, late)]
    remembered, fresh = Inventory(), Inventory()
    for r in recs:
        remembered.add(r)
        fresh.memo = None
        fresh.add(r)
    (st_mem,), (st_fresh,) = remembered.keys.values(), fresh.keys.values()
    items = st_fresh.responses["200"].items
    assert items is not None and items.dropped == 8 and items.properties["f1"].count == 6
    assert st_mem.responses["200"].to_dict() == st_fresh.responses["200"].to_dict()
    assert remembered.to_dict() == fresh.to_dict()
