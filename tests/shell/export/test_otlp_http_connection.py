"""OTLP/HTTP on one kept-alive connection (issue 15, point 17): a real HTTP receiver records the client
port of every TCP connection it accepts; several batches must share one, over plaintext and TLS (one
handshake), and a receiver restart costs one new connection, not one per batch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.otlp_receiver import HttpReceiver, make_cert, sample_api_calls
from tlsmirror.shell.export.otlp import OtlpConfig, OtlpExporter


def _config(endpoint: str, **kw: Any) -> OtlpConfig:
    base: dict[str, Any] = dict(endpoint=endpoint, protocol="http", batch_size=4, batch_timeout=0.02,
                                backoff_initial=0.05, backoff_max=0.2, flush_timeout=5.0, timeout=5.0)
    base.update(kw)
    return OtlpConfig(**base)


def _send_in_batches(exp: OtlpExporter, calls: list[Any], per_round: int) -> None:
    for i in range(0, len(calls), per_round):
        for c in calls[i:i + per_round]:
            exp.export(c)
        assert exp.flush(10)  # each round is its own request(s): the connection idles between them


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_batches_share_one_connection(tls: bool, tmp_path: Path) -> None:
    calls = sample_api_calls()[:24]
    kw: dict[str, Any] = {}
    keypair = None
    if tls:
        cert, key = make_cert()
        (tmp_path / "ca.pem").write_bytes(cert)
        keypair = (cert, key)
        kw = dict(insecure=False, ca=str(tmp_path / "ca.pem"))
    with HttpReceiver(tls=keypair) as rcv:
        exp = OtlpExporter(_config(rcv.endpoint, **kw))
        try:
            _send_in_batches(exp, calls, 4)
        finally:
            exp.close()
        assert rcv.span_count() == 24
        assert len(rcv.requests) >= 6  # six rounds, at least one request each
        assert len(rcv.connections) == 1, rcv.connections
        assert {r.client_port for r in rcv.requests} == set(rcv.connections)
    assert exp.stats["exported"] == 24 and exp.stats["retries"] == 0


def test_tls_verification_still_refuses_an_unknown_ca() -> None:
    with HttpReceiver(tls=make_cert()) as rcv:
        exp = OtlpExporter(_config(rcv.endpoint, insecure=False, flush_timeout=1.0))  # system trust store only
        try:
            exp.export(sample_api_calls()[0])
            assert not exp.flush(1.0)
        finally:
            exp.close()
        assert rcv.span_count() == 0 and exp.stats["retries"] >= 1


def test_a_receiver_restart_costs_one_new_connection() -> None:
    calls = sample_api_calls()[:32]
    with HttpReceiver() as rcv:
        exp = OtlpExporter(_config(rcv.endpoint))
        try:
            _send_in_batches(exp, calls[:16], 4)
            rcv.stop()  # closes the kept connection too
            time.sleep(0.1)
            rcv.start()  # same port
            _send_in_batches(exp, calls[16:], 4)
        finally:
            exp.close()
        assert rcv.span_count() == 32
        assert len(rcv.connections) == 2, rcv.connections
