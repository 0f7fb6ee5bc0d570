"""Structured, rate-limited logs on stderr (JSON or text), scrubbed of anything that looks like a secret.

Every record is keyed by its message template (``logger.info("worker %d restarted", i)`` has the key
``"worker %d restarted"``); more than ``rate`` records per second of one key are suppressed and the
count of suppressed records is added to the next one that gets through. Long hex strings (32+ digits:
key material, client randoms) are replaced by ``<hex:N>`` in the message and arguments.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import IO, Any

LOGGER = "tlsmirror"
_HEX = re.compile(r"[0-9A-Fa-f]{32,}")
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def scrub(text: str) -> str:
    """Replace runs of 32+ hex digits (possible key material) by their length."""
    return _HEX.sub(lambda m: f"<hex:{len(m.group(0))}>", text)


class RateLimit:
    """Token buckets by key: on average ``rate`` events per second of one key, in bursts of up to ``burst``.

    The shell's one rate limiter: the daemon's log filter and the key listener's messages both use it.
    :meth:`admit` says whether an event goes through and, when it does, how many of its key were
    suppressed since the last one that went through, so the caller can say so. Thread-safe; at most
    ``max_keys`` keys are remembered (then all are forgotten at once, which only ever admits more)."""

    def __init__(self, rate: float, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = max(1.0, 2 * rate) if burst is None else max(1.0, burst)
        self.suppressed_total = 0
        self._clock = clock
        self._max_keys = max_keys
        self._state: dict[Hashable, list[float]] = {}  # key -> [tokens, last time, suppressed]
        self._lock = threading.Lock()

    def admit(self, key: Hashable) -> int:
        """-1: suppress this event; else the number of events of ``key`` suppressed before it."""
        if self.rate <= 0:
            return 0
        now = self._clock()
        with self._lock:
            st = self._state.get(key)
            if st is None:
                if len(self._state) >= self._max_keys:
                    self._state.clear()
                st = self._state[key] = [self.burst, now, 0.0]
            st[0] = min(self.burst, st[0] + (now - st[1]) * self.rate)
            st[1] = now
            if st[0] < 1.0:
                st[2] += 1
                self.suppressed_total += 1
                return -1
            st[0] -= 1.0
            skipped = int(st[2])
            st[2] = 0
            return skipped


class RateLimitFilter(logging.Filter):
    """A log filter: at most ``rate`` records per second (burst ``2 * rate``) per message template; the
    next record through carries ``suppressed=N``."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.limit = RateLimit(rate)

    def filter(self, record: logging.LogRecord) -> bool:
        skipped = self.limit.admit((str(record.msg), record.levelno))
        if skipped < 0:
            return False
        if skipped:
            record.suppressed = skipped
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = scrub(v) if isinstance(v, str) else v
        if record.exc_info:
            out["error"] = scrub(self.formatException(record.exc_info).splitlines()[-1])
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        line = f"{t} {record.levelname.lower():7s} {record.name}: {scrub(record.getMessage())}"
        extras = [f"{k}={v}" for k, v in record.__dict__.items()
                  if k not in _RESERVED and not k.startswith("_")]
        if extras:
            line += " " + scrub(" ".join(extras))
        if record.exc_info:
            line += " | " + scrub(self.formatException(record.exc_info).splitlines()[-1])
        return line


def setup_logging(level: str = "info", fmt: str = "text", rate: float = 10.0,
                  stream: IO[str] | None = None) -> logging.Logger:
    """Configure the ``tlsmirror`` logger (idempotent: replaces its handlers)."""
    logger = logging.getLogger(LOGGER)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RateLimitFilter(rate))
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    logger.propagate = False
    return logger


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)
