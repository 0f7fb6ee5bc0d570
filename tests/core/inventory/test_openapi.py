"""OpenAPI 3.1 from an inventory (validated by openapi-spec-validator) and diffs."""

from __future__ import annotations

import copy

from openapi_spec_validator import validate

from tlsmirror.inventory.inventory import Inventory
from tlsmirror.inventory.openapi import diff, to_openapi

from .records import record
from .test_inventory import records


def test_document_validates() -> None:
    inv = Inventory()
    inv.add_all(records())
    doc = to_openapi(inv.to_dict())
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    op = doc["paths"]["/users/{user_id}"]["get"]
    assert {"name": "user_id", "in": "path", "required": True, "schema": {"type": "integer"}} in op["parameters"]
    assert {"name": "expand", "in": "query", "required": True, "schema": {"type": "string"}} in op["parameters"]
    assert set(op["responses"]) == {"200", "404"}
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["properties"]["id"] == {"type": "integer"}
    assert op["security"] == [{"bearerJwt": []}]
    assert doc["components"]["securitySchemes"]["bearerJwt"] == {"type": "http", "scheme": "bearer",
                                                                 "bearerFormat": "JWT"}
    post = doc["paths"]["/{param}/{param2}/hooks"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["properties"]["url"]["format"] == "uri"
    assert doc["paths"]["/slow"]["get"]["responses"] == {"default": {"description": "no response seen"}}


def test_diff_inventories_and_openapi() -> None:
    old = Inventory()
    old.add_all(records())
    new = Inventory()
    recs = [r for r in records() if r["path"] != "/health"]
    recs.append(record("DELETE", "/users/3", 204, resp_ct=None))
    recs.append(record("GET", "/users/7?expand=orders&fields=id", 200,
                       resp_json={"id": "7", "email": "a@b.example", "created": "2024-05-01T10:00:00Z",
                                  "nick": "x"}))
    new.add_all(recs)
    d = diff(old.to_dict(), new.to_dict())
    assert d["new"] == ["DELETE /users/{user_id}"]
    assert d["removed"] == ["GET /health"]
    (ch,) = d["changed"]
    assert ch["endpoint"] == "GET /users/{user_id}"
    assert ch["params_added"] == ["query:fields"]
    assert ch["responses"]["200"]["added"] == ["nick"]
    assert ch["responses"]["200"]["type_changed"] == [{"field": "id", "from": "integer", "to": "string|integer"}]
    # against an OpenAPI file (the documented spec): parameter names do not matter
    spec = copy.deepcopy(to_openapi(old.to_dict()))
    spec["paths"]["/users/{id}"] = spec["paths"].pop("/users/{user_id}")
    for p in spec["paths"]["/users/{id}"]["get"]["parameters"]:
        if p["in"] == "path":
            p["name"] = "id"
    d2 = diff(spec, new.to_dict())
    assert d2["new"] == ["DELETE /users/{user_id}"] and d2["removed"] == ["GET /health"]
    assert diff(new.to_dict(), new.to_dict()) == {"new": [], "removed": [], "changed": []}
