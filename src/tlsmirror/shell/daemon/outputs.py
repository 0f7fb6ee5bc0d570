"""The daemon's exporters, built from the configuration: JSON lines and OTLP, with their redaction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..config import Config, read_token
from ..errors import InputError
from ..export import Exporter


def stats_of(ex: Exporter) -> Callable[[], dict[str, int]]:
    """A reader of the exporter's live counters, for the metrics."""
    return lambda: ex.stats


def build_exporters(cfg: Config) -> list[Exporter]:
    """The exporters the configuration asks for (JSON lines on stdout when none is configured)."""
    out: list[Exporter] = []
    path = cfg.output.jsonl
    if path is None and not cfg.otlp.endpoint:
        path = "-"
    if path is not None:
        try:
            from ..export.jsonl import JsonlExporter
        except ImportError:
            raise InputError("the JSON lines exporter is not available in this build") from None
        try:
            out.append(JsonlExporter(path, max_bytes=cfg.output.max_bytes or None,
                                     backups=cfg.output.backups, websocket_records=cfg.output.websocket_records,
                                     graphql=graphql_options(cfg)))
        except OSError as exc:
            raise InputError(f"output.jsonl {path!r}: cannot open: {exc.strerror or exc}") from None
    if cfg.otlp.endpoint:
        try:
            from ..export.otlp import OtlpConfig, OtlpExporter
        except ImportError:
            raise InputError("the OTLP exporter is not available in this build; "
                             "remove otlp.endpoint") from None
        o = cfg.otlp
        wanted: dict[str, Any] = {
            "endpoint": o.endpoint, "protocol": o.protocol, "insecure": o.insecure, "ca": o.ca,
            "cert": o.cert, "key": o.key, "headers": dict(o.headers), "token": read_token(cfg),
            "token_header": o.token_header,
            "span_profile": o.span_profile, "service_name": o.service_name, "environment": o.environment,
            "spool_dir": o.spool_dir, "spool_max_bytes": o.spool_max_bytes, "batch_size": o.batch_size,
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
