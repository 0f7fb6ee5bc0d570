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
