"""Configuration: precedence flag > env > file > default, validation messages, masking, the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.paths import REPO
from tlsmirror.shell.commands import main
from tlsmirror.shell.config import MASK, SCHEMA, load_config, parse_size, reference_markdown, show
from tlsmirror.shell.errors import InputError

ROOT = REPO


def _file(tmp_path: Path, text: str) -> str:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_without_file() -> None:
    cfg = load_config(None, env={}, use_default_path=False)
    assert cfg.capture.workers == 0
    assert cfg.keys.port == 8001 and cfg.keys.tls
    assert cfg.metrics.host == "127.0.0.1" and cfg.metrics.port == 9464
    assert cfg.path is None and cfg.source == {}


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = _file(tmp_path, "capture:\n  workers: 2\n  snaplen: 2000\nkeys:\n  port: 9001\nengine:\n"
                           "  idle_timeout: 50\n")
    env = {"TLSMIRROR_CAPTURE_WORKERS": "3", "TLSMIRROR_KEYS_PORT": "9002"}
    cfg = load_config(path, env=env, flags={"capture.workers": 4})
    assert cfg.capture.workers == 4  # flag
    assert cfg.keys.port == 9002  # env over file
    assert cfg.capture.snaplen == 2000 and cfg.engine.idle_timeout == 50.0  # file
    assert cfg.output.backups == 5  # default
    assert cfg.source["capture.workers"] == "flag for capture.workers"
    assert cfg.source["keys.port"] == "environment TLSMIRROR_KEYS_PORT"
    assert cfg.source["capture.snaplen"] == path


def test_env_config_path_and_types(tmp_path: Path) -> None:
    path = _file(tmp_path, "engine:\n  max_total_buffer: 512MiB\n  ports: [443, 8443]\n")
    cfg = load_config(None, env={"TLSMIRROR_CONFIG": path, "TLSMIRROR_KEYS_ALLOW": "10.0.0.0/8, 192.0.2.7/32",
                                 "TLSMIRROR_KEYS_TLS": "off", "TLSMIRROR_KEYS_HOST": "127.0.0.1",
                                 "TLSMIRROR_OTLP_HEADERS": "x-a=1,x-b=2"})
    assert cfg.path == path
    assert cfg.engine.max_total_buffer == 512 << 20 and cfg.engine.ports == [443, 8443]
    assert cfg.keys.allow == ["10.0.0.0/8", "192.0.2.7/32"] and cfg.keys.tls is False
    assert cfg.otlp.headers == {"x-a": "1", "x-b": "2"}


@pytest.mark.parametrize(("text", "size"), [("64MiB", 64 << 20), ("1G", 1 << 30), ("512k", 512 << 10),
                                            ("1000", 1000), (4096, 4096), ("2 GB", 2 * 10**9)])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("yaml_text", "env", "pattern"), [
    ("capture:\n  workers: many\n", {},
     r"config.yaml: capture.workers = 'many' is not an integer; give a whole"),
    ("capture:\n  workers: -1\n", {}, r"capture.workers = -1 is below the minimum 0; use a value >= 0"),
    ("capture:\n  wrkers: 2\n", {}, r"unknown key capture.wrkers \(did you mean 'capture.workers'\?\)"),
    ("captur:\n  workers: 2\n", {}, r"unknown section 'captur' \(did you mean 'capture'\?\)"),
    ("log:\n  format: xml\n", {}, r"log.format = 'xml' is not allowed; use one of: json, text"),
    ("", {"TLSMIRROR_METRICS_PORT": "http"},
     r"environment TLSMIRROR_METRICS_PORT: metrics.port = 'http' is not"),
    ("engine:\n  max_flow_buffer: lots\n", {}, r"max_flow_buffer = 'lots' is not a size; .*64MiB"),
    ("keys:\n  allow: [10.0.0.0/33]\n", {}, r"keys.allow has '10.0.0.0/33', not a CIDR"),
    ("keys:\n  tls: false\n", {}, r"keys.tls = False on host '0.0.0.0'.*keys.plain: true"),
    ("keys:\n  cert: /nonexistent/cert.pem\n", {}, r"keys.cert = '/nonexistent/cert.pem': no such file"),
    ("capture: [1, 2]\n", {}, r"section 'capture' must be a mapping"),
    ("capture:\n  workers: [\n", {}, r"config.yaml:\d+: not valid YAML"),
    ("capture:\n  pcap_speed: .nan\n", {}, r"capture.pcap_speed = nan is not a finite number"),
])
def test_validation_names_key_value_and_fix(tmp_path: Path, yaml_text: str, env: dict[str, str],
                                            pattern: str) -> None:
    path = _file(tmp_path, yaml_text)
    with pytest.raises(InputError, match=pattern):
        load_config(path, env=env)


def test_plain_key_listener_is_fine_on_loopback_or_acknowledged(tmp_path: Path) -> None:
    assert not load_config(None, env={"TLSMIRROR_KEYS_TLS": "false", "TLSMIRROR_KEYS_HOST": "127.0.0.1"},
                           use_default_path=False).keys.tls
    assert load_config(None, env={"TLSMIRROR_KEYS_TLS": "false", "TLSMIRROR_KEYS_PLAIN": "yes"},
                       use_default_path=False).keys.plain


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    # A value that cannot occur by chance in the temporary path the message also names.
    path = _file(tmp_path, "otlp:\n  headers: 48151623429\n")
    with pytest.raises(InputError) as err:
        load_config(path, env={})
    assert "48151623429" not in str(err.value) and "(hidden)" in str(err.value)


def test_show_masks_secrets(tmp_path: Path) -> None:
    path = _file(tmp_path, "otlp:\n  endpoint: collector:4317\n  headers:\n"
                           "    authorization: Bearer abc123\n")
    cfg = load_config(path, env={"TLSMIRROR_OTLP_TOKEN": "tok-very-secret"})
    text = show(cfg)
    assert "tok-very-secret" not in text and "abc123" not in text
    data = yaml.safe_load(text)
    assert data["otlp"]["token"] == MASK
    assert data["otlp"]["headers"] == {"authorization": MASK}
    assert data["otlp"]["endpoint"] == "collector:4317"
    assert set(data) == set(SCHEMA)


def test_unknown_env_variables_are_warned_not_fatal() -> None:
    cfg = load_config(None, env={"TLSMIRROR_CAPTURE_WORKRS": "2"}, use_default_path=False)
    assert any("TLSMIRROR_CAPTURE_WORKRS" in w for w in cfg.warnings)


def test_cli_config_check_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("TLSMIRROR_")]:
        monkeypatch.delenv(var)
    good = _file(tmp_path, "capture:\n  workers: 2\n")
    assert main(["config", "check", "--config", good]) == 0
    assert "configuration OK" in capsys.readouterr().out
    assert main(["config", "show", "--config", good, "--set", "keys.port=9100"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["capture"]["workers"] == 2 and shown["keys"]["port"] == 9100
    bad = tmp_path / "bad.yaml"
    bad.write_text("metrics:\n  port: 70000\n")
    assert main(["config", "check", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "metrics.port = 70000 is above the maximum 65535" in err and "Traceback" not in err
    assert main(["config", "check", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read configuration" in capsys.readouterr().err
    monkeypatch.setenv("TLSMIRROR_OTLP_TOKEN", "s3cr3t-token")
    assert main(["config", "show", "--config", good]) == 0
    assert "s3cr3t-token" not in capsys.readouterr().out


def test_shipped_config_is_valid_and_documented() -> None:
    shipped = ROOT / "config" / "config.yaml"
    cfg = load_config(str(shipped), env={})
    default = load_config(None, env={}, use_default_path=False)
    for sec in SCHEMA:  # the shipped file documents the defaults
        assert getattr(cfg, sec) == getattr(default, sec), sec
    text = shipped.read_text()
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for sec, specs in SCHEMA.items():
        for name, spec in specs.items():
            assert re.search(rf"^\s*#?\s*{name}:", text, re.M), f"{sec}.{name} missing from config.yaml"
            assert f"`{name}`" in doc and spec.env in doc, f"{sec}.{name} missing from configuration.md"
    rows = [line for line in reference_markdown().splitlines() if line.startswith("| `")]
    assert len(rows) == sum(len(s) for s in SCHEMA.values())


def test_outbox_bytes_takes_a_size_and_refuses_a_tiny_ring(tmp_path: Path) -> None:
    assert load_config(_file(tmp_path, "capture:\n  outbox_bytes: 64MiB\n"), env={}).capture.outbox_bytes == 64 << 20
    with pytest.raises(InputError) as err:
        load_config(None, env={"TLSMIRROR_CAPTURE_OUTBOX_BYTES": "1000"}, use_default_path=False)
    assert "capture.outbox_bytes" in str(err.value) and "256KiB" in str(err.value)


# ---------------------------------------------------------------------------- port clashes (issue 15, point 9)

@pytest.mark.parametrize(("file_text", "env", "flags", "port", "keys_from", "metrics_from"), [
    ("", {}, {"keys.port": 9464}, 9464, "flag for keys.port", "default"),
    ("", {}, {"metrics.port": 8001}, 8001, "default", "flag for metrics.port"),
    ("", {"TLSMIRROR_METRICS_PORT": "8001"}, {}, 8001, "default", "environment TLSMIRROR_METRICS_PORT"),
    ("keys:\n  port: 9464\n", {}, {}, 9464, "config file {path}", "default"),
    ("keys:\n  port: 7000\nmetrics:\n  port: 7000\n", {"TLSMIRROR_KEYS_PORT": "7100"},
     {"keys.port": 7000}, 7000, "flag for keys.port", "config file {path}"),
])
def test_port_clash_names_where_each_value_came_from(tmp_path: Path, file_text: str, env: dict[str, str],
                                                     flags: dict[str, object], port: int, keys_from: str,
                                                     metrics_from: str) -> None:
    path = _file(tmp_path, file_text)
    with pytest.raises(InputError) as err:
        load_config(path, env=env, flags=flags)
    assert str(err.value) == (f"port clash: keys.port = {port} ({keys_from.format(path=path)}) and "
                              f"metrics.port = {port} ({metrics_from.format(path=path)}) are the same port; "
                              "give them different ports")


def test_origin_of_every_resolved_value(tmp_path: Path) -> None:
    path = _file(tmp_path, "capture:\n  snaplen: 2000\n")
    cfg = load_config(path, env={"TLSMIRROR_KEYS_PORT": "9002"}, flags={"capture.workers": 4})
    assert cfg.origin("capture.workers") == "flag for capture.workers"
    assert cfg.origin("keys.port") == "environment TLSMIRROR_KEYS_PORT"
    assert cfg.origin("capture.snaplen") == f"config file {path}"
    assert cfg.origin("output.backups") == "default"


def test_port_clash_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("TLSMIRROR_")]:
        monkeypatch.delenv(var)
    path = _file(tmp_path, "")
    assert main(["config", "check", "--config", path, "--set", "keys.port=9464"]) == 1
    err = capsys.readouterr().err
    assert "keys.port = 9464 (flag for keys.port) and metrics.port = 9464 (default)" in err
