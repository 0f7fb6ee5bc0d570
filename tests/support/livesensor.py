"""Live sensors on the lab's veth with the key fabric: the lab of a module, ``tlsmirror run -i`` as a process
(fabric on, its own metrics and key ports), TLS clients that keep their connection open. Shared by the key
fabric's lab tests (tests/e2e/test_fabric_lab.py, tests/e2e/test_fabric_failover_lab.py).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lab import ENV, HOSTNAME, Lab, _free_port, _scrape, _value, _why_skip


def lab_fixture(tmp_path_factory: pytest.TempPathFactory, prefix: str, net: int) -> Iterator[Lab]:
    """The body of a module's ``lab`` fixture: a namespace with nginx, names and subnet unique to this
    process and module (*prefix*: 2 letters; *net*: an offset that keeps modules' subnets apart)."""
    why = _why_skip()
    if why:
        pytest.skip(why)
    pid = os.getpid()
    x = (pid + net) % 250 + 2
    lab = Lab(ns=f"tm{prefix}{pid}", host_if=f"{prefix.lower()}{pid}h", ns_if=f"{prefix.lower()}{pid}n",
              host_ip=f"198.19.{x}.1", ns_ip=f"198.19.{x}.2", dir=tmp_path_factory.mktemp(f"e2e-{prefix}"))
    try:
        lab.up()
        lab.start_nginx()
        yield lab
    finally:
        lab.down()


class LiveSensor:
    """``tlsmirror run -i`` on the lab's host interface with the fabric at *url*; its own process group (a
    :meth:`kill` takes its workers along, as a host that fails would)."""

    def __init__(self, lab: Lab, name: str, url: str, *, keys: bool, bpf: str | None = None) -> None:
        self.out = lab.dir / f"calls-{name}.jsonl"
        self.mport = _free_port()
        self.kport = _free_port()
        self.log = lab.dir / f"sensor-{name}.log"
        cmd = [sys.executable, "-m", "tlsmirror", "run", "-i", lab.host_if, "--workers", "1", "-o", str(self.out),
               "--metrics-port", str(self.mport), "--log-level", "info",
               "--set", f"keys.fabric={url}", "--set", f"keys.fabric_id=live-{name}",
               "--set", "keys.fabric_timeout=2"]
        if bpf is not None:
            cmd += ["--bpf", bpf]
        cmd += (["--key-port", str(self.kport), "--set", "keys.host=127.0.0.1",
                 "--set", f"keys.state_dir={lab.dir / f'state-{name}'}"] if keys else ["--no-keys"])
        self._err = open(self.log, "wb")  # noqa: SIM115 - closed in stop() / kill()
        self.proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=self._err,
                                     start_new_session=True)

    def metric(self, name: str, **labels: str) -> float:
        return _value(_scrape(self.mport), name, **labels)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self.log.read_text()[-2000:])
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/healthz", timeout=2) as r:
            return bool(json.loads(r.read())["ready"]) and self.metric("fabric_connected") == 1

    def send_keys(self, lines: bytes) -> None:
        """Key log lines to its key listener (TLS), as the iRule sends them."""
        with socket.create_connection(("127.0.0.1", self.kport)) as raw, \
                _insecure_context().wrap_socket(raw, server_hostname="sensor") as s:
            s.sendall(lines)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) so far of the sensor's live processes: the parent and its workers."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # its process group (start_new_session)
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.read_text().splitlines()] if self.out.exists() else []

    def stop(self) -> list[dict[str, object]]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(60) == 0, self.log.read_text()[-2000:]
        finally:
            self.kill()
        return self.records()

    def kill(self) -> None:
        """SIGKILL to the sensor and its workers (its process group)."""
        with contextlib.suppress(ProcessLookupError):  # also workers left behind by a parent that is gone
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if not self._err.closed:
            self._err.close()


def _insecure_context() -> ssl.SSLContext:
    """A TLS client context that checks no certificate (and so loads no CA store: cheap to make)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect_from(lab: Lab, parity: int | None = None) -> socket.socket:
    """A TCP connection to nginx; with *parity*, from a client port of that parity."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        if parity is not None:
            port = port & ~1 | parity
        sock = socket.socket()
        try:
            sock.bind((lab.host_ip, port))
            sock.settimeout(10)
            sock.connect((lab.ns_ip, 443))
            return sock
        except OSError:
            sock.close()
    raise AssertionError("no free client port")


def tls_client(lab: Lab, keylog: Path, *, version: str = "1.3", cipher: str | None = None,
               parity: int | None = None) -> tuple[http.client.HTTPSConnection, int]:
    """A keep-alive HTTPS connection to nginx (TLS *version*, a TLS 1.2 *cipher*), its secrets appended to
    *keylog*; and its client port."""
    ctx = _insecure_context()
    ctx.keylog_filename = str(keylog)
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if cipher:
            ctx.set_ciphers(cipher)
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sock = connect_from(lab, parity)
    port = sock.getsockname()[1]
    conn = http.client.HTTPSConnection(HOSTNAME, 443, context=ctx, timeout=10)
    conn.sock = ctx.wrap_socket(sock, server_hostname=HOSTNAME)
    return conn, port
