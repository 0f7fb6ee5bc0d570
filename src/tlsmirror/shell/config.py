"""Configuration of the daemon: one YAML file, environment variables and flags, validated at start.

Every key lives in a section (``capture``, ``keys``, ``engine``, ``output``, ``http``, ``inventory``,
``otlp``, ``metrics``, ``log``) and can be set three ways; the first that sets it wins:

1. a flag (``--workers 4``, or the generic ``--set capture.workers=4``),
2. an environment variable ``TLSMIRROR_<SECTION>_<KEY>`` (``TLSMIRROR_CAPTURE_WORKERS=4``),
3. the YAML file (``--config FILE``, ``$TLSMIRROR_CONFIG``, else ``/etc/tlsmirror/config.yaml`` if present),
4. the default below.

A bad value raises :class:`~tlsmirror.shell.errors.InputError` naming where it came from, the key, the
value (never for secrets) and the fix.

One module on purpose (about 600 lines): the schema is the single source of validation, environment
names, ``config show`` and the reference in docs/configuration.md; value rules are in :mod:`.values`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import BadValue, InputError
from .values import parse_port, parse_size

DEFAULT_PATH = "/etc/tlsmirror/config.yaml"
ENV_PREFIX = "TLSMIRROR_"
ENV_CONFIG = "TLSMIRROR_CONFIG"
MASK = "********"
OUTBOX_MIN = 256 << 10


def _k(help: str, kind: str = "", *, choices: tuple[str, ...] = (), minimum: float | None = None,
       maximum: float | None = None, secret: bool = False, path: bool = False) -> dict[str, Any]:
    """Field metadata: its documentation and how to parse and check it."""
    return {"help": help, "kind": kind, "choices": choices, "min": minimum, "max": maximum, "secret": secret,
            "path": path}


@dataclass
class CaptureConfig:
    interfaces: list[str] = field(default_factory=list, metadata=_k(
        "network interfaces to capture on (promiscuous, AF_PACKET); the mirror/TAP port(s)"))
    bpf: str = field(default="", metadata=_k(
        "BPF filter expression (tcpdump syntax); empty: all TCP, VLAN-tagged TCP and VXLAN/GENEVE/GRE "
        "tunnels, minus the key listener, metrics and OTLP export traffic"))
    workers: int = field(default=0, metadata=_k("worker processes (0: one per CPU core)", minimum=0,
                                                maximum=256))
    pcap: str | None = field(default=None, metadata=_k(
        "read this capture file through the daemon path instead of live interfaces", path=True))
    pcap_speed: float = field(default=0.0, metadata=_k(
        "replay speed of `pcap` (0: as fast as possible, 1: real time, 2: twice as fast)", minimum=0))
    pcap_linger: float = field(default=0.0, metadata=_k(
        "seconds to keep running after the end of `pcap` so late secrets still unlock held records",
        minimum=0))
    snaplen: int = field(default=65535, metadata=_k("bytes captured per packet", minimum=128, maximum=262144))
    buffer_bytes: int = field(default=64 << 20, metadata=_k(
        "socket receive buffer per worker and interface when capturing without a ring (ring_bytes: 0)", "size",
        minimum=65536))
    ring_bytes: int = field(default=128 << 20, metadata=_k(
        "TPACKET_V3 ring (memory-mapped, per-packet kernel timestamps) per worker and interface; 0, or a "
        "kernel without it: one packet per recv into a socket buffer of buffer_bytes", "size", minimum=0,
        maximum=4 << 30))
    fanout_group: int = field(default=0, metadata=_k(
        "PACKET_FANOUT group id of the first interface (0: derived from the process id)", minimum=0,
        maximum=65535))
    batch: int = field(default=256, metadata=_k("packets read per socket per wake-up (ring: whole blocks)", minimum=1,
                                                maximum=65536))
    outbox_bytes: int = field(default=0, metadata=_k(
        "ring per worker holding API calls the parent has not taken yet; when full, live capture drops "
        "and counts calls, a capture file waits (0: 16MiB live, 2MiB with `pcap`)", "size", minimum=0))


@dataclass
class KeysConfig:
    enabled: bool = field(default=True, metadata=_k("run the key listener (NSS key log lines over TCP/TLS)"))
    host: str = field(default="0.0.0.0", metadata=_k("address the key listener binds"))
    port: int = field(default=8001, metadata=_k("key listener port", minimum=0, maximum=65535))
    tls: bool = field(default=True, metadata=_k("key listener speaks TLS (strongly recommended)"))
    cert: str | None = field(default=None, metadata=_k(
        "PEM certificate of the key listener (none: a self-signed one is made in state_dir)", path=True))
    key: str | None = field(default=None, metadata=_k("PEM private key for `cert`", path=True))
    state_dir: str | None = field(default=None, metadata=_k(
        "where the self-signed listener certificate is generated (0600) and reused (none: "
        "$STATE_DIRECTORY under systemd, else $XDG_STATE_HOME/tlsmirror or ~/.local/state/tlsmirror)"))
    client_ca: str | None = field(default=None, metadata=_k(
        "PEM CA bundle: when set, key senders must present a certificate signed by it", path=True))
    allow: list[str] = field(default_factory=list, metadata=_k(
        "CIDRs allowed to send keys (empty: any)"))
    keylog_out: str | None = field(default=None, metadata=_k(
        "also append received key log lines to this file (it holds secrets: protect it)"))
    plain: bool = field(default=False, metadata=_k(
        "acknowledge that secrets cross the network unencrypted when tls is false on a non-loopback host"))
    keylog_files: list[str] = field(default_factory=list, metadata=_k(
        "NSS key log files whose secrets are loaded at start (--keylog)"))
    max_connections: int = field(default=1024, metadata=_k("concurrent key sender connections",
                                                           minimum=1))
    replay: int = field(default=100_000, metadata=_k(
        "recent secrets kept to hand to a restarted worker", minimum=0))
    fabric: str | None = field(default=None, metadata=_k(
        "Redis shared by several sensors to exchange their secrets (docs/fabric.md): redis://HOST:PORT/DB, "
        "rediss://HOST:PORT/DB (TLS) or redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]; a user name "
        "may be given (redis://USER@HOST), a password never (fabric_password_file); none: no fabric"))
    fabric_password_file: str | None = field(default=None, metadata=_k(
        "file holding the fabric's password (never logged)", path=True))
    fabric_password: str | None = field(default=None, metadata=_k(
        "the fabric's password (prefer fabric_password_file or the environment; never logged)", secret=True))
    fabric_ca: str | None = field(default=None, metadata=_k(
        "PEM CA bundle verifying a rediss:// fabric (none: the system's CAs)", path=True))
    fabric_cert: str | None = field(default=None, metadata=_k(
        "PEM client certificate for a rediss:// fabric that asks for one (tls-auth-clients)", path=True))
    fabric_key: str | None = field(default=None, metadata=_k("PEM private key for `fabric_cert`", path=True))
    fabric_id: str = field(default="", metadata=_k(
        "this sensor's name in the fabric, unique per sensor (empty: host name, process id and a random "
        "suffix)"))
    fabric_timeout: float = field(default=3.0, metadata=_k(
        "seconds a fabric command may take; also the longest wait for the fabric's secrets before the sensor "
        "reports ready", minimum=0.1))


@dataclass
class EngineSection:
    idle_timeout: float = field(default=300.0, metadata=_k("seconds a TCP flow may be silent before it is "
                                                           "closed and reported", minimum=1))
    key_wait: float = field(default=30.0, metadata=_k("seconds encrypted records wait for their secrets",
                                                      minimum=0))
    max_flows: int = field(default=200_000, metadata=_k("TCP flows tracked per worker (oldest evicted)",
                                                        minimum=1))
    key_ttl: float = field(default=600.0, metadata=_k("seconds a received secret is kept for connections "
                                                      "that have not started yet", minimum=1))
    max_keys: int = field(default=500_000, metadata=_k("secrets kept per worker (oldest evicted)", minimum=1))
    max_flow_buffer: int = field(default=4 << 20, metadata=_k(
        "out-of-order bytes held per flow (each piece counted with its overhead)", "size", minimum=0))
    max_total_buffer: int = field(default=256 << 20, metadata=_k(
        "TCP reassembly memory per worker: out-of-order bytes and each open flow's state (oldest "
        "flows evicted)", "size", minimum=0))
    max_hold_bytes_per_session: int = field(default=4 << 20, metadata=_k(
        "ciphertext held per TLS session while its secrets are missing", "size", minimum=0))
    max_hold_bytes_total: int = field(default=256 << 20, metadata=_k(
        "ciphertext held per worker while secrets are missing, with each record's and ended connection's "
        "overhead (oldest given up first)", "size", minimum=0))
    body_limit: int = field(default=128 * 1024, metadata=_k("body bytes kept per message", "size",
                                                            minimum=0))
    ports: list[int] = field(default_factory=list, metadata=_k(
        "only look at TCP flows with one of these ports (empty: every flow that looks like TLS/HTTP)",
        "ports"))


@dataclass
class OutputConfig:
    jsonl: str | None = field(default=None, metadata=_k("JSON lines file of API calls ('-': stdout)"))
    max_bytes: int = field(default=0, metadata=_k("rotate the JSON lines file at this size (0: never)",
                                                  "size", minimum=0))
    backups: int = field(default=5, metadata=_k("rotated files kept", minimum=0, maximum=1000))
    queue_size: int = field(default=10_000, metadata=_k(
        "API calls waiting for the exporters; beyond it calls are dropped and counted", minimum=1))
    drain_timeout: float = field(default=30.0, metadata=_k(
        "seconds allowed on shutdown for workers to finish and exporters to flush", minimum=0))
    websocket_records: str = field(default="session", metadata=_k(
        "JSON lines of a WebSocket session: one record for the session (its messages in `websocket.list`) "
        "or one record per message (`websocket_message`) after the handshake's record",
        choices=("session", "message")))


@dataclass
class HttpSection:
    graphql_paths: list[str] = field(default_factory=lambda: ["/graphql"], metadata=_k(
        "request paths whose calls are read as GraphQL even when the body does not look like it (others "
        "are GraphQL when their JSON body or query has an executable `query`)"))
    graphql_max_fields: int = field(default=64, metadata=_k(
        "top-level fields of a GraphQL operation listed", minimum=0, maximum=4096))
    graphql_max_errors: int = field(default=5, metadata=_k(
        "GraphQL response error messages listed", minimum=0, maximum=1000))


@dataclass
class InventorySection:
    enabled: bool = field(default=True, metadata=_k(
        "keep the live API inventory and serve /inventory and /inventory.html on the metrics server"))
    seed_openapi: str | None = field(default=None, metadata=_k(
        "OpenAPI file (JSON or YAML) whose paths seed the route templates (`/users/{id}`)", path=True))
    state: str | None = field(default=None, metadata=_k(
        "route table file (`tlsmirror inventory --state`) the route templates start from; the daemon "
        "writes its live table there when it stops"))
    max_routes: int = field(default=200, metadata=_k("route templates per service at most", minimum=8))
    max_siblings: int = field(default=20, metadata=_k(
        "distinct static children of one path segment before they merge into a {param}", minimum=1))
    max_endpoints: int = field(default=20000, metadata=_k(
        "endpoints (service, method, typed path) the live inventory keeps; then calls fold into their "
        "route", minimum=1))
    sensitive_spans: bool = field(default=True, metadata=_k(
        "name the types of sensitive data found in path, query and headers on each span "
        "(tlsmirror.sensitive.*; never the values)"))
    sensitive_bodies: bool = field(default=False, metadata=_k(
        "also scan request and response bodies for the span attributes (costs CPU per call)"))


@dataclass
class OtlpSection:
    endpoint: str | None = field(default=None, metadata=_k(
        "OTLP collector (host:port for grpc, URL for http); none: OTLP export off"))
    protocol: str = field(default="grpc", metadata=_k("OTLP transport", choices=("grpc", "http")))
    insecure: bool = field(default=True, metadata=_k("plaintext connection to the collector"))
    ca: str | None = field(default=None, metadata=_k("PEM CA bundle to verify the collector", path=True))
    cert: str | None = field(default=None, metadata=_k("client certificate (mTLS)", path=True))
    key: str | None = field(default=None, metadata=_k("client private key (mTLS)", path=True))
    headers: dict[str, str] = field(default_factory=dict, metadata=_k(
        "extra request headers (values are masked in `config show`)", "dict", secret=True))
    token: str | None = field(default=None, metadata=_k(
        "agent token (prefer token_file or the environment; never logged)", secret=True))
    token_file: str | None = field(default=None, metadata=_k("file holding the agent token", path=True))
    token_header: str = field(default="x-traceable-refresh-token", metadata=_k("header carrying the token"))
    span_profile: str = field(default="hypertrace", metadata=_k(
        "span attribute naming", choices=("hypertrace", "semconv")))
    service_name: str = field(default="tlsmirror", metadata=_k("service.name of the spans"))
    environment: str | None = field(default=None, metadata=_k("deployment.environment of the spans"))
    spool_dir: str | None = field(default=None, metadata=_k(
        "directory where spans wait while the collector is unreachable (none: memory only)"))
    spool_max_bytes: int = field(default=256 << 20, metadata=_k("spool size limit", "size", minimum=0))
    batch_size: int = field(default=512, metadata=_k("spans per export request", minimum=1))
    batch_timeout: float = field(default=1.0, metadata=_k("seconds a partial batch waits", minimum=0))
    flush_timeout: float = field(default=60.0, metadata=_k("seconds allowed to flush at shutdown",
                                                           minimum=0))
    compression: str = field(default="gzip", metadata=_k("request compression", choices=("gzip", "none")))
    redact: bool = field(default=True, metadata=_k("mask sensitive headers and body fields in spans"))
    redact_headers: list[str] = field(default_factory=list, metadata=_k(
        "header names masked in addition to the built-in list (authorization, cookie, ...)"))
    redact_fields: list[str] = field(default_factory=list, metadata=_k(
        "JSON/form field names whose values are masked in bodies"))
    redact_patterns: list[str] = field(default_factory=list, metadata=_k(
        "regular expressions whose matches are masked in bodies"))


@dataclass
class MetricsConfig:
    enabled: bool = field(default=True, metadata=_k("serve /metrics and /healthz"))
    host: str = field(default="127.0.0.1", metadata=_k("address of the metrics server"))
    port: int = field(default=9464, metadata=_k("port of the metrics server (0: any free port)", minimum=0,
                                                maximum=65535))
    no_packets_after: float = field(default=60.0, metadata=_k(
        "/healthz reports degraded when no packet arrived for this many seconds (0: never)", minimum=0))
    stats_interval: float = field(default=1.0, metadata=_k("seconds between worker statistics reports",
                                                           minimum=0.05))


@dataclass
class LogConfig:
    level: str = field(default="info", metadata=_k("log level", choices=("debug", "info", "warning",
                                                                         "error")))
    format: str = field(default="text", metadata=_k("log line format", choices=("json", "text")))
    rate: float = field(default=10.0, metadata=_k(
        "log lines per second per message kind before they are suppressed (and counted)", minimum=0))


@dataclass
class Config:
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    engine: EngineSection = field(default_factory=EngineSection)
    output: OutputConfig = field(default_factory=OutputConfig)
    http: HttpSection = field(default_factory=HttpSection)
    inventory: InventorySection = field(default_factory=InventorySection)
    otlp: OtlpSection = field(default_factory=OtlpSection)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: dict[str, str] = field(default_factory=dict)  # "section.key" -> where its value came from
    path: str | None = None  # the YAML file read, if any
    warnings: list[str] = field(default_factory=list)

    def origin(self, dotted: str) -> str:
        """Where the resolved value of *dotted* came from, for messages: ``flag for KEY``, ``environment
        VAR``, ``config file PATH`` or ``default`` (keys nothing set are not in :attr:`source`)."""
        where = self.source.get(dotted)
        if where is None:
            return "default"
        return f"config file {where}" if where == self.path else where


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config) if f.name not in
                                  ("source", "path", "warnings"))


@dataclass(frozen=True)
class KeySpec:
    section: str
    name: str
    type: str  # "str", "str?", "int", "float", "bool", "list[str]", "dict"
    kind: str  # "", "size", "ports", "dict"
    default: Any
    help: str
    choices: tuple[str, ...]
    minimum: float | None
    maximum: float | None
    secret: bool
    path: bool

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace(" ", "")
    return {"str|None": "str?", "dict[str,str]": "dict"}.get(text, text)


def _schema() -> dict[str, dict[str, KeySpec]]:
    out: dict[str, dict[str, KeySpec]] = {}
    top = Config()
    for sec in SECTIONS:
        obj = getattr(top, sec)
        specs: dict[str, KeySpec] = {}
        for f in dataclasses.fields(obj):
            md = f.metadata
            specs[f.name] = KeySpec(sec, f.name, _type_name(f.type), md["kind"], getattr(obj, f.name),
                                    md["help"], md["choices"], md["min"], md["max"], md["secret"], md["path"])
        out[sec] = specs
    return out


SCHEMA = _schema()


def spec(dotted: str) -> KeySpec:
    sec, _, name = dotted.partition(".")
    try:
        return SCHEMA[sec][name]
    except KeyError:
        raise InputError(f"unknown configuration key {dotted!r}{_suggest(dotted, _all_keys())}") from None


def _all_keys() -> list[str]:
    return [s.dotted for sec in SCHEMA.values() for s in sec.values()]


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(options)}"


# ---------------------------------------------------------------------------- value parsing
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(s: KeySpec, value: Any) -> Any:
    t = s.type
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none", "~")
                         and t in ("str?",)):
        if t == "str?":
            return None
        if t in ("list[str]", "list[int]"):
            return []
        if t == "dict":
            return {}
        raise BadValue("is empty", "give a value or remove the key to use the default "
                   f"({_show_default(s)})")
    if t == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise BadValue("is not a boolean", "use true or false")
    if t == "int":
        if s.kind == "size":
            n = parse_size(value)
        elif isinstance(value, bool):
            raise BadValue("is not an integer", "give a whole number")
        elif isinstance(value, int):
            n = value
        else:
            try:
                n = int(str(value).strip(), 0)
            except ValueError:
                raise BadValue("is not an integer", "give a whole number") from None
        _range(s, n)
        return n
    if t == "float":
        if isinstance(value, bool):
            raise BadValue("is not a number", "give a number")
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise BadValue("is not a number", "give a number (seconds or a ratio)") from None
        if x != x or x in (float("inf"), float("-inf")):
            raise BadValue("is not a finite number", "give a finite number")
        _range(s, x)
        return x
    if t in ("str", "str?"):
        if isinstance(value, (dict, list)):
            raise BadValue("is not a string", "give a single value")
        text = str(value)
        if s.choices and text not in s.choices:
            raise BadValue("is not allowed", f"use one of: {', '.join(s.choices)}")
        return text
    if t in ("list[str]", "list[int]"):
        if isinstance(value, str):
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        if t == "list[str]":
            if any(isinstance(v, (dict, list)) for v in items):
                raise BadValue("is not a list of strings", "give a list like [a, b] or a comma-separated text")
            return [str(v) for v in items]
        ports = []
        for v in items:
            try:
                ports.append(parse_port(v))
            except BadValue as bad:
                raise BadValue(f"has a bad port ({bad.problem})", bad.fix) from None
        return ports
    if t == "dict":
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        if isinstance(value, str):
            out: dict[str, str] = {}
            for part in value.split(","):
                if not part.strip():
                    continue
                k, eq, v = part.partition("=")
                if not eq or not k.strip():
                    raise BadValue("is not a mapping", "write name=value pairs separated by commas")
                out[k.strip()] = v.strip()
            return out
        raise BadValue("is not a mapping", "write name: value pairs (YAML) or name=value,name2=value2")
    raise AssertionError(t)  # pragma: no cover


def _range(s: KeySpec, x: float) -> None:
    if s.minimum is not None and x < s.minimum:
        raise BadValue(f"is below the minimum {_num(s.minimum)}", f"use a value >= {_num(s.minimum)}")
    if s.maximum is not None and x > s.maximum:
        raise BadValue(f"is above the maximum {_num(s.maximum)}", f"use a value <= {_num(s.maximum)}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _show_default(s: KeySpec) -> str:
    return "none" if s.default is None else repr(s.default)


def _error(where: str, s: KeySpec, value: Any, bad: BadValue) -> InputError:
    shown = "(hidden)" if s.secret else repr(value)
    return InputError(f"{where}: {s.dotted} = {shown} {bad.problem}; {bad.fix}")


# ---------------------------------------------------------------------------- loading
def default_path(env: Mapping[str, str]) -> str | None:
    p = env.get(ENV_CONFIG)
    if p:
        return p
    return DEFAULT_PATH if os.path.exists(DEFAULT_PATH) else None


def read_yaml(path: str) -> dict[str, Any]:
    import yaml  # only with a configuration file: a run from flags alone never loads it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when PyYAML has it
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=loader)
    except OSError as exc:
        raise InputError(f"{path}: cannot read configuration: {exc.strerror or exc}; "
                         "fix the path given with --config / TLSMIRROR_CONFIG") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise InputError(f"{where}: not valid YAML ({problem}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: the configuration must be a mapping of sections "
                         f"({', '.join(SECTIONS)})")
    return data


def load_config(path: str | None = None, *, env: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None, use_default_path: bool = True, root: str = "") -> Config:
    """The effective configuration: *flags* ("section.key" -> value) > *env* > file > default.

    ``root``: file paths in the configuration are checked below this staging root (install --root).
    """
    env = os.environ if env is None else env
    cfg = Config()
    if path is None and use_default_path:
        path = default_path(env)
    if path is not None:
        cfg.path = path
        data = read_yaml(path)
        for sec, body in data.items():
            if sec not in SCHEMA:
                raise InputError(f"{path}: unknown section {sec!r}{_suggest(str(sec), list(SECTIONS))}")
            if body is None:
                continue
            if not isinstance(body, dict):
                raise InputError(f"{path}: section {sec!r} must be a mapping of keys")
            for name, value in body.items():
                if name not in SCHEMA[sec]:
                    raise InputError(f"{path}: unknown key {sec}.{name}"
                                     f"{_suggest(f'{sec}.{name}', _all_keys())}")
                _set(cfg, SCHEMA[sec][name], value, f"{path}")
    known_env = {s.env: s for sec in SCHEMA.values() for s in sec.values()}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_CONFIG:
            continue
        s = known_env.get(var)
        if s is None:
            cfg.warnings.append(f"environment variable {var} is not a configuration key; ignored")
            continue
        _set(cfg, s, value, f"environment {var}")
    for dotted, value in (flags or {}).items():
        _set(cfg, spec(dotted), value, f"flag for {dotted}")
    validate(cfg, root)
    return cfg


def _set(cfg: Config, s: KeySpec, value: Any, where: str) -> None:
    try:
        parsed = _parse(s, value)
    except BadValue as bad:
        raise _error(where, s, value, bad) from None
    setattr(getattr(cfg, s.section), s.name, parsed)
    cfg.source[s.dotted] = where


def parse_assignment(text: str) -> tuple[str, str]:
    """``section.key=value`` (the --set flag) -> (dotted key, raw value)."""
    key, eq, value = text.partition("=")
    if not eq:
        raise InputError(f"--set {text!r}: write SECTION.KEY=VALUE, e.g. --set capture.workers=4")
    spec(key.strip())
    return key.strip(), value


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate(cfg: Config, root: str = "") -> None:
    """Checks that involve several keys or the file system. Raises InputError."""

    def where(dotted: str) -> str:
        return cfg.source.get(dotted, "default")

    for sec in SCHEMA.values():
        for s in sec.values():
            if s.path:
                value = getattr(getattr(cfg, s.section), s.name)
                where_on_disk = os.path.join(root, value.lstrip("/")) if root and value else value
                # a file or a named pipe (a capture streamed in); a directory or nothing is an error
                if value is not None and (not os.path.exists(where_on_disk) or os.path.isdir(where_on_disk)):
                    raise InputError(f"{where(s.dotted)}: {s.dotted} = {value!r}: no such file; "
                                     "give the path of an existing, readable file")
    k = cfg.keys
    if (k.cert is None) != (k.key is None):
        missing = "keys.key" if k.key is None else "keys.cert"
        raise InputError(f"{where('keys.cert' if k.cert else 'keys.key')}: keys.cert and keys.key go "
                         f"together; set {missing} as well (or neither, for a self-signed certificate)")
    if k.enabled and not k.tls and not _is_loopback(k.host) and not k.plain:
        raise InputError(f"{where('keys.tls')}: keys.tls = False on host {k.host!r} would send secrets "
                         "unencrypted over the network; keep keys.tls true, bind keys.host to 127.0.0.1, "
                         "or set keys.plain: true to accept the risk")
    if k.fabric is not None:
        _check_fabric(k, where)
    for cidr in k.allow:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InputError(f"{where('keys.allow')}: keys.allow has {cidr!r}, not a CIDR; "
                             "write networks like 10.0.0.0/8 or 192.0.2.7/32") from None
    for dotted, host in (("keys.host", cfg.keys.host), ("metrics.host", cfg.metrics.host)):
        if not host or any(c.isspace() for c in host):
            raise InputError(f"{where(dotted)}: {dotted} = {host!r} is not an address; "
                             "give an IP address or host name")
    o = cfg.otlp
    if o.token is not None and o.token_file is not None:
        raise InputError(f"{where('otlp.token_file')}: otlp.token and otlp.token_file are both set; "
                         "keep one of them")
    if (o.cert is None) != (o.key is None):
        raise InputError(f"{where('otlp.cert' if o.cert else 'otlp.key')}: otlp.cert and otlp.key go "
                         "together; set both for mTLS, or neither")
    c = cfg.capture
    if c.pcap is not None and c.interfaces:
        raise InputError(f"{where('capture.pcap')}: capture.pcap and capture.interfaces are both set; "
                         "capture from a file or from interfaces, not both")
    if 0 < c.outbox_bytes < OUTBOX_MIN:
        raise InputError(f"{where('capture.outbox_bytes')}: capture.outbox_bytes = {c.outbox_bytes} is "
                         f"below {_human(OUTBOX_MIN)}; give 0 for the default or at least {_human(OUTBOX_MIN)}")
    for name in c.interfaces:
        if not name or "/" in name or len(name) > 15 or any(ch.isspace() for ch in name):
            raise InputError(f"{where('capture.interfaces')}: {name!r} is not an interface name; "
                             "give names like eth0 (see `ip link`)")
    if cfg.keys.enabled and cfg.metrics.enabled and cfg.keys.port == cfg.metrics.port != 0:
        each = " and ".join(f"{d} = {cfg.keys.port} ({cfg.origin(d)})" for d in ("keys.port", "metrics.port"))
        raise InputError(f"port clash: {each} are the same port; give them different ports")


FABRIC_SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")


def _check_fabric(k: KeysConfig, where: Any) -> None:
    from urllib.parse import urlsplit

    assert k.fabric is not None
    try:
        u = urlsplit(k.fabric)
        scheme, netloc, password = u.scheme, u.netloc, u.password
    except ValueError:
        scheme, netloc, password = "", "", None
    if scheme not in FABRIC_SCHEMES or not netloc.rpartition("@")[2]:
        raise InputError(f"{where('keys.fabric')}: keys.fabric is not a Redis address; write "
                         "redis://HOST:6379/0, rediss://HOST:6380/0 or redis+sentinel://HOST:26379/SERVICE")
    if password is not None:
        raise InputError(f"{where('keys.fabric')}: keys.fabric has a password in it; take it out and put it "
                         "in keys.fabric_password_file (or TLSMIRROR_KEYS_FABRIC_PASSWORD)")
    if scheme.endswith("+sentinel") and not u.path.strip("/"):
        raise InputError(f"{where('keys.fabric')}: keys.fabric names no service; write "
                         "redis+sentinel://HOST:26379/SERVICE")
    if k.fabric_password is not None and k.fabric_password_file is not None:
        raise InputError(f"{where('keys.fabric_password_file')}: keys.fabric_password and "
                         "keys.fabric_password_file are both set; keep one of them")
    for name in ("fabric_ca", "fabric_cert"):
        if getattr(k, name) is not None and not scheme.startswith("rediss"):
            raise InputError(f"{where('keys.' + name)}: keys.{name} is set but keys.fabric is not TLS; "
                             f"write rediss:// (or rediss+sentinel://), or drop keys.{name}")
    if (k.fabric_cert is None) != (k.fabric_key is None):
        raise InputError(f"{where('keys.fabric_cert' if k.fabric_cert else 'keys.fabric_key')}: keys.fabric_cert "
                         "and keys.fabric_key go together; set both, or neither")


def read_fabric_password(cfg: Config) -> str | None:
    """The fabric's password from keys.fabric_password or keys.fabric_password_file, never logged."""
    k = cfg.keys
    if k.fabric_password:
        return k.fabric_password
    if k.fabric_password_file:
        try:
            with open(k.fabric_password_file, encoding="utf-8") as fh:
                password = fh.read().strip()
        except OSError as exc:
            raise InputError(f"keys.fabric_password_file {k.fabric_password_file!r}: cannot read: "
                             f"{exc.strerror or exc}") from None
        if not password:
            raise InputError(f"keys.fabric_password_file {k.fabric_password_file!r} is empty; put the "
                             "password in it")
        return password
    return None


def effective(cfg: Config, *, mask: bool = True) -> dict[str, dict[str, Any]]:
    """The configuration as plain data (secrets masked unless *mask* is False)."""
    out: dict[str, dict[str, Any]] = {}
    for sec, specs in SCHEMA.items():
        body: dict[str, Any] = {}
        obj = getattr(cfg, sec)
        for name, s in specs.items():
            value = getattr(obj, name)
            if mask and s.secret and value:
                value = dict.fromkeys(value, MASK) if isinstance(value, dict) else MASK
            elif isinstance(value, list):
                value = list(value)
            body[name] = value
        out[sec] = body
    return out


def show(cfg: Config) -> str:
    """`tlsmirror config show`: the effective configuration as YAML, secrets masked."""
    import yaml

    head = f"# effective configuration (file: {cfg.path or 'none'}; precedence flag > env > file > default)\n"
    return head + yaml.safe_dump(effective(cfg), sort_keys=False, default_flow_style=False)


def read_token(cfg: Config) -> str | None:
    """The OTLP token from otlp.token or otlp.token_file (stripped), never logged."""
    if cfg.otlp.token:
        return cfg.otlp.token
    if cfg.otlp.token_file:
        try:
            with open(cfg.otlp.token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise InputError(f"otlp.token_file {cfg.otlp.token_file!r}: cannot read: "
                             f"{exc.strerror or exc}") from None
        if not token:
            raise InputError(f"otlp.token_file {cfg.otlp.token_file!r} is empty; put the token in it")
        return token
    return None


def engine_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :class:`tlsmirror.pipeline.EngineConfig` from the engine section."""
    e = cfg.engine
    return {"ports": list(e.ports) or None, "idle_timeout": e.idle_timeout, "key_wait": e.key_wait,
            "max_flow_buffer": e.max_flow_buffer, "max_total_buffer": e.max_total_buffer,
            "max_flows": e.max_flows, "key_ttl": e.key_ttl, "max_keys": e.max_keys,
            "max_hold_bytes_per_session": e.max_hold_bytes_per_session,
            "max_hold_bytes_total": e.max_hold_bytes_total, "http": True, "body_limit": e.body_limit}


def reference_markdown() -> str:
    """The table of every key (docs/configuration.md is generated from this, then edited around it)."""
    lines = []
    for sec, specs in SCHEMA.items():
        lines.append(f"\n### `{sec}`\n\n| key | default | environment | meaning |\n|---|---|---|---|")
        for s in specs.values():
            default = s.default
            if s.kind == "size" and isinstance(default, int) and default >= 1024:
                default = _human(default)
            d = "none" if default is None else (str(default).lower() if isinstance(default, bool)
                                                else str(default))
            extra = f" One of: {', '.join(s.choices)}." if s.choices else ""
            lines.append(f"| `{s.name}` | `{d}` | `{s.env}` | {s.help}.{extra} |")
    return "\n".join(lines) + "\n"


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1024)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)
