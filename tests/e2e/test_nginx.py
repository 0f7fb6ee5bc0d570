"""End to end: real nginx, real clients (curl, CPython ssl), real packets (tcpdump on lo), then
``tlsmirror replay`` on the capture. nginx's access log is the ground truth per request (client port,
TLS version and cipher, ALPN, HTTP version, method, URI, status, body bytes sent, X-Test header);
the bodies are files and generated content of known bytes.

Skips cleanly without nginx, tcpdump, curl or root.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.nginx import HOSTNAME, NginxServer, chunked_content, nginx_has_http2, nginx_usable
from tests.support.sniff import Sniffer, tcpdump_usable
from tlsmirror.shell.commands import main as cli_main
from tlsmirror.tls.suites import SUITES

pytestmark = pytest.mark.slow

PAYLOAD = hashlib.shake_256(b"post body").digest(60_000)  # binary request body
TEXT_PAYLOAD = ("name=caf%C3%A9&" + "x=1&" * 5000).encode()


def _why_skip() -> str | None:
    for why in (nginx_usable(), tcpdump_usable()):
        if why:
            return why
    if shutil.which("curl") is None:
        return "curl not installed"
    return None


def _curl(server: NginxServer, keylog: Path, args: list[str], paths: list[str]) -> None:
    cmd = ["curl", "-sS", "-k", "--resolve", f"{HOSTNAME}:{server.port}:127.0.0.1", *args]
    for p in paths:
        cmd += ["-o", os.devnull, server.url(p)]
    env = dict(os.environ, SSLKEYLOGFILE=str(keylog))
    r = subprocess.run(cmd, env=env, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode()


def _client_context(keylog: Path, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.keylog_filename = str(keylog)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _pipelined(server: NginxServer, keylog: Path) -> None:
    """Three requests sent before reading anything (raw TLS socket, no ALPN)."""
    ctx = _client_context(keylog)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")
    reqs = b"".join(
        f"GET {p} HTTP/1.1\r\nHost: {HOSTNAME}:{server.port}\r\nX-Test: f{i}\r\n{extra}\r\n".encode()
        for i, (p, extra) in enumerate([("/hello.txt", ""), ("/data.json", ""),
                                        ("/missing?q=1&r=%20x", "Connection: close\r\n")]))
    with socket.create_connection(("127.0.0.1", server.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOSTNAME) as s:
        s.sendall(reqs)
        while s.recv(65536):
            pass


def _http_client(server: NginxServer, keylog: Path) -> None:
    ctx = _client_context(keylog, alpn=["http/1.1"])
    conn = http.client.HTTPSConnection(HOSTNAME, server.port, context=ctx)
    # resolve api.test to 127.0.0.1 without touching /etc/hosts
    raw = socket.create_connection(("127.0.0.1", server.port))
    conn.sock = ctx.wrap_socket(raw, server_hostname=HOSTNAME)
    conn.request("GET", "/hello.txt", headers={"X-Test": "g1"})
    assert conn.getresponse().read() == server.files["hello.txt"]
    conn.request("HEAD", "/big.bin", headers={"X-Test": "g2"})
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    conn.request("POST", "/echo", body=TEXT_PAYLOAD,
                 headers={"X-Test": "g3", "Content-Type": "application/x-www-form-urlencoded"})
    assert json.loads(conn.getresponse().read())["size"] == len(TEXT_PAYLOAD)
    conn.close()


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    why = _why_skip()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("e2e")
    keylog = tmp / "keys.log"
    keylog.touch()
    payload_file = tmp / "payload.bin"
    payload_file.write_bytes(PAYLOAD)
    h2 = nginx_has_http2()
    with NginxServer(tmp / "nginx", http2=h2) as server:
        pcap = str(tmp / "capture.pcap")
        with Sniffer(pcap, server.port) as sniffer:
            # A: HTTP/1.1 over TLS 1.2, several URLs on one connection, identity bodies, chunked, 404
            _curl(server, keylog, ["--http1.1", "--tlsv1.2", "--tls-max", "1.2", "--ciphers",
                                   "ECDHE-RSA-AES128-GCM-SHA256", "-H", "X-Test: a"],
                  ["/hello.txt", "/big.bin", "/data.json", "/chunked", "/missing"])
            # B: HTTP/2 over TLS 1.3, gzip
            if h2:
                _curl(server, keylog, ["--http2", "--tlsv1.3", "--compressed", "-H", "X-Test: b"],
                      ["/hello.txt", "/big.bin", "/data.json", "/page.html", "/chunked"])
            # C: HTTP/1.1 over TLS 1.3 (ChaCha20), gzip of a chunked proxied response and of a file
            _curl(server, keylog, ["--http1.1", "--tlsv1.3", "--tls13-ciphers",
                                   "TLS_CHACHA20_POLY1305_SHA256", "--compressed", "-H", "X-Test: c"],
                  ["/page.html", "/chunked"])
            # D: a request body over HTTP/1.1
            _curl(server, keylog, ["--http1.1", "-H", "X-Test: d", "--data-binary", f"@{payload_file}",
                                   "-H", "Content-Type: application/octet-stream"], ["/echo"])
            # E: a request body over HTTP/2 on TLS 1.2
            if h2:
                _curl(server, keylog, ["--http2", "--tlsv1.2", "--tls-max", "1.2", "--ciphers",
                                       "ECDHE-RSA-CHACHA20-POLY1305", "-H", "X-Test: e", "--data-binary",
                                       f"@{payload_file}", "-H", "Content-Type: application/octet-stream"],
                      ["/echo"])
            # F: pipelining; G: http.client (GET, HEAD, POST on one connection)
            _pipelined(server, keylog)
            _http_client(server, keylog)
            sniffer.stop()
        log = server.log_lines()
        files = dict(server.files)
    out = tmp / "out.jsonl"
    code = cli_main(["replay", pcap, "--keylog", str(keylog), "-o", str(out), "--body-limit", "4m"])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    har = tmp / "out.har"
    assert cli_main(["replay", pcap, "--keylog", str(keylog), "-o", str(har), "--format", "har",
                     "--body-limit", "4m"]) == 0
    return {"records": records, "log": log, "files": files, "h2": h2, "pcap": pcap,
            "har": json.loads(har.read_text()), "port": server.port}


def _body(body: dict[str, Any] | None) -> bytes | None:
    if body is None:
        return None
    if body["encoding"] == "base64":
        return base64.b64decode(body["text"])
    return body["text"].encode("utf-8")


def _expected(uri: str, files: dict[str, bytes]) -> bytes | None:
    path = uri.split("?", 1)[0]
    if path == "/chunked":
        return chunked_content()
    if path.lstrip("/") in files:
        return files[path.lstrip("/")]
    return None


def _header(headers: list[list[str]], name: str) -> str | None:
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def _suite_name(openssl_name: str) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    for c in ctx.get_ciphers():
        if c["name"] == openssl_name:
            return SUITES[c["id"] & 0xFFFF].name
    return openssl_name  # TLS 1.3 names are the IANA names


def _key(rec: dict[str, Any]) -> tuple[str, str, str]:
    return (str(rec["client"]["port"]), rec["method"], rec["target"])


def test_every_request_nginx_served_is_reported_once(e2e: dict[str, Any]) -> None:
    got = Counter(_key(r) for r in e2e["records"])
    want = Counter((x["port"], x["method"], x["uri"]) for x in e2e["log"])
    assert got == want
    assert sum(want.values()) == (20 if e2e["h2"] else 14)


def test_fields_match_the_server(e2e: dict[str, Any]) -> None:
    by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in e2e["records"]:
        by_key.setdefault(_key(r), []).append(r)
    for entry in e2e["log"]:
        rec = by_key[(entry["port"], entry["method"], entry["uri"])].pop(0)
        where = f"{entry['method']} {entry['uri']} ({entry['x_test']})"
        assert rec["status"] == int(entry["status"]), where
        assert rec["http_version"] == {"HTTP/2.0": "2", "HTTP/1.1": "1.1"}[entry["http"]], where
        tls = rec["tls"]
        assert tls["version"] == entry["protocol"].replace("TLSv", "TLS"), where
        assert tls["suite"] == _suite_name(entry["cipher"]), where
        assert tls["alpn"] == (None if entry["alpn"] in ("", "-") else entry["alpn"]), where
        assert tls["sni"] == HOSTNAME, where
        assert rec["scheme"] == "https" and rec["authority"] == f"{HOSTNAME}:{e2e['port']}", where
        assert rec["server"] == {"ip": "127.0.0.1", "port": e2e["port"]}, where
        assert rec["client"]["ip"] == "127.0.0.1", where
        assert _header(rec["request"]["headers"], "x-test") == entry["x_test"], where
        assert rec["flags"] == [], where
        assert rec["request_start_ts"] <= rec["request_end_ts"] <= rec["response_start_ts"] \
            <= rec["response_end_ts"], where
        body = rec["response"]["body"]
        if entry["method"] == "HEAD":
            assert body is None, where
            assert _header(rec["response"]["headers"], "content-length") == str(len(e2e["files"]["big.bin"]))
            continue
        chunked = _header(rec["response"]["headers"], "transfer-encoding") == "chunked"
        if not chunked:  # nginx counts chunk framing in $body_bytes_sent
            assert body["wire_size"] == int(entry["body_sent"]), where
        expected = _expected(entry["uri"], e2e["files"])
        if expected is not None and rec["status"] == 200:
            assert not body["truncated"] and body["decode_error"] is None, where
            assert _body(body) == expected, where
            assert body["size"] == len(expected), where
            if _header(rec["response"]["headers"], "content-encoding") == "gzip":
                assert body["wire_size"] < body["size"], where
            else:
                assert body["wire_size"] == body["size"], where


def test_gzip_chunked_and_binary(e2e: dict[str, Any]) -> None:
    recs = e2e["records"]
    gz = [r for r in recs if _header(r["response"]["headers"], "content-encoding") == "gzip"]
    assert len(gz) == (5 if e2e["h2"] else 2)
    chunked_h1 = [r for r in recs if r["http_version"] == "1.1"
                  and _header(r["response"]["headers"], "transfer-encoding") == "chunked"]
    assert {r["target"] for r in chunked_h1} >= {"/chunked", "/page.html"}
    big = [r for r in recs if r["target"] == "/big.bin" and r["method"] == "GET"]
    assert big and all(r["response"]["body"]["encoding"] == "base64" for r in big)
    hello = next(r for r in recs if r["target"] == "/hello.txt")
    assert hello["response"]["body"] == {"size": 17, "wire_size": 17, "captured": 17, "truncated": False,
                                         "decode_error": None, "encoding": "utf-8",
                                         "text": "hello from nginx\n"}


def test_request_bodies(e2e: dict[str, Any]) -> None:
    posts = [r for r in e2e["records"] if r["method"] == "POST"]
    assert len(posts) == (3 if e2e["h2"] else 2)
    for r in posts:
        sent = TEXT_PAYLOAD if _header(r["request"]["headers"], "x-test") == "g3" else PAYLOAD
        body = r["request"]["body"]
        assert _body(body) == sent and body["size"] == body["wire_size"] == len(sent)
        echo = json.loads(_body(r["response"]["body"]) or b"")
        assert echo == {"size": len(sent), "sha256": hashlib.sha256(sent).hexdigest()}
        assert r["status"] == 201
    form = next(r for r in posts if _header(r["request"]["headers"], "x-test") == "g3")
    assert form["request"]["body"]["encoding"] == "utf-8"


def test_pipelined_requests_pair_in_order(e2e: dict[str, Any]) -> None:
    piped = [r for r in e2e["records"] if (_header(r["request"]["headers"], "x-test") or "").startswith("f")]
    piped.sort(key=lambda r: r["request_start_ts"])
    assert [(r["target"], r["status"]) for r in piped] == [("/hello.txt", 200), ("/data.json", 200),
                                                         ("/missing?q=1&r=%20x", 404)]
    assert len({r["connection_id"] for r in piped}) == 1
    assert piped[2]["path"] == "/missing" and piped[2]["query"] == [["q", "1"], ["r", " x"]]
    assert piped[0]["tls"]["version"] == "TLS1.2" and piped[0]["tls"]["alpn"] is None
    assert _body(piped[1]["response"]["body"]) == e2e["files"]["data.json"]


def test_har_output_of_the_same_capture(e2e: dict[str, Any]) -> None:
    log = e2e["har"]["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] == "tlsmirror"
    entries = log["entries"]
    assert len(entries) == len(e2e["records"])
    for e in entries:
        assert e["request"]["url"].startswith(f"https://{HOSTNAME}:{e2e['port']}/")
        assert e["response"]["status"] in (200, 201, 404)
        assert e["time"] >= 0 and all(e["timings"][k] >= 0 for k in ("send", "wait", "receive"))
        assert e["serverIPAddress"] == "127.0.0.1"
    big = next(e for e in entries
               if e["request"]["url"].endswith("/big.bin") and e["request"]["method"] == "GET")
    assert base64.b64decode(big["response"]["content"]["text"]) == e2e["files"]["big.bin"]
    assert big["response"]["content"]["encoding"] == "base64"
