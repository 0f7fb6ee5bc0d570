"""The whole doctor run: every check, the slow ones in parallel during the wait."""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

from ..config import Config
from .exporter import check_exporter, otlp_address, probe_otlp
from .fabric import probe_fabric
from .host import check_build, check_config, check_service
from .keys import check_keys, probe_key_listener
from .metrics import Scrape, check_drops, check_match, check_memory, check_metrics, check_outcomes, scrape
from .mirror import PacketSample, check_interface, check_mirror, host_addresses, read_interface, sample_interface
from .result import FAIL, SKIP, WARN, DoctorOptions, Result, Task, hostport, local_host, see


def _metrics_url(cfg: Config, given: str | None) -> tuple[str | None, str]:
    if given:
        return given, ""
    m = cfg.metrics
    if not m.enabled:
        return None, "metrics are off (metrics.enabled: false): counters cannot be read"
    if m.port == 0:
        return None, "metrics.port is 0 (any free port): give the sensor's metrics address with --url"
    return f"http://{hostport(local_host(m.host), m.port)}", ""


def _sensor_ports(cfg: Config) -> frozenset[int]:
    ports = set()
    if cfg.keys.enabled and cfg.keys.port:
        ports.add(cfg.keys.port)
    if cfg.metrics.enabled and cfg.metrics.port:
        ports.add(cfg.metrics.port)
    if cfg.otlp.endpoint:
        addr = otlp_address(cfg.otlp.endpoint, cfg.otlp.protocol, cfg.otlp.insecure)
        if addr is not None:
            ports.add(addr[1])
    return frozenset(ports)


def _sample(name: str, wait: float, ports: frozenset[int], timeout: float) -> PacketSample | str:
    return sample_interface(name, wait, host_addresses(min(timeout, 2.0)), ports)


def run_doctor(opts: DoctorOptions) -> list[Result]:
    """Run every check; the results in display order."""
    timeout = max(0.2, opts.timeout)
    wait = max(0.0, min(opts.wait, 60.0))
    cfg, config_result = check_config(opts)
    url, why = _metrics_url(cfg, opts.url)
    interfaces = list(opts.interfaces) if opts.interfaces else list(cfg.capture.interfaces)
    captured = set(cfg.capture.interfaces)

    tasks: dict[str, Task] = {"service": Task(lambda: check_service(opts.unit, timeout))}
    if cfg.keys.enabled:
        tasks["keys"] = Task(lambda: probe_key_listener(cfg, timeout))
    if cfg.otlp.endpoint:
        tasks["otlp"] = Task(lambda: probe_otlp(cfg, timeout))
    if cfg.keys.fabric:
        tasks["fabric"] = Task(lambda: probe_fabric(cfg, timeout))

    s0: Scrape | None = None
    error: str | None = None
    if url is not None:
        try:
            s0 = scrape(url, timeout)
        except OSError as exc:
            error = str(exc)
    t0 = time.monotonic()
    states0 = {name: read_interface(name) for name in interfaces}
    if opts.sample and interfaces and wait > 0:
        ports = _sensor_ports(cfg)
        for name in interfaces:
            if states0[name].exists:
                tasks["sample:" + name] = Task(functools.partial(_sample, name, wait, ports, timeout))
    if wait > 0:
        time.sleep(max(0.0, t0 + wait - time.monotonic()))
    states1 = {name: read_interface(name) for name in interfaces}
    elapsed = time.monotonic() - t0
    s1: Scrape | None = None
    if s0 is not None and url is not None and wait > 0:
        with contextlib.suppress(OSError):
            s1 = scrape(url, timeout)
    deadline = time.monotonic() + timeout + 1.0

    def collect(key: str, what: str) -> Any:
        task = tasks.get(key)
        if task is None:
            return None
        try:
            done, value = task.get(deadline)
        except Exception as exc:  # a bug in one check must not hide the others
            return Result(what, WARN, f"the check failed: {type(exc).__name__}: {exc}")
        if not done:
            return Result(what, WARN, f"no answer within {timeout:g} s (check timed out)")
        return value

    results = [check_build(), config_result, collect("service", "service"), check_metrics(url, s0, error, why)]
    wait_s = round(elapsed, 1) if wait > 0 else 0.0
    if not interfaces:
        if cfg.capture.pcap:
            results.append(Result("capture", SKIP, f"the sensor reads a capture file ({cfg.capture.pcap}): "
                                                   "no interface to check (give -i IFACE to check one)"))
        else:
            results.append(Result("capture", FAIL, "no capture interface configured", [
                "set capture.interfaces (install.sh -i IFACE) to the interface the mirror arrives on",
                see("no-packets")]))
    for name in interfaces:
        before = states0[name]
        results.append(check_interface(name, before, states1.get(name) if wait > 0 else None, wait_s,
                                       captured=name in captured, s0=s0, s1=s1, shared=len(captured) > 1,
                                       stats_interval=cfg.metrics.stats_interval))
        sample = collect("sample:" + name, f"mirror {name}") if before.exists else None
        if isinstance(sample, Result):
            results.append(sample)
        else:
            if sample is None and before.exists and opts.sample and wait == 0:
                sample = "no sample with --wait 0"
            results.append(check_mirror(name, sample, wait))
    key_probe = collect("keys", "key listener")
    results.append(key_probe if key_probe is not None else
                   Result("key listener", SKIP, "the key listener is off (keys.enabled: false)"))
    if cfg.keys.fabric:
        results.append(collect("fabric", "key fabric"))
    results.append(check_keys(cfg, s0, s1, wait_s))
    results.append(check_match(s0, s1))
    results.append(check_outcomes(s0, s1))
    otlp = collect("otlp", "exporter")
    results.append(check_exporter(cfg, otlp, s0, s1, wait_s))
    results.append(check_drops(s0, s1, wait_s))
    results.append(check_memory(url, s0, s1))
    return [r for r in results if r is not None]
