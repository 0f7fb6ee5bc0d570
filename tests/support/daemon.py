"""A daemon running in this process on the bundled sample, and what tests read off it (exports, metrics)."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.paths import REPO
from tests.support.pcapwriter import pcap_bytes
from tlsmirror.calls import ApiCall
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.shell.config import Config, load_config
from tlsmirror.shell.daemon.metrics import parse_metrics
from tlsmirror.shell.daemon.supervisor import Daemon, load_preload
from tlsmirror.shell.offline.pcapfile import CapturedFrame, read_capture

ROOT = REPO
SAMPLE = str(ROOT / "samples" / "api-mixed.pcap")
KEYLOG = str(ROOT / "samples" / "api-mixed.keylog")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TLSMIRROR_")}
ENV["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + ENV.get("PYTHONPATH", "")


class ListExporter:
    """A tiny Exporter for tests of the daemon itself."""

    def __init__(self) -> None:
        self.calls: list[ApiCall] = []
        self.stats: dict[str, int] = {"exported": 0}
        self.reopened = 0
        self.closed = False

    def export(self, call: ApiCall) -> None:
        self.calls.append(call)
        self.stats["exported"] += 1

    def flush(self, timeout: float) -> bool:
        return True

    def reopen(self) -> None:
        self.reopened += 1

    def close(self) -> None:
        self.closed = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return parse_metrics(r.read().decode())


def value(m: dict[str, Any], name: str, **labels: str) -> float:
    series = m.get(f"tlsmirror_{name}") or m.get(f"tlsmirror_{name}_total") or {}
    return float(series.get(tuple(sorted(labels.items())), 0.0))


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def expected_requests() -> set[tuple[int, float]]:
    """(client port, request time) of every exchange, from one engine over the sample."""
    e = Engine(EngineConfig(http=True))
    e.add_secrets(load_preload([KEYLOG]), 0.0)
    out: set[tuple[int, float]] = set()
    for item in read_capture(SAMPLE):
        assert type(item) is CapturedFrame
        for ev in e.feed_frame(item.linktype, item.data, item.ts):
            if type(ev) is ApiCall:
                assert ev.exchange.request_ts is not None
                out.add((ev.connection.client_port, round(ev.exchange.request_ts, 6)))
    assert len(out) == 60
    return out


def rewrite_sample(path: Path, *, stretch: float = 1.0, drop_fin: bool = False) -> str:
    """The sample with its time line stretched, optionally without FIN/RST segments (flows stay open)."""
    frames = []
    t0 = None
    for item in read_capture(SAMPLE):
        assert type(item) is CapturedFrame
        data = item.data
        if drop_fin and struct.unpack_from("!H", data, 12)[0] == 0x0800:
            ihl = (data[14] & 0x0F) * 4
            if data[14 + ihl + 13] & 0x05:  # FIN or RST
                continue
        t0 = item.ts if t0 is None else t0
        frames.append((t0 + (item.ts - t0) * stretch, data))
    path.write_bytes(pcap_bytes(frames))
    return str(path)


def config(**flags: Any) -> Config:
    base = {"keys.enabled": False, "metrics.port": 0, "capture.workers": 2, "log.level": "warning"}
    base.update(flags)
    return load_config(None, env={}, flags=base, use_default_path=False)


class Running:
    """A Daemon run in a thread (signals stay with pytest's main thread)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.error: BaseException | None = None
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.rc = self.daemon.run()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "daemon did not stop"
        if self.error is not None:
            raise self.error
