"""`inventory_main` over a real decrypted capture (OpenSSL via ssl, key log in the pcapng) and over
the JSON lines `replay` writes of it: same inventory, a valid OpenAPI document, an HTML report that
renders in headless Chromium without console errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from tests.support.pcapwriter import conversation_pcap, write_capture
from tests.support.tlspair import run_session
from tlsmirror.shell.offline.inventory import inventory_main
from tlsmirror.shell.offline.replay import replay_main

EMAIL = "jane.doe@example.com"


def _req(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: shop.example.test\r\nAuthorization: Basic dXNlcjpwdw==\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _resp(status: str, body: bytes, ct: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def traffic() -> tuple[list[bytes], list[bytes]]:
    reqs, resps = [], []
    for i in range(1, 31):
        reqs.append(_req("GET", f"/users/{i}?fields=name"))
        resps.append(_resp("200 OK", json.dumps({"id": i, "name": f"u{i}", "email": EMAIL}).encode()))
        reqs.append(_req("GET", f"/users/{i}/orders/2024-0{1 + i % 9}-1{i % 10}"))
        resps.append(_resp("200 OK", json.dumps([{"total": 1.5, "at": "2024-05-01T10:00:00Z"}]).encode()))
    reqs.append(_req("POST", "/users", json.dumps({"name": "new", "email": EMAIL}).encode()))
    resps.append(_resp("201 Created", json.dumps({"id": 31}).encode()))
    reqs.append(_req("GET", "/health"))
    resps.append(_resp("200 OK", b"ok", "text/plain"))
    return reqs, resps


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("inventory")
    reqs, resps = traffic()
    sess, _ = run_session(tls_version="1.3", requests=reqs, responses=resps, tmpdir=tmp, alpn=["http/1.1"],
                          sni="shop.example.test")
    cap = write_capture(tmp / "shop.pcapng", conversation_pcap(sess.flights, client=("10.0.0.1", 40001),
                                                                ts=1000.0, keylog=sess.keylog))
    return {"tmp": tmp, "cap": cap}


def test_inventory_from_capture_and_from_calls(capture: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "a"
    assert inventory_main([capture["cap"]], out_dir=str(out), state=str(tmp_path / "routes.json")) == 0
    inv = json.loads((out / "inventory.json").read_text())
    assert inv["calls"] == 62
    eps = {(e["method"], e["route"]): e for s in inv["services"] for e in s["endpoints"]}
    assert set(eps) == {("GET", "/users/{user_id}"), ("GET", "/users/{user_id}/orders/{date}"),
                        ("POST", "/users"), ("GET", "/health")}
    assert eps[("GET", "/users/{user_id}")]["count"] == 30
    assert eps[("GET", "/users/{user_id}")]["auth"] == {"basic": 30}
    doc = json.loads((out / "openapi.json").read_text())
    validate(doc)
    op = doc["paths"]["/users/{user_id}"]["get"]
    names = {(p["in"], p["name"]) for p in op["parameters"]}
    assert names == {("path", "user_id"), ("query", "fields")}
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["properties"]["email"]["format"] == "email" and schema["required"] == ["email", "id", "name"]
    assert doc["paths"]["/users"]["post"]["requestBody"]["content"]["application/json"]["schema"]["type"] == "object"
    for name in ("inventory.json", "openapi.json", "inventory.html"):
        assert EMAIL not in (out / name).read_text()  # types and locations only, never values
    # the JSON lines replay writes give the same inventory
    calls = tmp_path / "calls.jsonl"
    assert replay_main([capture["cap"]], [], [], [], output=str(calls)) == 0
    out2 = tmp_path / "b"
    assert inventory_main(calls=[str(calls)], out_dir=str(out2), previous=str(out / "openapi.json")) == 0
    inv2 = json.loads((out2 / "inventory.json").read_text())
    assert inv2["services"] == inv["services"]
    assert inv2["diff"] == {"new": [], "removed": [], "changed": []}
    assert json.loads((tmp_path / "routes.json").read_text())["v"] == 1


def test_report_renders_in_chromium(capture: dict[str, Any], tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("no /usr/bin/chromium")
    out = tmp_path / "r"
    inventory_main([capture["cap"]], out_dir=str(out))
    errors: list[str] = []
    requests: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((out / "inventory.html").as_uri())
        rows = page.locator("#endpoints tr.ep")
        assert rows.count() == 4
        routes = sorted(rows.nth(i).locator("td").nth(2).inner_text() for i in range(4))
        assert routes == ["/health", "/users", "/users/{user_id}", "/users/{user_id}/orders/{date}"]
        page.locator("#endpoints tr.ep", has_text="/users/{user_id}/orders").click()
        assert page.locator("tr.detail.open svg.chart polyline").count() == 3
        page.fill("#filter", "health")
        assert page.locator("#endpoints tr.ep:visible").count() == 1
        page.fill("#filter", "")
        page.locator("#endpoints tr.ep", has_text="/users/{user_id}/orders").click()
        page.locator("#endpoints tr.ep", has_text="GET/users/{user_id}").first.click()
        shot = os.environ.get("TLSMIRROR_REPORT_SHOT")
        if shot:
            page.screenshot(path=shot, full_page=True)
        browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith("file:")] == []
