"""The systemd unit as ``bin/install.sh`` renders it: its exposure score, and what its sandbox allows.

``systemd-analyze security --offline=true`` scores the unit file itself (no systemd needed as PID 1):
at most 2.0 (issue 15, point 16). The sandbox tests run Python under the unit's restrictions (as
tests/support/unitsandbox.py applies them) and check that what the daemon needs still works and what it
never needs is refused.
"""

from __future__ import annotations

import ctypes.util
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import free_port, scrape, value, wait_for
from tests.support.lab import _by
from tests.support.otlp_receiver import make_cert, receiver
from tests.support.paths import REPO
from tests.support.unitsandbox import render_unit, sandboxed, service_settings

MAX_EXPOSURE = 2.0


def _exposure(unit_file: Path) -> tuple[float, str]:
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_file)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, f"no score in systemd-analyze's output:\n{r.stdout}\n{r.stderr}"
    return float(m.group(1)), r.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_rendered_unit_scores_at_most_2(tmp_path: Path) -> None:
    unit = tmp_path / "tlsmirror.service"
    unit.write_text(render_unit())
    score, report = _exposure(unit)
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n" + "\n".join(
        line for line in report.splitlines() if line.startswith("✗"))


def test_the_unit_is_rendered_completely() -> None:
    unit = render_unit()
    assert not re.findall(r"@[A-Z]+@", unit), unit
    s = service_settings(unit)
    assert s["User"] == ["tlsmirror"]
    assert s["ExecStart"][0].startswith("/opt/tlsmirror/venv/bin/tlsmirror run --config /etc/tlsmirror/")
    # What capture needs, and only that
    assert set(s["CapabilityBoundingSet"][0].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_PACKET", "AF_NETLINK", "AF_INET", "AF_INET6",
                                                            "AF_UNIX"}
    assert s["UMask"] == ["0077"]
    assert s["MemoryDenyWriteExecute"] == ["yes"]


def _sandbox_why_skip() -> str | None:
    if os.geteuid() != 0:
        return "the sandbox stand-in needs root (mount namespace, setpriv)"
    for tool in ("systemd-analyze", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if ctypes.util.find_library("seccomp") is None:
        return "libseccomp is not installed"
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        return "cannot create a mount namespace here"
    return None


needs_sandbox = pytest.mark.skipif(_sandbox_why_skip() is not None, reason=str(_sandbox_why_skip()))

PROBE = r'''
import ctypes, mmap, os, socket, sys, json
out = {}
def t(name, fn):
    try:
        fn(); out[name] = "ok"
    except OSError as e:
        out[name] = errno_name = __import__("errno").errorcode.get(e.errno, str(e.errno))
libc = ctypes.CDLL(None, use_errno=True)
def unshare_net():
    if libc.unshare(0x40000000) != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
def ring():
    # TPACKET_V3 ring as capture.py sets it up: PACKET_VERSION, PACKET_RX_RING, mmap shared read/write
    import struct
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.setsockopt(263, 10, struct.pack("i", 2))
    s.setsockopt(263, 5, struct.pack("IIIIIII", 1 << 16, 4, 1 << 11, (1 << 16) * 4 // (1 << 11), 100, 0, 0))
    m = mmap.mmap(s.fileno(), (1 << 16) * 4, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m.close(); s.close()
def promisc():
    import struct
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind(("lo", 0))
    s.setsockopt(263, 1, struct.pack("iHH8s", socket.if_nametoindex("lo"), 1, 0, b""))
    s.close()
t("af_packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close())
t("tpacket_ring", ring)
t("promisc", promisc)
t("af_netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
t("if_nameindex", socket.if_nameindex)
t("af_inet_listen", lambda: socket.create_server(("127.0.0.1", 0)).close())
t("af_inet6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close())
t("af_unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close())
t("af_vsock", lambda: socket.socket(40, socket.SOCK_STREAM).close())
t("af_bluetooth", lambda: socket.socket(31, socket.SOCK_RAW).close())
t("mmap_wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
t("ctypes_callback", lambda: ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 0)())
t("unshare_net", unshare_net)
t("sched_fifo", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))
t("sethostname", lambda: socket.sethostname("x"))
t("proc_self_statm", lambda: open("/proc/self/statm").read())
t("proc_self_net", lambda: open("/proc/self/net/if_inet6").read())
t("proc_meminfo", lambda: open("/proc/meminfo").read())
t("create_file", lambda: open(sys.argv[1], "w").close())
out["file_mode"] = oct(os.stat(sys.argv[1]).st_mode & 0o777)
# Every compiled extension the daemon loads (MemoryDenyWriteExecute refuses an executable stack or a JIT)
import brotli, cryptography.hazmat.bindings._rust, grpc, httptools, orjson, redis, yaml, zstandard, prometheus_client
from google.protobuf.internal import api_implementation
from cryptography.hazmat.primitives.asymmetric import ec
ec.generate_private_key(ec.SECP256R1())
import multiprocessing.shared_memory
shm = multiprocessing.shared_memory.SharedMemory(create=True, size=4096); shm.close(); shm.unlink()
t("semaphore", lambda: __import__("multiprocessing").get_context("spawn").Lock())
out["protobuf"] = api_implementation.Type()
# OTLP/gRPC export through grpcio's C core (its threads, its polling) to a receiver outside the sandbox
from tests.support.otlp_receiver import sample_api_calls
from tlsmirror.shell.export.otlp import OtlpConfig, OtlpExporter
exp = OtlpExporter(OtlpConfig(endpoint=sys.argv[2], protocol="grpc", batch_size=5, batch_timeout=0.05, timeout=10))
for c in sample_api_calls()[:10]:
    exp.export(c)
out["grpc_flushed"] = exp.flush(20)
exp.close()
import tlsmirror.pipeline, tlsmirror.shell.daemon.supervisor, tlsmirror.shell.export.otlp
out["compiled"] = sorted(m for m, mod in sys.modules.items() if m.startswith("tlsmirror")
                         and (getattr(mod, "__file__", "") or "").endswith(".so"))
print(json.dumps(out))
'''


@needs_sandbox
def test_the_sandbox_allows_what_capture_needs_and_refuses_the_rest(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    os.chmod(tmp_path, 0o755)
    with receiver("grpc") as grpc_rx:
        cmd = sandboxed([sys.executable, str(probe), str(tmp_path / "created"), grpc_rx.endpoint], render_unit())
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env(), cwd=REPO)
        spans = grpc_rx.span_count()
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    allowed = ["af_packet", "tpacket_ring", "promisc", "af_netlink", "if_nameindex", "af_inet_listen",
               "af_inet6", "af_unix", "ctypes_callback", "proc_self_statm", "proc_self_net", "create_file",
               "semaphore"]
    assert {k: got[k] for k in allowed} == dict.fromkeys(allowed, "ok")
    assert got["af_vsock"] == got["af_bluetooth"] == "EAFNOSUPPORT"
    assert got["mmap_wx"] == got["unshare_net"] == got["sched_fifo"] == got["sethostname"] == "EPERM"
    assert got["proc_meminfo"] == "ENOENT"  # ProcSubset=pid
    assert got["file_mode"] == "0o600"  # UMask=0077
    assert got["grpc_flushed"] is True and spans == 10


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLSMIRROR_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    return env


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _https_server(tmp_path: Path) -> http.server.ThreadingHTTPServer:
    cert, key = make_cert()
    (tmp_path / "srv.crt").write_bytes(cert)
    (tmp_path / "srv.key").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.mark.slow
@needs_sandbox
def test_the_daemon_captures_listens_and_exports_inside_the_sandbox(tmp_path: Path) -> None:
    """``tlsmirror run -i lo`` under the unit's restrictions: AF_PACKET ring capture with the tcpdump
    filter, the key listener (TLS, its certificate generated in the state directory), /metrics, JSON lines
    and OTLP/HTTP export; SIGTERM drains and exits 0."""
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed (it compiles the capture filter)")
    from tlsmirror.shell.keylistener import sender as keysend

    os.chmod(tmp_path, 0o755)
    srv = _https_server(tmp_path)
    port = srv.server_address[1]
    key_port, metrics_port = free_port(), free_port()
    out, log = tmp_path / "calls.jsonl", tmp_path / "daemon.log"
    with receiver("http") as otlp, open(log, "wb") as err:
        cmd = [sys.executable, "-m", "tlsmirror", "run", "-i", "lo", "--bpf", f"tcp port {port}", "--workers", "2",
               "--key-port", str(key_port), "--metrics-port", str(metrics_port), "-o", str(out),
               "--set", "keys.host=127.0.0.1", "--set", f"keys.state_dir={tmp_path / 'state'}",
               "--set", f"otlp.endpoint={otlp.endpoint}", "--set", "otlp.protocol=http",
               "--set", f"otlp.spool_dir={tmp_path / 'spool'}", "--set", "otlp.batch_timeout=0.2"]
        proc = subprocess.Popen(sandboxed(cmd, render_unit()), env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=err)
        try:
            def ready() -> bool:
                assert proc.poll() is None, f"tlsmirror run exited: {log.read_text()[-3000:]}"
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                if health["workers_alive"] != 2 or not health["ready"]:
                    return False
                return {"worker0", "worker1"} <= set(_by(scrape(metrics_port), "memory_rss_bytes", "process"))

            wait_for(ready, 60, "the sandboxed daemon to be ready")
            keylog = tmp_path / "client.keylog"
            ctx = ssl.create_default_context(cafile=str(tmp_path / "srv.crt"))
            ctx.keylog_filename = str(keylog)
            n = 6
            for i in range(n):  # one connection each: six TLS sessions
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
                conn.request("GET", f"/orders/{i}")
                assert conn.getresponse().read()
                conn.close()
            kctx = keysend.client_context(insecure=True)
            for s in keysend.group_sessions(keylog.read_text().splitlines(), str(keylog)):
                keysend.send_session("127.0.0.1", key_port, s, kctx)
            wait_for(lambda: otlp.span_count() >= n, 60, f"{n} spans at the OTLP receiver")
            wait_for(lambda: value(scrape(metrics_port), "tls_connections", outcome="decrypted") == n, 30,
                     f"{n} decrypted connections in /metrics (workers report every second)")
            metrics = scrape(metrics_port)
            assert _by(metrics, "capture_mode", "mode").get("ring", 0) >= 1  # the TPACKET_V3 ring, no fallback
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(60)
            finally:
                if proc.poll() is None:
                    proc.kill()
            srv.shutdown()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    calls = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((c["target"], c["status"]) for c in calls) == [(f"/orders/{i}", 200) for i in range(n)]
    assert "Traceback" not in text and "Operation not permitted" not in text, text[-3000:]
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    assert (tmp_path / "state").is_dir()
