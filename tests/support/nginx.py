"""A real nginx (TLS 1.2/1.3, HTTP/1.1 and HTTP/2) on 127.0.0.1 for end-to-end tests.

``NginxServer(tmpdir)`` writes a self-signed certificate, static files of known content, a config,
and starts nginx (``daemon off``, one worker) on a free port, with a small Python backend behind
``proxy_pass`` for a streamed chunked response (``/chunked``) and a request-body echo (``/echo``).
nginx's access log (``log_lines()``) is the ground truth per request: client port, TLS protocol and
cipher, ALPN, HTTP version, method, URI, status, body bytes sent, and the ``X-Test`` request header.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

HOSTNAME = "api.test"
CIPHERS = ("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305:"
           "ECDHE-RSA-AES128-SHA256")
LOG_FIELDS = ("port", "protocol", "cipher", "alpn", "http", "method", "uri", "status", "body_sent",
              "x_test")


def nginx_usable() -> str | None:
    """None when nginx with TLS can run here, else why not."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if exe is None:
        return "nginx not installed"
    out = subprocess.run([exe, "-V"], capture_output=True, text=True).stderr
    if "--with-http_ssl_module" not in out:
        return "nginx lacks http_ssl_module"
    return None


def nginx_has_http2() -> bool:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    return "--with-http_v2_module" in subprocess.run([exe, "-V"], capture_output=True, text=True).stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def chunked_content() -> bytes:
    """What the backend streams at /chunked (known bytes, ~40 KB in 200 pieces)."""
    return b"".join(f"piece {i:04d} ".encode() + bytes(range(32, 127)) * 2 + b"\n" for i in range(200))


def static_files() -> dict[str, bytes]:
    rnd = hashlib.shake_256(b"tlsmirror e2e").digest(1 << 20)  # 1 MiB, deterministic, incompressible
    items = [{"id": i, "name": f"item-{i}", "tags": ["a", "b", "ü"], "price": i * 1.5} for i in range(400)]
    return {
        "hello.txt": b"hello from nginx\n",
        "big.bin": rnd,
        "data.json": json.dumps(items, ensure_ascii=False).encode(),
        "page.html": ("<!doctype html><title>t</title>" + "<p>caf\u00e9 \u2713</p>\n" * 3000).encode(),
    }


def _cert(tmp: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOSTNAME)]), critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp / "server.crt", tmp / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


class _Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path != "/chunked":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        data = chunked_content()
        for i in range(0, len(data), 4000):
            part = data[i:i + 4000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        out = json.dumps({"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class NginxServer:
    def __init__(self, tmpdir: str | os.PathLike[str], *, http2: bool = True) -> None:
        self.dir = Path(tmpdir)
        self.root = self.dir / "www"
        self.root.mkdir(parents=True, exist_ok=True)
        self.files = static_files()
        for name, data in self.files.items():
            (self.root / name).write_bytes(data)
        self.cert, self.key = _cert(self.dir)
        self.backend = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
        self.backend.daemon_threads = True
        self._backend_thread = threading.Thread(target=self.backend.serve_forever, daemon=True)
        self._backend_thread.start()
        self.port = free_port()
        self.access_log = self.dir / "access.log"
        self.error_log = self.dir / "error.log"
        conf = self.dir / "nginx.conf"
        conf.write_text(self._config(http2))
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()

    def _config(self, http2: bool) -> str:
        d = self.dir
        tmp = [f"{name}_temp_path {d / name};"
               for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
        fields = "|".join(["$remote_port", "$ssl_protocol", "$ssl_cipher", "$ssl_alpn_protocol",
                           "$server_protocol", "$request_method", "$request_uri", "$status",
                           "$body_bytes_sent", "$http_x_test"])
        return f"""
worker_processes 1;
daemon off;
master_process off;
pid {d / 'nginx.pid'};
error_log {self.error_log} warn;
events {{ worker_connections 64; }}
http {{
    {' '.join(tmp)}
    log_format tm '{fields}';
    access_log {self.access_log} tm;
    types {{ text/plain txt; application/json json; text/html html; application/octet-stream bin; }}
    default_type application/octet-stream;
    gzip on;
    gzip_types text/plain application/json;
    gzip_min_length 256;
    keepalive_requests 1000;
    server {{
        listen 127.0.0.1:{self.port} ssl{' http2' if http2 else ''};
        server_name {HOSTNAME};
        ssl_certificate {self.cert};
        ssl_certificate_key {self.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {CIPHERS};
        root {self.root};
        location /chunked {{
            proxy_pass http://127.0.0.1:{self.backend.server_address[1]};
            proxy_http_version 1.1;
            proxy_buffering off;
        }}
        location /echo {{
            proxy_pass http://127.0.0.1:{self.backend.server_address[1]};
            proxy_http_version 1.1;
        }}
    }}
}}
"""

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err.strip()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def url(self, path: str) -> str:
        return f"https://{HOSTNAME}:{self.port}{path}"

    def log_lines(self) -> list[dict[str, str]]:
        """The access log, one dict per request (nginx writes it when each request ends)."""
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text().splitlines():
            out.append(dict(zip(LOG_FIELDS, line.split("|"), strict=True)))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.backend.shutdown()
        self.backend.server_close()

    def __enter__(self) -> NginxServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
