"""`tlsmirror keys serve|send`: run the key listener alone, or send key log lines to one.

``serve`` prints one line per secret received (label and the first 4 bytes of the client random,
never the secret) and the listener's counters when it stops (SIGINT/SIGTERM); SIGHUP reloads the
certificates and reopens ``--keylog-out``. ``send`` sends lines the way the F5 iRule does, one
connection per TLS session, so operators can test the path end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from ...keys.events import Secret
from ..errors import InputError
from .args import listen_port


class _IntermixedParser(argparse.ArgumentParser):
    """Options may come before, between or after the positional key log lines of ``keys send``."""

    _inside = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(sub: Any) -> None:
    k = sub.add_parser("keys", help="the key listener: serve it alone, or send it key log lines",
                       description="Run the key listener alone, or send key log lines to a listener.")
    ksub = k.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", parser_class=_IntermixedParser)
    ksub.required = True

    s = ksub.add_parser("serve", help="run the key listener and print what arrives",
                        description="Run the key listener and print each secret received (label and "
                                    "client random prefix, never the secret); counters on exit.")
    s.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    s.add_argument("--port", type=listen_port, default=8001, help="TCP port (default 8001; 0 = any free port)")
    cert = s.add_mutually_exclusive_group()
    cert.add_argument("--cert", metavar="FILE", help="PEM certificate (chain) of the listener")
    cert.add_argument("--self-signed", action="store_true",
                      help="use a self-signed certificate, generated in --state-dir on first start "
                           "(the default without --cert)")
    s.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    s.add_argument("--state-dir", metavar="DIR", help="where the self-signed certificate is kept "
                                                      "(default $XDG_STATE_HOME/tlsmirror)")
    s.add_argument("--client-ca", metavar="FILE", help="require client certificates signed by this CA bundle")
    s.add_argument("--plain", action="store_true",
                   help="plain TCP instead of TLS (secrets travel unencrypted: isolated networks only)")
    s.add_argument("--allow", action="append", default=[], metavar="CIDR",
                   help="accept senders only from this network (repeatable; default: any)")
    s.add_argument("--keylog-out", metavar="FILE", help="also append every valid line to this NSS key log "
                                                        "file (created mode 0600), e.g. for Wireshark")
    s.add_argument("--idle-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="close a connection idle this long (default 10)")
    s.add_argument("--max-connections", type=int, default=1024, metavar="N",
                   help="connections open at once (default 1024)")
    s.add_argument("-q", "--quiet", action="store_true", help="do not print each secret, only the counters")
    s.set_defaults(func=run_serve)

    d = ksub.add_parser("send", help="send key log lines to a listener, one connection per TLS session",
                        description="Send key log lines to a key listener the way the F5 iRule does: one "
                                    "connection per TLS session. Exits 1 at the first failed connection.")
    d.add_argument("target", metavar="HOST:PORT",
                   help="the listener, e.g. 10.0.0.5:8001 or [2001:db8::5]:8001")
    d.add_argument("lines", nargs="*", metavar="LINE", help="key log lines (quote each one)")
    d.add_argument("--keylog", metavar="FILE", help="read the lines from this NSS key log file "
                   "('-': standard input, each line sent as it is read)")
    d.add_argument("--ca", metavar="FILE", help="CA (or the listener's self-signed certificate) to verify it")
    d.add_argument("--insecure", action="store_true", help="do not verify the listener's certificate")
    d.add_argument("--servername", metavar="NAME", help="name to verify in the listener's certificate "
                                                        "(default: HOST)")
    d.add_argument("--cert", metavar="FILE", help="client certificate, for a listener that requires one")
    d.add_argument("--key", metavar="FILE", help="private key of --cert")
    d.add_argument("--plain", action="store_true", help="plain TCP instead of TLS")
    d.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="per connection (default 5)")
    d.set_defaults(func=run_send)


# -- serve -------------------------------------------------------------------------------------------


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    logging.getLogger("tlsmirror.keys").setLevel(logging.INFO)


def run_serve(args: argparse.Namespace) -> int:
    import asyncio  # here, not at the top: every command's start-up imports this module

    from ..keylistener.server import KeyServerConfig, default_state_dir

    if args.key and not args.cert:
        raise InputError("--key needs --cert")
    if args.cert and not args.key:
        raise InputError("--cert needs --key")
    if args.plain and (args.cert or args.client_ca or args.self_signed):
        raise InputError("--plain cannot be combined with --cert, --self-signed or --client-ca")
    config = KeyServerConfig(
        host=args.host, port=args.port, tls=not args.plain, cert=args.cert, key=args.key,
        state_dir=args.state_dir or default_state_dir(), client_ca=args.client_ca, allow=list(args.allow),
        keylog_out=args.keylog_out, idle_timeout=args.idle_timeout, max_connections=args.max_connections,
    )
    _setup_logging()
    return asyncio.run(_serve(config, quiet=args.quiet))


async def _serve(config: Any, quiet: bool) -> int:
    import asyncio

    from ..keylistener.server import KeyServer

    def show(secrets: list[Secret]) -> None:
        if quiet:
            return
        for s in secrets:
            print(f"{s.label} {s.ident[:4].hex()}...", flush=True)

    server = KeyServer(config, show)
    await server.start()
    print(f"listening on {config.host}:{server.bound_port} ({'TLS' if config.tls else 'plain TCP'})",
          file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def hangup() -> None:
        try:
            server.reload_certificates()
            server.reopen()
        except InputError as exc:
            logging.getLogger("tlsmirror.keys").error("reload failed, keeping the old settings: %s", exc)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(AttributeError, NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, hangup)
    try:
        await stop.wait()
    finally:
        await server.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    stats = " ".join(f"{k}={v}" for k, v in server.stats.items() if k != "active")
    print(f"stopped: {stats}", file=sys.stderr, flush=True)
    return 0


# -- send --------------------------------------------------------------------------------------------


def run_send(args: argparse.Namespace) -> int:
    from ..errors import SendError
    from ..keylistener.sender import client_context, group_sessions, parse_target, send_session

    host, port = parse_target(args.target)
    if args.keylog and args.lines:
        raise InputError("give key log lines either on the command line or with --keylog, not both")
    if args.plain:
        if args.ca or args.insecure or args.cert:
            raise InputError("--plain cannot be combined with --ca, --insecure or --cert")
        context = None
    else:
        context = client_context(args.ca, args.insecure, args.cert, args.key)
    if args.keylog == "-":
        if args.lines:
            raise InputError("give key log lines either on the command line or with --keylog, not both")
        return _send_stream(args, host, port, context)
    if args.keylog:
        try:
            raw = Path(args.keylog).read_text(encoding="ascii", errors="replace").splitlines()
        except OSError as exc:
            raise InputError(f"{args.keylog}: cannot read key log: {exc.strerror or exc}") from None
        source = f"{args.keylog} line"
    else:
        raw, source = list(args.lines), "line"
    sessions = group_sessions(raw, source)
    if not sessions:
        raise InputError("no key log lines to send")
    sent = 0
    for session in sessions:
        try:
            send_session(host, port, session, context, timeout=args.timeout, server_hostname=args.servername)
        except SendError as exc:
            print(f"tlsmirror: error: {exc} (sent {sent} of {len(sessions)} sessions)", file=sys.stderr)
            return 1
        sent += 1
        print(f"sent {session.describe()}", flush=True)
    print(f"sent {sent} sessions, {sum(len(s.lines) for s in sessions)} lines to {args.target}",
          file=sys.stderr)
    return 0


def _send_stream(args: argparse.Namespace, host: str, port: int, context: Any) -> int:
    """``--keylog -``: each line is sent as soon as it is read, on its own connection (``tail -F
    keys.log | tlsmirror keys send ...``). A malformed line is reported (never its secret) and skipped."""
    from ..errors import SendError
    from ..keylistener.sender import group_sessions, send_session

    sent = skipped = 0
    for no, raw in enumerate(sys.stdin, start=1):
        try:
            sessions = group_sessions([raw], "stdin line")
        except InputError as exc:
            skipped += 1
            print(f"tlsmirror: warning: {str(exc).replace('stdin line 1', f'stdin line {no}')}; skipped",
                  file=sys.stderr, flush=True)
            continue
        for session in sessions:
            try:
                send_session(host, port, session, context, timeout=args.timeout, server_hostname=args.servername)
            except SendError as exc:
                print(f"tlsmirror: error: {exc} (sent {sent} lines)", file=sys.stderr)
                return 1
            sent += 1
            print(f"sent {session.describe()}", flush=True)
    print(f"sent {sent} lines to {args.target}" + (f", skipped {skipped} malformed" if skipped else ""),
          file=sys.stderr)
    return 0 if sent or not skipped else 1
