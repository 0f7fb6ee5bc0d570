"""OtlpExporter against real OTLP receivers (gRPC and HTTP): content, redaction, retries, spool."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.otlp_receiver import (
    HttpReceiver,
    _Receiver,
    attributes,
    make_cert,
    receiver,
    sample_api_calls,
)
from tests.support.paths import REPO
from tlsmirror.calls import ApiCall, Connection
from tlsmirror.http.events import Body, Exchange
from tlsmirror.redact import RedactionConfig
from tlsmirror.shell.errors import InputError
from tlsmirror.shell.export.otlp import OtlpConfig, OtlpExporter
from tlsmirror.shell.export.spool import DiskSpool

TOKEN = "tok-9f8e7d6c5b4a-refresh"
ROOT = REPO


def config(rcv: _Receiver, **kw: Any) -> OtlpConfig:
    base: dict[str, Any] = dict(endpoint=rcv.endpoint, protocol=rcv.protocol, token=TOKEN, batch_size=8,
                                batch_timeout=0.02, backoff_initial=0.05, backoff_max=0.2, flush_timeout=2.0,
                                timeout=3.0, service_name="shop-api", environment="test",
                                host_name="sensor-1", headers={"x-extra": "1"})
    base.update(kw)
    return OtlpConfig(**base)


@pytest.fixture(params=["grpc", "http"])
def rcv(request: pytest.FixtureRequest) -> Iterator[_Receiver]:
    r = receiver(request.param)
    r.start()
    yield r
    r.stop()


def request_id(span: Any) -> str:
    a = attributes(span.attributes)
    v = a.get("http.request.header.x-request-id")
    return v[0] if isinstance(v, tuple) else v


def ids(calls: list[ApiCall]) -> list[str]:
    return [dict(c.exchange.request_headers)["X-Request-Id"] for c in calls]


@pytest.mark.parametrize("profile", ["hypertrace", "semconv"])
def test_spans_carry_the_exchanges(rcv: _Receiver, profile: str) -> None:
    calls = sample_api_calls()
    exp = OtlpExporter(config(rcv, span_profile=profile))
    try:
        for c in calls:
            exp.export(c)
        assert exp.flush(10)
    finally:
        exp.close()
    spans = rcv.spans()
    assert [request_id(s) for s in spans] == ids(calls)  # each exactly once, in order
    for call, span in zip(calls, spans, strict=True):
        ex, conn = call.exchange, call.connection
        a = attributes(span.attributes)
        assert span.kind == span.SPAN_KIND_SERVER
        assert span.start_time_unix_nano == round(ex.request_ts * 1e9)
        assert span.end_time_unix_nano == round(ex.response_end_ts * 1e9)
        assert len(span.trace_id) == 16 and len(span.span_id) == 8 and span.status.code == 0
        url = f"https://{ex.authority}{ex.path}"
        if profile == "hypertrace":
            assert (a["http.method"], a["http.url"], a["http.status_code"], a["net.peer.port"]) == \
                (ex.method, url, ex.status, conn.client_port)
            assert all(a[f"http.request.header.{k.lower()}"] == v for k, v in ex.request_headers)
        else:
            assert (a["http.request.method"], a["url.full"], a["http.response.status_code"],
                    a["client.port"]) == (ex.method, url, ex.status, conn.client_port)
            assert all(a[f"http.request.header.{k.lower()}"] == (v,) for k, v in ex.request_headers)
        assert a["tls.cipher"] == conn.tls_suite
        for side, body in (("request", ex.request_body), ("response", ex.response_body)):
            assert a.get(f"http.{side}.body") == (body.data.decode() if body else None)
    for req in rcv.requests:
        assert req.headers["x-traceable-refresh-token"] == TOKEN and req.headers["x-extra"] == "1"
        res = attributes(req.request.resource_spans[0].resource.attributes)
        assert (res["service.name"], res["deployment.environment"], res["host.name"]) == \
            ("shop-api", "test", "sensor-1")
        assert res["telemetry.sdk.language"] == "python"
    assert exp.stats["exported"] == 60 and exp.stats["batches"] == len(rcv.requests)
    assert exp.stats["dropped"] == exp.stats["failed"] == 0


def secret_call(n: int) -> ApiCall:
    conn = Connection(99, "10.1.1.1", 40000 + n, "10.1.1.2", 443, True, "TLS1.2", "X", "api.test", None)
    body = b'{"user": "ann", "auth": {"password": "pw-SECRET-1", "otp": [1, 2]}, "card": "4111111111111111"}'
    ex = Exchange("1.1", "POST", None, "api.test", f"/login?session=SESS-SECRET-2&n={n}", 200, "OK",
                  (("Host", "api.test"), ("Authorization", "Bearer BEARER-SECRET-3"),
                   ("Cookie", "sid=COOKIE-SECRET-4"), ("X-Api-Key", "KEY-SECRET-5"),
                   ("Content-Type", "application/json"), ("X-Request-Id", f"s-{n}")),
                  (("Set-Cookie", "sid=SETCOOKIE-SECRET-6; HttpOnly"), ("Content-Type", "application/json")),
                  (), (), Body(body, len(body), len(body), False),
                  Body(b'{"token": "TOKEN-SECRET-7"}', 28, 28, False),
                  1.0, 1.1, 1.2, 1.3, None, frozenset())
    return ApiCall(conn, ex)


def test_redaction_holds_on_the_wire(rcv: _Receiver) -> None:
    red = RedactionConfig(fields=frozenset({"password", "session", "token"}), patterns=(r"\b\d{16}\b",))
    exp = OtlpExporter(config(rcv, redaction=red))
    for i in range(5):
        exp.export(secret_call(i))
    for c in sample_api_calls()[:5]:
        exp.export(c)
    assert exp.flush(10)
    exp.close()
    assert rcv.span_count() == 10
    raw = b"".join(rcv.raw())
    for secret in (b"pw-SECRET-1", b"SESS-SECRET-2", b"BEARER-SECRET-3", b"COOKIE-SECRET-4", b"KEY-SECRET-5",
                   b"SETCOOKIE-SECRET-6", b"TOKEN-SECRET-7", b"4111111111111111", b"SECRET"):
        assert secret not in raw
    assert b"[REDACTED]" in raw and b"ann" in raw  # the rest is there


def test_receiver_down_then_up_every_span_once_in_order(rcv: _Receiver, tmp_path: Path) -> None:
    calls = sample_api_calls()
    rcv.stop()
    spool_dir = str(tmp_path / "spool") if rcv.protocol == "grpc" else None  # disk and memory spool
    exp = OtlpExporter(config(rcv, spool_dir=spool_dir, batch_size=5))
    try:
        t0 = time.monotonic()
        for i, c in enumerate(calls):
            exp.export(c)
            if i % 20 == 19:
                time.sleep(0.3)
        assert time.monotonic() - t0 < 2.0  # export() never waited on the receiver
        deadline = time.monotonic() + 5
        while exp.stats["spooled"] < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert exp.stats["retries"] >= 1 and exp.stats["spooled"] >= 50
        rcv.start()
        assert exp.flush(15)
    finally:
        exp.close()
    assert [request_id(s) for s in rcv.spans()] == ids(calls)
    assert exp.stats["exported"] == 60 and exp.stats["dropped"] == 0 and exp.stats["queue_depth"] == 0


@pytest.mark.slow
def test_receiver_down_for_20_seconds_every_span_arrives_once(tmp_path: Path) -> None:
    """The issue's outage: the receiver is away for 20 s while the sensor keeps exporting."""
    calls = sample_api_calls()
    with receiver("grpc") as rcv:
        rcv.stop()
        exp = OtlpExporter(config(rcv, spool_dir=str(tmp_path / "spool"), batch_size=4, backoff_max=2.0))
        try:
            t0 = time.monotonic()
            for i, c in enumerate(calls):  # spread over the outage
                exp.export(c)
                time.sleep(max(0.0, t0 + (i + 1) * 20.0 / len(calls) - time.monotonic()))
            assert exp.stats["exported"] == 0 and exp.stats["retries"] >= 1
            rcv.start()
            assert exp.flush(30)
        finally:
            exp.close()
        got = [request_id(s) for s in rcv.spans()]
    assert got == ids(calls)  # every span once, in order
    assert exp.stats["exported"] == 60 and exp.stats["dropped"] == 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_throttling_hints_honoured(protocol: str) -> None:
    with receiver(protocol) as rcv:
        hint = 0.4 if protocol == "grpc" else 1.0  # Retry-After is whole seconds
        rcv.fail_next(2, retry_after=hint, code="exhausted")
        exp = OtlpExporter(config(rcv, backoff_initial=0.01, backoff_max=0.01))
        t0 = time.monotonic()
        exp.export(sample_api_calls()[0])
        assert exp.flush(10)
        took = time.monotonic() - t0
        exp.close()
        assert took >= 2 * hint * 0.95 and exp.stats["retries"] == 2 and rcv.attempts == 3
        assert rcv.span_count() == 1


def test_non_retryable_counted_failed_and_partial_success(rcv: _Receiver) -> None:
    calls = sample_api_calls()[:16]
    rcv.fail_next(1, code="invalid")
    rcv.partial_next(3, "3 spans too old")
    exp = OtlpExporter(config(rcv, batch_size=8))
    for c in calls:
        exp.export(c)
    assert exp.flush(10)
    exp.close()
    s = exp.stats
    assert (s["failed"], s["partial_rejected"], s["exported"], s["batches"]) == (8, 3, 5, 1)


def test_spool_survives_a_new_exporter(tmp_path: Path) -> None:
    calls = sample_api_calls()[:30]
    with receiver("grpc") as rcv:
        rcv.stop()
        exp = OtlpExporter(config(rcv, spool_dir=str(tmp_path), flush_timeout=0.3))
        for c in calls:
            exp.export(c)
        exp.close()
        assert exp.stats["exported"] == 0 and exp.stats["dropped"] == 0
        assert any(p.suffix == ".seg" for p in tmp_path.iterdir())
        rcv.start()
        exp2 = OtlpExporter(config(rcv, spool_dir=str(tmp_path)))
        later = sample_api_calls()[30:35]
        for c in later:
            exp2.export(c)
        assert exp2.flush(10)
        exp2.close()
        assert [request_id(s) for s in rcv.spans()] == ids(calls + later)
        assert exp2.stats["exported"] == 35


CHILD = """
import os, sys, time
sys.path[:0] = [{root!r}, {src!r}]
from tests.support.otlp_receiver import sample_api_calls
from tlsmirror.shell.export.otlp import OtlpConfig, OtlpExporter
exp = OtlpExporter(OtlpConfig(endpoint={endpoint!r}, protocol="http", spool_dir={spool!r}, batch_size=4,
                              batch_timeout=0.02, backoff_initial=0.05, backoff_max=0.1, spool_fsync="never"))
for c in sample_api_calls()[:20]:
    exp.export(c)
deadline = time.monotonic() + 20
while exp.stats["spooled"] < 20 and time.monotonic() < deadline:
    time.sleep(0.01)
print(exp.stats["spooled"], flush=True)
os._exit(0)  # a crash: no close, no flush
"""


def test_spool_survives_a_process_crash(tmp_path: Path) -> None:
    with receiver("http") as rcv:
        rcv.stop()
        code = CHILD.format(root=str(ROOT), src=str(ROOT / "src"), endpoint=rcv.endpoint, spool=str(tmp_path))
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                             timeout=60, check=True)
        assert out.stdout.strip() == "20", out.stderr
        rcv.start()
        exp = OtlpExporter(config(rcv, spool_dir=str(tmp_path)))
        assert exp.flush(10)
        exp.close()
        assert [request_id(s) for s in rcv.spans()] == ids(sample_api_calls()[:20])


def test_spool_limit_drops_newest_and_counts(tmp_path: Path) -> None:
    calls = sample_api_calls()
    with receiver("grpc") as rcv:
        rcv.stop()
        exp = OtlpExporter(config(rcv, spool_dir=str(tmp_path), spool_max_bytes=16 << 10, batch_size=2,
                                  flush_timeout=0.2))
        for c in calls:
            exp.export(c)
        deadline = time.monotonic() + 5
        while exp.stats["spooled"] + exp.stats["dropped"] < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        dropped = exp.stats["dropped"]
        assert 0 < dropped < 60 and exp.stats["spooled"] + dropped == 60
        assert sum(p.stat().st_size for p in tmp_path.glob("*.seg")) <= 16 << 10
        rcv.start()
        assert exp.flush(10)
        exp.close()
        got = [request_id(s) for s in rcv.spans()]
        assert got == ids(calls)[: 60 - dropped]  # the oldest kept, in order
        assert exp.stats["exported"] == 60 - dropped


def test_token_never_logged_or_repr(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with receiver("http") as rcv:
        cfg = config(rcv, headers={"authorization": "Basic HEADER-SECRET"}, flush_timeout=0.5)
        assert TOKEN not in repr(cfg) and TOKEN not in str(cfg) and "HEADER-SECRET" not in repr(cfg)
        rcv.fail_next(2)
        rcv.partial_next(1, "one bad")
        exp = OtlpExporter(cfg)
        assert TOKEN not in repr(exp)
        for c in sample_api_calls()[:10]:
            exp.export(c)
        assert exp.flush(10)
        rcv.stop()
        exp.export(sample_api_calls()[10])
        time.sleep(0.3)
        exp.close()
        assert all(r.headers["x-traceable-refresh-token"] == TOKEN for r in rcv.requests)
    assert "retrying" in caplog.text and "rejected 1" in caplog.text
    assert TOKEN not in caplog.text and "HEADER-SECRET" not in caplog.text


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tls_with_ca_bundle(protocol: str, tmp_path: Path) -> None:
    cert, key = make_cert()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(cert)
    with receiver(protocol, tls=(cert, key)) as rcv:
        endpoint = rcv.endpoint if protocol == "http" else f"https://{rcv.endpoint}"
        exp = OtlpExporter(config(rcv, endpoint=endpoint, insecure=False, ca=str(ca), compression="none"))
        exp.export(sample_api_calls()[0])
        assert exp.flush(10)
        exp.close()
        assert rcv.span_count() == 1


def test_invalid_settings() -> None:
    rcv = HttpReceiver()
    with pytest.raises(InputError, match="span_profile"):
        OtlpExporter(config(rcv, span_profile="zipkin"))
    with pytest.raises(InputError, match="protocol"):
        OtlpExporter(config(rcv, protocol="thrift"))
    with pytest.raises(InputError, match="does not compile"):
        OtlpExporter(config(rcv, redaction=RedactionConfig(patterns=("(",))))
    with pytest.raises(InputError, match="cannot read OTLP CA"):
        OtlpExporter(config(rcv, endpoint="127.0.0.1:1", insecure=False, ca="/nonexistent/ca.pem"))


def test_spool_in_use_and_torn_tail(tmp_path: Path) -> None:
    sp = DiskSpool(str(tmp_path), 1 << 20)
    assert sp.append(b"one", 1) and sp.append(b"two", 2)
    with pytest.raises(InputError, match="in use"):
        OtlpExporter(OtlpConfig(endpoint="127.0.0.1:1", spool_dir=str(tmp_path)))
    rec = sp.peek()
    assert rec is not None and rec.payload == b"one"
    sp.ack()
    sp.close()
    seg = next(tmp_path.glob("*.seg"))
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x01\x00\x00")  # a torn record header
    sp = DiskSpool(str(tmp_path), 1 << 20)
    assert len(sp) == 1 and sp.spans == 2
    rec = sp.peek()
    assert rec is not None and rec.payload == b"two"
    sp.ack()
    assert sp.peek() is None and sp.append(b"three", 3)
    sp.close()
    sp = DiskSpool(str(tmp_path), 1 << 20)
    rec = sp.peek()
    assert rec is not None and rec.payload == b"three" and rec.count == 3
    sp.close()
    os.sync()
