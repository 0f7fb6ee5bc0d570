"""The daemon is ready (and opens its key listener) only once capture is attached on every interface."""

from __future__ import annotations

import time

from tests.support.daemon import KEYLOG, SAMPLE, ListExporter, Running, config
from tlsmirror.shell.daemon.metrics import MetricsState
from tlsmirror.shell.daemon.supervisor import Daemon, load_preload


def test_health_says_starting_until_capture_is_attached() -> None:
    state = MetricsState(2)
    state.alive = {0: True, 1: True}
    h = state.health(0)
    assert (h["status"], h["ready"]) == ("starting", False)
    assert h["reasons"][0] == "capture is not attached on every interface yet"
    state.ready = True
    assert (state.health(0)["status"], state.health(0)["ready"]) == ("ok", True)


def test_the_key_listener_opens_after_every_worker_has_its_capture() -> None:
    cfg = config(**{"capture.pcap": SAMPLE, "capture.pcap_linger": 30, "keys.enabled": True, "keys.port": 0,
                    "keys.tls": False, "keys.host": "127.0.0.1"})
    d = Daemon(cfg, exporters=[ListExporter()], preload=load_preload([KEYLOG]))
    run = Running(d)
    try:
        deadline = time.monotonic() + 30
        while d.keyserver is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert d.keyserver is not None, run.error
        assert d.handles and all(h.ready for h in d.handles)  # every capture attached before it opened
        assert d.wait_ready(10) and d.state.ready and d.key_port
    finally:
        d.request_stop()
        run.join(30)
