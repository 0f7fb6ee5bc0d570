"""Capture real traffic with tcpdump for end-to-end tests.

``Sniffer(path, port)`` starts ``tcpdump -U -w path`` on ``lo`` filtered to one TCP port, returns once
tcpdump says it is listening, and :meth:`Sniffer.stop` waits until the file stops growing (every
packet written) before stopping tcpdump with SIGINT.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from types import TracebackType


def tcpdump_usable() -> str | None:
    """None when tcpdump can capture here, else why not."""
    if shutil.which("tcpdump") is None:
        return "tcpdump not installed"
    if os.geteuid() != 0:
        return "capturing needs root"
    return None


class Sniffer:
    def __init__(self, path: str, port: int, *, iface: str = "lo", ready_timeout: float = 10.0,
                 buffer_kib: int = 65536) -> None:
        self.path = path
        self.port = port
        self.iface = iface
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", iface, "--immediate-mode", "-U", "-B", str(buffer_kib), "-s", "0", "-n",
             "-w", path, f"tcp port {port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._err: list[str] = []
        ready = threading.Event()

        def read_stderr() -> None:
            assert self.proc.stderr is not None
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self._err.append(line)
                if "listening on" in line:
                    ready.set()
            ready.set()  # tcpdump ended

        self._reader = threading.Thread(target=read_stderr, daemon=True)
        self._reader.start()
        if not ready.wait(ready_timeout) or self.proc.poll() is not None:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("tcpdump did not start: " + " | ".join(self._err[-3:]))

    def stop(self, settle: float = 0.3, timeout: float = 5.0) -> str:
        """Wait until the capture file has not grown for ``settle`` seconds, stop tcpdump, return the path."""
        deadline = time.monotonic() + timeout
        last = -1
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            now = time.monotonic()
            if size != last:
                last, stable_since = size, now
            elif now - stable_since >= settle:
                break
            time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(1.0)
        return self.path

    @property
    def messages(self) -> list[str]:
        return list(self._err)

    def __enter__(self) -> Sniffer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.stop(settle=0.0, timeout=2.0)
