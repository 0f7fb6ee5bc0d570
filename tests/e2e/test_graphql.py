"""GraphQL end to end: a small GraphQL server over HTTP/1.1 behind the TLS terminator, real clients
(keep-alive POSTs and a GET), captured by tcpdump and replayed with the key log: operation types, names
and top-level fields right, an error response reported as such."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.sniff import Sniffer, tcpdump_usable
from tests.support.tlsterm import TlsTerminator
from tlsmirror.shell.commands import main as cli_main

pytestmark = pytest.mark.slow

QUERIES = [
    ("GetUser", 'query GetUser($id: ID!) { user(id: $id) { id name } viewer { id } }', {"id": "1"}),
    ("Rename", 'mutation Rename { rename(id: "1", name: "}{") { ok } }', {}),
    ("Broken", "query Broken { secret }", {}),
    (None, "{ version }", {}),
]


class _GraphqlServer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, params: dict[str, Any]) -> None:
        name = params.get("operationName")
        if name == "Broken":
            out: dict[str, Any] = {"data": None, "errors": [{"message": "secret is not a field"}]}
        else:
            out = {"data": {"ok": True, "name": name}}
        body = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        n = int(self.headers["Content-Length"])
        self._answer(json.loads(self.rfile.read(n)))

    def do_GET(self) -> None:
        qs = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        self._answer({k: v[0] for k, v in qs.items()})


def test_graphql_operations_and_errors_from_the_wire(tmp_path: Path) -> None:
    why = tcpdump_usable()
    if why:
        pytest.skip(why)
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _GraphqlServer)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    keylog = tmp_path / "keys.log"
    keylog.touch()
    pcap = tmp_path / "gql.pcap"
    try:
        with TlsTerminator(backend.server_address[1], keylog, alpn=["http/1.1"]) as term, \
                Sniffer(str(pcap), term.port):
            ctx = ssl.create_default_context(cadata=term.cert_pem.decode())
            conn = http.client.HTTPSConnection("localhost", term.port, context=ctx, timeout=10)
            for name, query, variables in QUERIES:
                payload: dict[str, Any] = {"query": query, "variables": variables}
                if name:
                    payload["operationName"] = name
                conn.request("POST", "/graphql", json.dumps(payload), {"Content-Type": "application/json"})
                conn.getresponse().read()
            q = urllib.parse.urlencode({"query": "query Ping { ping }", "operationName": "Ping"})
            conn.request("GET", "/graphql?" + q)
            conn.getresponse().read()
            conn.close()
    finally:
        backend.shutdown()
    out = tmp_path / "calls.jsonl"
    assert cli_main(["replay", str(pcap), "--keylog", str(keylog), "-o", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    got = [(r["method"], r["graphql"]["operation_type"], r["graphql"]["operation_name"], r["graphql"]["fields"],
            r["graphql"]["errors"]) for r in records]
    assert got == [("POST", "query", "GetUser", ["user", "viewer"], 0),
                   ("POST", "mutation", "Rename", ["rename"], 0),
                   ("POST", "query", "Broken", ["secret"], 1),
                   ("POST", "query", None, ["version"], 0),
                   ("GET", "query", "Ping", ["ping"], 0)]
    broken = records[2]["graphql"]
    assert broken["error_messages"] == ["secret is not a field"] and broken["data"] is False
    assert all(r["graphql"]["flags"] == [] for r in records)
