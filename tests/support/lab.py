"""The end-to-end lab: nginx in a network namespace behind a veth pair, real clients, the daemon as a process,
key senders."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.nginx import nginx_has_http2, nginx_usable
from tests.support.paths import REPO
from tests.support.tlspair import _make_cert
from tlsmirror.shell.daemon.metrics import parse_metrics

ROOT = REPO
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TLSMIRROR_")}
ENV["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + ENV.get("PYTHONPATH", "")
HOSTNAME = "api.example.test"  # in the server certificate's SAN (tests/support/tlspair.py)
LATE_DELAY = 3.5  # seconds after its connection ended that a late session's secrets are sent
CIPHERS = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-SHA256"
TAG = secrets.token_hex(4)  # makes every query id of this run unique

FILES = {
    "data.json": json.dumps([{"id": i, "name": f"widget-{i}", "tags": ["a", "b"], "price": i * 0.5}
                             for i in range(90)]).encode(),  # ~5 KB
    "blob.bin": hashlib.shake_256(b"tlsmirror e2e daemon").digest(300 * 1024),  # incompressible
    "hello.txt": b"hello from the namespace\n",
}
POST_BIN = hashlib.shake_256(b"post body").digest(3000)
POST_JSON = json.dumps({"order": 7, "items": ["x", "y", "\u00fc"]}, ensure_ascii=False).encode()


def _why_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, packet capture)"
    if shutil.which("ip") is None:
        return "iproute2 (ip) not installed"
    if shutil.which("curl") is None:
        return "curl not installed"
    return nginx_usable()


# ---------------------------------------------------------------------------- small helpers
def _sh(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(cond: Callable[[], bool], timeout: float, what: str,
              detail: Callable[[], str] = lambda: "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} {detail()}")


def _scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return parse_metrics(r.read().decode())


def _value(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    series = m.get(f"tlsmirror_{name}_total") or m.get(f"tlsmirror_{name}") or {}
    return float(series.get(tuple(sorted(labels.items())), 0.0))


def _by(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, label: str) -> dict[str, float]:
    series = m.get(f"tlsmirror_{name}_total") or m.get(f"tlsmirror_{name}") or {}
    return {dict(k)[label]: v for k, v in series.items() if label in dict(k)}


# ---------------------------------------------------------------------------- what the clients do
@dataclass
class Request:
    method: str
    path: str
    qid: str
    status: int
    response: bytes | None  # None: not compared (nginx's error page) or no body (HEAD)
    request: bytes | None = None
    no_response_body: bool = False

    @property
    def target(self) -> str:
        return f"{self.path}?qid={self.qid}"


@dataclass
class Client:
    name: str
    version: str  # "TLS1.2" / "TLS1.3"
    alpn: str | None
    http: str  # "1.1" / "2"
    late: bool  # secrets sent LATE_DELAY seconds after the connection ended
    suite: str | None = None
    requests: list[Request] = field(default_factory=list)
    keylog: Path | None = None
    sessions: int = 0  # TLS sessions found in its key log
    lines: int = 0  # key log lines sent for it

    def get(self, path: str, *, status: int = 200, head: bool = False) -> Request:
        qid = f"{self.name}-{len(self.requests)}-{TAG}"
        body = FILES.get(path.lstrip("/")) if status == 200 and not head else None
        r = Request("HEAD" if head else "GET", path, qid, status, body, no_response_body=head)
        self.requests.append(r)
        return r

    def post(self, data: bytes) -> Request:
        qid = f"{self.name}-{len(self.requests)}-{TAG}"
        r = Request("POST", "/submit", qid, 201, _created(qid), request=data)
        self.requests.append(r)
        return r


Plan = list[tuple[Request, list[str]]]  # a curl run: each request with its own extra options


def _created(qid: str) -> bytes:
    return b'{"created":true,"qid":"%s"}' % qid.encode()


# ---------------------------------------------------------------------------- the namespace
@dataclass
class Lab:
    ns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    dir: Path
    nginx: subprocess.Popen[bytes] | None = None
    h2: bool = False

    def up(self) -> None:
        self.down()  # leftovers of a killed run with the same process id
        _sh("ip", "netns", "add", self.ns)
        _sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _sh("ip", "link", "set", self.ns_if, "netns", self.ns)
        _sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _sh("ip", "link", "set", self.host_if, "mtu", "1500", "up")
        _sh("ip", "-n", self.ns, "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
        _sh("ip", "-n", self.ns, "link", "set", self.ns_if, "mtu", "1500", "up")
        _sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        if shutil.which("ethtool"):  # segments on the wire as a mirror port shows them
            subprocess.run(["ethtool", "-K", self.host_if, "tso", "off", "gso", "off", "gro", "off"],
                           capture_output=True)
            subprocess.run(["ip", "netns", "exec", self.ns, "ethtool", "-K", self.ns_if, "tso", "off",
                            "gso", "off", "gro", "off"], capture_output=True)

    def start_nginx(self) -> None:
        www = self.dir / "www"
        www.mkdir(parents=True)
        for name, data in FILES.items():
            (www / name).write_bytes(data)
        cert, key = _make_cert("rsa")
        (self.dir / "server.crt").write_bytes(cert)
        (self.dir / "server.key").write_bytes(key)
        self.h2 = nginx_has_http2()
        conf = self.dir / "nginx.conf"
        conf.write_text(self._config())
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = subprocess.Popen(["ip", "netns", "exec", self.ns, exe, "-c", str(conf), "-p", str(self.dir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

        def listening() -> bool:
            assert self.nginx is not None
            if self.nginx.poll() is not None:
                err = self.nginx.stderr.read().decode() if self.nginx.stderr else ""
                raise RuntimeError(f"nginx exited: {err.strip()[-500:]}")
            with socket.create_connection((self.ns_ip, 443), timeout=0.5):
                return True

        _wait_for(listening, 10, "nginx to listen in the namespace")

    def _config(self) -> str:
        d = self.dir
        tmp = " ".join(f"{n}_temp_path {d / n};" for n in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""
worker_processes 1;
daemon off;
master_process off;
pid {d / 'nginx.pid'};
error_log {d / 'error.log'} warn;
events {{ worker_connections 64; }}
http {{
    {tmp}
    log_format tm '$remote_port|$ssl_protocol|$ssl_alpn_protocol|$server_protocol|$request_method|'
                  '$request_uri|$status|$body_bytes_sent';
    access_log {d / 'access.log'} tm;
    types {{ text/plain txt; application/json json; application/octet-stream bin; }}
    default_type application/octet-stream;
    keepalive_requests 1000;
    server {{
        listen {self.ns_ip}:443 ssl{' http2' if self.h2 else ''};
        server_name {HOSTNAME};
        ssl_certificate {d / 'server.crt'};
        ssl_certificate_key {d / 'server.key'};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {CIPHERS};
        root {d / 'www'};
        location = /submit {{
            default_type application/json;
            return 201 '{{"created":true,"qid":"$arg_qid"}}';
        }}
    }}
}}
"""

    def access_log(self) -> str:
        p = self.dir / "access.log"
        return p.read_text() if p.exists() else ""

    def down(self) -> None:
        if self.nginx is not None:  # `ip netns exec` may fork: end the whole process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.nginx.pid, signal.SIGKILL)
            self.nginx.wait()
            if self.nginx.stderr:
                self.nginx.stderr.close()
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        for _ in range(50):  # the veth goes with the namespace once its last process is gone
            if not Path(f"/sys/class/net/{self.host_if}").exists():
                break
            time.sleep(0.1)


class DaemonProc:
    """``tlsmirror run`` as a subprocess on the lab's host interface, key listener on TLS."""

    def __init__(self, lab: Lab) -> None:
        self.key_port = _free_port()
        self.metrics_port = _free_port()
        self.out = lab.dir / "calls.jsonl"
        self.stderr_path = lab.dir / "daemon.log"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tlsmirror", "run", "-i", lab.host_if, "--workers", "2",
             "--key-port", str(self.key_port), "--metrics-port", str(self.metrics_port), "-o", str(self.out),
             "--log-level", "info", "--set", "keys.host=127.0.0.1",
             "--set", f"keys.state_dir={lab.dir / 'state'}", "--set", "engine.body_limit=1m"],
            env=ENV, stdout=subprocess.DEVNULL, stderr=self._stderr)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        """/healthz answers with both workers alive, and both have reported statistics (they send them
        only once their capture sockets are open)."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"tlsmirror run exited ({self.proc.returncode}): {self.log()[-2000:]}")
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2) as r:
                health = json.loads(r.read())
                if health["workers_alive"] != 2 or not health["ready"]:
                    return False
            rss = _by(_scrape(self.metrics_port), "memory_rss_bytes", "process")
            return {"worker0", "worker1"} <= set(rss)

        _wait_for(ready, 30, "the daemon to be ready", lambda: self.log()[-2000:])
        with socket.create_connection(("127.0.0.1", self.key_port), timeout=2):
            pass  # the key listener is up too (a probe: no lines)

    def stop(self, timeout: float = 40.0) -> tuple[int, float]:
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        finally:
            self.kill()
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


# ---------------------------------------------------------------------------- clients
