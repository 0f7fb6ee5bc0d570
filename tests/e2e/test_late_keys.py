"""Late keys end to end: real curl over HTTP/2 (several concurrent streams, a POST with a body) against
real nginx, captured by tcpdump; the secrets placed after all of the traffic (one Decryption Secrets
Block at the end of a pcapng) give the same API calls as the secrets placed before it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.nginx import HOSTNAME, NginxServer, nginx_has_http2, nginx_usable
from tests.support.pcapwriter import Pcapng, write_capture
from tests.support.sniff import Sniffer, tcpdump_usable
from tlsmirror.shell.commands import main as cli_main
from tlsmirror.shell.offline.pcapfile import CapturedFrame, read_capture

pytestmark = pytest.mark.slow

BODY = hashlib.shake_256(b"late keys").digest(150_000)


def _why_skip() -> str | None:
    for why in (nginx_usable(), tcpdump_usable()):
        if why:
            return why
    if shutil.which("curl") is None:
        return "curl not installed"
    if not nginx_has_http2():
        return "nginx without HTTP/2"
    return None


def _curl(server: NginxServer, keylog: Path, args: list[str], paths: list[str]) -> None:
    cmd = ["curl", "-sS", "-k", "--resolve", f"{HOSTNAME}:{server.port}:127.0.0.1", *args]
    for p in paths:
        cmd += ["-o", os.devnull, server.url(p)]
    r = subprocess.run(cmd, env=dict(os.environ, SSLKEYLOGFILE=str(keylog)), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()


def _pcapng(pcap: Path, keylog: str, out: Path, *, keys_first: bool) -> Path:
    png = Pcapng().interface(1, tsresol=9)
    if keys_first:
        png.secrets(keylog)
    for item in read_capture(pcap):
        if type(item) is CapturedFrame:
            assert item.linktype == 1
            png.packet(item.ts, bytes(item.data))
    if not keys_first:
        png.secrets(keylog)
    return Path(write_capture(out, png.to_bytes()))


def _calls(path: Path) -> list[dict[str, Any]]:
    out = path.with_suffix(".jsonl")
    assert cli_main(["replay", str(path), "-o", str(out), "--body-limit", "1m"]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_http2_responses_survive_keys_that_come_after_the_traffic(tmp_path: Path) -> None:
    why = _why_skip()
    if why:
        pytest.skip(why)
    keylog = tmp_path / "keys.log"
    keylog.touch()
    (tmp_path / "body.bin").write_bytes(BODY)
    pcap = tmp_path / "cap.pcap"
    with NginxServer(tmp_path / "nginx", http2=True) as server:
        with Sniffer(str(pcap), server.port) as sniffer:
            # several concurrent streams on one TLS 1.3 connection
            _curl(server, keylog, ["--http2", "--tlsv1.3", "--parallel", "--parallel-max", "8"],
                  ["/hello.txt", "/data.json", "/big.bin", "/page.html", "/chunked", "/missing"])
            # a POST with a body, then a GET, on TLS 1.2 (ChaCha20-Poly1305)
            _curl(server, keylog, ["--http2", "--tlsv1.2", "--tls-max", "1.2", "--ciphers",
                                   "ECDHE-RSA-CHACHA20-POLY1305", "--data-binary", f"@{tmp_path / 'body.bin'}",
                                   "-H", "Content-Type: application/octet-stream"], ["/echo"])
            sniffer.stop()
        served = len(server.log_lines())
    first = _calls(_pcapng(pcap, keylog.read_text(), tmp_path / "first.pcapng", keys_first=True))
    last = _calls(_pcapng(pcap, keylog.read_text(), tmp_path / "last.pcapng", keys_first=False))
    assert len(first) == served == 7
    assert len({r["connection_id"] for r in first}) == 2  # the six GETs multiplexed on one connection
    assert all(r["flags"] == [] and r["status"] for r in first), [(r["target"], r["flags"]) for r in first]
    echo = next(r for r in first if r["path"] == "/echo")
    assert echo["request"]["body"]["size"] == len(BODY)
    key = lambda r: (r["connection_id"], r.get("stream_id") or 0, r["target"])  # noqa: E731
    assert sorted(first, key=key) == sorted(last, key=key)
