"""A real redis-server for a test: a free port on 127.0.0.1, a temporary directory, no persistence.

Skips the test when redis-server is not installed (CI installs it, .ci/run). ``stop()``/``start()``
take it away and bring it back on the same port (empty: nothing is saved), ``pause()``/``resume()``
make it stop answering without closing connections (a slow or hung Redis).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, workdir: Path, *, args: tuple[str, ...] = (), password: str | None = None) -> None:
        if not os.path.exists(REDIS_SERVER):
            pytest.skip("redis-server is not installed")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.args = args
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"), *self.args]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                self.client().ping()
                return self
            except Exception as exc:
                if self.proc.poll() is not None:
                    log = (self.dir / "redis.log").read_text()[-500:]
                    raise RuntimeError(f"redis-server exited: {log}") from exc
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 20 s")

    def client(self, **kwargs: Any) -> Any:
        import redis

        if self.password and "password" not in kwargs:
            kwargs["password"] = self.password
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kwargs)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
