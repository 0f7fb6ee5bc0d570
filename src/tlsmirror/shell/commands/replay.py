"""`tlsmirror replay`: the command line of :mod:`tlsmirror.shell.offline.replay`."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from typing import Any

from ..errors import InputError
from .args import add_output_args, add_secret_and_port_args, byte_size, no_collections, rsa_password, seconds

OTLP_MODULE = "tlsmirror.shell.export.otlp"


def _otlp_present() -> bool:
    """Whether the OTLP exporter is part of this install (checked without importing it: slow)."""
    try:
        return importlib.util.find_spec(OTLP_MODULE) is not None
    except (ImportError, ValueError):
        return False


def register(sub: Any) -> None:
    p = sub.add_parser("replay", help="turn the HTTP API calls of capture files into records",
                       description="Decrypt the TLS connections of one or more pcap/pcapng(.gz) files "
                                   "(in order, as one stream), parse HTTP/1.x and HTTP/2 (cleartext HTTP "
                                   "too) and write one record per exchange.")
    p.add_argument("capture", nargs="+", help="pcap or pcapng file, optionally gzip-compressed")
    add_secret_and_port_args(p)
    add_output_args(p, "records")
    p.add_argument("--format", choices=("jsonl", "har"), default="jsonl",
                   help="jsonl: one exchange record per line (default); har: an HTTP Archive 1.2")
    p.add_argument("--body-limit", type=byte_size, default=128 * 1024, metavar="BYTES",
                   help="keep at most this many bytes of each body (default 128k; k/M/G or KiB/MiB/GiB suffixes)")
    p.add_argument("--bodies", choices=("auto", "base64", "none"), default="auto",
                   help="jsonl body content: auto (text as UTF-8, else base64), base64, none (sizes only)")
    p.add_argument("--websocket-records", choices=("session", "message"), default="session",
                   help="jsonl: one record per WebSocket session with its messages (default), or the session's "
                        "record and one record per message (as output.websocket_records)")
    if _otlp_present():
        p.add_argument("--otlp-endpoint", metavar="HOST:PORT|URL",
                       help="also export spans over OTLP to this collector")
        p.add_argument("--otlp-protocol", choices=("grpc", "http"), default="grpc",
                       help="OTLP transport (default grpc)")
        p.add_argument("--flush-timeout", type=seconds, default=60.0, metavar="SECONDS",
                       help="how long to wait at the end for OTLP export to finish (default 60)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with no_collections():
        from ..offline.replay import replay_main

    make_extra = None
    endpoint = getattr(args, "otlp_endpoint", None)
    if endpoint:
        try:
            otlp = importlib.import_module(OTLP_MODULE)
        except ImportError as exc:
            raise InputError(f"OTLP export is not available: {exc}") from None
        try:
            config = otlp.OtlpConfig(endpoint=endpoint, protocol=args.otlp_protocol,
                                     flush_timeout=args.flush_timeout)
        except (ValueError, OSError) as exc:
            raise InputError(f"--otlp-endpoint {endpoint}: {exc}") from None

        def make_extra() -> list[Any]:
            """The OTLP exporter, made in the process that exports (each worker of --workers its own)."""
            try:
                return [otlp.OtlpExporter(config)]
            except (ValueError, OSError) as exc:
                raise InputError(f"--otlp-endpoint {endpoint}: {exc}") from None

    return replay_main(args.capture, args.keylog, args.rsa_key, args.port, args.output, args.format,
                       args.body_limit, rsa_password(args.rsa_password_env), (),
                       getattr(args, "flush_timeout", 60.0), args.bodies, workers=args.workers,
                       append=args.append, make_extra=make_extra, facts_files=args.facts, facts_out=args.facts_out,
                       websocket_records=args.websocket_records)
