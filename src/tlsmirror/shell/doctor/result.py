"""Results, their order of gravity, the words they are written with, and the two ways of printing them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
_RANK = {OK: 0, SKIP: 0, WARN: 1, FAIL: 2}

DOC = "docs/troubleshooting.md"
DROP_RATIO = 0.001  # drops above 0.1 % of packets / calls: WARN
MATCH_RATIO = 0.90  # decrypted / (decrypted + no_key) below this: WARN

@dataclass
class Result:
    """One checked thing: ``status`` is OK, WARN, FAIL or SKIP; ``advice`` says what to do."""

    check: str
    status: str
    message: str
    advice: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "message": self.message, "advice": list(self.advice),
                "data": dict(self.data)}


@dataclass
class DoctorOptions:
    """What ``tlsmirror doctor`` was asked to do."""

    config: str | None = None  # YAML file (None: $TLSMIRROR_CONFIG, else /etc/tlsmirror/config.yaml)
    url: str | None = None  # metrics server (None: from metrics.host/metrics.port of the configuration)
    wait: float = 2.0  # seconds between the two readings of counters
    interfaces: list[str] | None = None  # instead of capture.interfaces
    unit: str = "tlsmirror"  # systemd unit
    timeout: float = 3.0  # per network operation
    sample: bool = True  # sample packets on the capture interfaces (needs CAP_NET_RAW)
    env: Mapping[str, str] | None = None  # environment for the configuration (None: os.environ)


def worst(results: list[Result]) -> str:
    return max((r.status for r in results), key=lambda s: _RANK[s], default=OK)


def exit_code(results: list[Result]) -> int:
    """0 when nothing failed, 1 otherwise."""
    return 1 if any(r.status == FAIL for r in results) else 0


def num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,.2f}"


def plural(x: float, word: str) -> str:
    """``1 packet``, ``2 packets``."""
    return f"{num(x)} {word}" + ("" if x == 1 else "s")


def size_text(x: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if x >= size:
            return f"{x / size:.1f} {unit}"
    return f"{int(x)} B"


def percent(part: float, whole: float) -> str:
    if not whole:
        return "0%"
    p = 100.0 * part / whole
    return f"{p:.0f}%" if p >= 10 or p == 0 else f"{p:.2g}%"


def see(anchor: str) -> str:
    return f"details: {DOC}#{anchor}"


def local_host(host: str) -> str:
    """Where to connect to reach a server bound to *host* from this machine."""
    if host in ("", "0.0.0.0", "*"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "::1"
    return host.strip("[]")


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Task:
    """A function run in a daemon thread (it can never keep the process alive), with a deadline."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._fn = fn
        threading.Thread(target=self._run, daemon=True, name="doctor").start()

    def _run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:  # reported by get()
            self.error = exc
        finally:
            self._done.set()

    def get(self, deadline: float) -> tuple[bool, Any]:
        """(finished, value); re-raises what the function raised."""
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            return False, None
        if self.error is not None:
            raise self.error
        return True, self.value


def render_text(results: list[Result]) -> str:
    width = max((len(r.check) for r in results), default=8)
    lines = []
    for r in results:
        lines.append(f"{r.status:<4}  {r.check:<{width}}  {r.message}")
        if r.status != OK:
            lines.extend(f"{'':4}  {'':<{width}}  -> {a}" for a in r.advice)
    counts = {s: sum(1 for r in results if r.status == s) for s in (OK, WARN, FAIL, SKIP)}
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no checks")
    return "\n".join(lines) + "\n"


def render_json(results: list[Result]) -> str:
    doc = {"status": worst(results), "exit_code": exit_code(results),
           "counts": {s: sum(1 for r in results if r.status == s) for s in (OK, WARN, FAIL, SKIP)},
           "checks": [r.as_dict() for r in results]}
    return json.dumps(doc, indent=2, default=str) + "\n"
