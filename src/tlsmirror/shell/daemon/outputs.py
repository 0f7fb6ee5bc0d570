"""The daemon's exporters, built from the configuration: JSON lines and OTLP, with their redaction.

Each worker builds its own (:func:`build_worker_exporters`): JSON lines appended in whole batches to the
one shared ``output.jsonl`` (:mod:`~tlsmirror.shell.export.sharedjsonl`), OTLP with a spool of its own,
``<otlp.spool_dir>/worker<N>``, holding its share of ``otlp.spool_max_bytes``. :func:`build_exporters`
builds them for one process (exporters given to the parent)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from ..config import Config, read_token
from ..errors import InputError
from ..export import Exporter


def stats_of(ex: Exporter) -> Callable[[], dict[str, int]]:
    """A reader of the exporter's live counters, for the metrics."""
    return lambda: ex.stats


def jsonl_path(cfg: Config) -> str | None:
    """Where the JSON lines go: ``output.jsonl``, stdout when no exporter is configured, else nowhere."""
    path = cfg.output.jsonl
    if path is None and not cfg.otlp.endpoint:
        path = "-"
    return path


def worker_spool_dir(spool_dir: str, index: int) -> str:
    """Worker *index*'s OTLP spool: its own segment set (a restarted worker takes it over)."""
    return os.path.join(spool_dir, f"worker{index}")


def build_worker_exporters(cfg: Config, index: int, workers: int) -> list[Exporter]:
    """Worker *index*'s own exporters (of *workers*): the shared JSON lines file, OTLP with its own spool."""
    return build_exporters(cfg, worker=(index, max(1, workers)))


def build_exporters(cfg: Config, *, worker: tuple[int, int] | None = None) -> list[Exporter]:
    """The exporters the configuration asks for (JSON lines on stdout when none is configured); for
    ``worker=(index, workers)``, those of one worker process."""
    out: list[Exporter] = []
    path = jsonl_path(cfg)
    if path is not None:
        try:
            if worker is not None:
                from ..export.sharedjsonl import SharedJsonlExporter

                out.append(SharedJsonlExporter(path, max_bytes=cfg.output.max_bytes or None,
                                               backups=cfg.output.backups,
                                               websocket_records=cfg.output.websocket_records,
                                               graphql=graphql_options(cfg)))
            else:
                from ..export.jsonl import JsonlExporter

                out.append(JsonlExporter(path, max_bytes=cfg.output.max_bytes or None,
                                         backups=cfg.output.backups,
                                         websocket_records=cfg.output.websocket_records,
                                         graphql=graphql_options(cfg)))
        except ImportError:
            raise InputError("the JSON lines exporter is not available in this build") from None
        except OSError as exc:
            raise InputError(f"output.jsonl {path!r}: cannot open: {exc.strerror or exc}") from None
    if cfg.otlp.endpoint:
        try:
            from ..export.otlp import OtlpConfig, OtlpExporter
        except ImportError:
            raise InputError("the OTLP exporter is not available in this build; "
                             "remove otlp.endpoint") from None
        o = cfg.otlp
        spool_dir, spool_max = o.spool_dir, o.spool_max_bytes
        if worker is not None and spool_dir:
            spool_dir, spool_max = worker_spool_dir(spool_dir, worker[0]), max(1, spool_max // worker[1])
        wanted: dict[str, Any] = {
            "endpoint": o.endpoint, "protocol": o.protocol, "insecure": o.insecure, "ca": o.ca,
            "cert": o.cert, "key": o.key, "headers": dict(o.headers), "token": read_token(cfg),
            "token_header": o.token_header,
            "span_profile": o.span_profile, "service_name": o.service_name, "environment": o.environment,
            "spool_dir": spool_dir, "spool_max_bytes": spool_max, "batch_size": o.batch_size,
            "batch_timeout": o.batch_timeout, "flush_timeout": o.flush_timeout, "compression": o.compression,
            "redaction": _redaction(cfg),
            "sensitive": cfg.inventory.sensitive_spans, "sensitive_bodies": cfg.inventory.sensitive_bodies,
            "graphql": graphql_options(cfg),
        }
        known = ({f.name for f in dataclasses.fields(OtlpConfig)} if dataclasses.is_dataclass(OtlpConfig)
                 else set())
        kwargs = {k: v for k, v in wanted.items() if not known or k in known}
        out.append(OtlpExporter(OtlpConfig(**kwargs)))
    return out


def _redaction(cfg: Config) -> Any:
    from ...redact import RedactionConfig

    o = cfg.otlp
    base = RedactionConfig()
    return dataclasses.replace(
        base, enabled=o.redact, headers=frozenset(base.headers) | {h.lower() for h in o.redact_headers},
        fields=frozenset(base.fields) | set(o.redact_fields),
        patterns=tuple(base.patterns) + tuple(o.redact_patterns))


def graphql_options(cfg: Config) -> Any:
    """The ``http.graphql_*`` keys as :class:`~tlsmirror.http.graphql.GraphqlOptions`."""
    from ...http.graphql import GraphqlOptions

    h = cfg.http
    return GraphqlOptions(tuple(h.graphql_paths), h.graphql_max_fields, h.graphql_max_errors)
