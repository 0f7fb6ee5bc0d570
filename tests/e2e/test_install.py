"""The install bundle: built, installed into a staging root with --no-download, upgraded, uninstalled."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.paths import REPO

PYVER = f"{sys.version_info[0]}.{sys.version_info[1]}"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="Linux installer"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_bundle.sh"), "--pythons", PYVER, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "Could not find a version" in proc.stderr:
        pytest.skip("no package index reachable to fetch dependency wheels")
    assert proc.returncode == 0, proc.stderr[-2000:]
    tars = list(out.glob("tlsmirror-*-linux-amd64.tar.gz"))
    assert len(tars) == 1
    with tarfile.open(tars[0]) as tf:
        names = tf.getnames()
        top = names[0].split("/")[0]
        for must in ("bin/install.sh", "bin/uninstall.sh", "packaging/tlsmirror.service", "docs/architecture.md",
                     "README.md"):
            assert f"{top}/{must}" in names, must
        assert any(n.startswith(f"{top}/wheels/tlsmirror-") for n in names)
        assert any("cryptography-" in n for n in names)
        tf.extractall(out, filter="data")
    return out / top


def _install(bundle: Path, root: Path, *extra: str, token: str = "tok-SECRET-123",
             port: int | None = None) -> subprocess.CompletedProcess[str]:
    """install.sh as an operator types it (-t), the token arriving on standard input."""
    cmd = ["bash", str(bundle / "bin" / "install.sh"), "mirror", "-i", "lo", "-e", "staging", "-s", "orders-api",
           "-t", "--enable-tls-capture", "--server-port", str(port or _free_port()),
           "--no-download", "--yes", "--root", str(root), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, input=token + "\n")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_install_upgrade_uninstall(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = _install(bundle, root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tok-SECRET-123" not in proc.stdout + proc.stderr

    venv_tlsmirror = root / "opt/tlsmirror/venv/bin/tlsmirror"
    version = subprocess.run([str(venv_tlsmirror), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("tlsmirror ")
    # The installed program does the main job on a real capture.
    replay = subprocess.run([str(venv_tlsmirror), "replay", str(REPO / "samples/api-mixed.pcap"), "--keylog",
                             str(REPO / "samples/api-mixed.keylog")], capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    assert len(replay.stdout.splitlines()) == 60
    assert "12 decrypted" in replay.stderr

    config = root / "etc/tlsmirror/config.yaml"
    assert _mode(config) == 0o640
    text = config.read_text()
    for want in ('interfaces: ["lo"]', 'service_name: "orders-api"', 'environment: "staging"',
                 'endpoint: "localhost:4317"', "enabled: true", 'token_file: "/etc/tlsmirror/token"'):
        assert want in text, want
    assert "tok-SECRET-123" not in text
    token = root / "etc/tlsmirror/token"
    assert _mode(token) == 0o600 and token.read_text().strip() == "tok-SECRET-123"
    for name in ("listener.key", "listener.crt"):
        assert _mode(root / "var/lib/tlsmirror" / name) == 0o600

    unit = (root / "etc/systemd/system/tlsmirror.service").read_text()
    for want in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN",
                 "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN", "Restart=on-failure", "User=tlsmirror",
                 "ExecStart=/opt/tlsmirror/venv/bin/tlsmirror run --config /etc/tlsmirror/config.yaml"):
        assert want in unit, want
    assert not re.findall(r"@[A-Z]+@", unit), "a placeholder left unfilled"  # (@system-service is a syscall set)

    # Upgrade in place keeps the operator's config, token and certificate.
    config.write_text(text + "# edited by the operator\n")
    cert = (root / "var/lib/tlsmirror/listener.crt").read_bytes()
    proc = _install(bundle, root, token="tok-NEW")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# edited by the operator" in config.read_text()
    assert (root / "var/lib/tlsmirror/listener.crt").read_bytes() == cert

    # Uninstall keeps config and token; --purge removes them.
    un = REPO / "bin" / "uninstall.sh"
    proc = subprocess.run(["bash", str(un), "--root", str(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (root / "opt/tlsmirror").exists() and not (root / "etc/systemd/system/tlsmirror.service").exists()
    assert config.exists() and token.exists()
    proc = subprocess.run(["bash", str(un), "--root", str(root), "--purge"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    assert not (root / "etc/tlsmirror").exists() and not (root / "var/lib/tlsmirror").exists()


def test_bad_interface_fails_cleanly(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    cmd = ["bash", str(bundle / "bin" / "install.sh"), "mirror", "-i", "no-such-if0", "-e", "e", "-s", "s",
           "--no-download", "--yes", "--root", str(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "interface 'no-such-if0' does not exist" in proc.stderr
    assert list(root.iterdir()) == []


def test_failure_midway_leaves_nothing(bundle: Path, tmp_path: Path) -> None:
    """A broken wheel directory makes pip fail after directories were made: all of it is rolled back."""
    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken, ignore=shutil.ignore_patterns("cryptography-*"))
    root = tmp_path / "root"
    root.mkdir()
    proc = _install(broken, root)
    assert proc.returncode != 0
    assert "install failed" in proc.stderr
    assert list(root.iterdir()) == []


def test_usage_errors(bundle: Path, tmp_path: Path) -> None:
    inst = str(bundle / "bin" / "install.sh")
    proc = subprocess.run(["bash", inst, "mirror", "-e", "e", "-s", "s"], capture_output=True, text=True)
    assert proc.returncode == 1 and "-i IFACE is required" in proc.stderr
    proc = subprocess.run(["bash", inst, "mirror", "-i", "lo", "-e", "e", "-s", "s", "--server-port", "99999"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "--server-port must be 1-65535" in proc.stderr
    proc = subprocess.run(["bash", inst, "upgrade"], capture_output=True, text=True)
    assert proc.returncode == 2
    proc = subprocess.run(["bash", inst, "-h"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--enable-tls-capture" in proc.stdout


def test_dry_run_changes_nothing(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = _install(bundle, root, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would run:" in proc.stdout
    assert not any(p.is_file() for p in root.rglob("*"))
    assert os.listdir(root) == []


def test_taken_port_and_missing_token_are_one_clear_line(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = int(busy.getsockname()[1])
        proc = _install(bundle, root, port=port)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and f"port {port} is already in use" in errors[0]
    assert list(root.iterdir()) == []

    cmd = ["bash", str(bundle / "bin" / "install.sh"), "mirror", "-i", "lo", "-e", "e", "-s", "s", "--no-download",
           "--yes", "--root", str(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(errors) == 1 and "refresh token is required" in errors[0]
    proc = subprocess.run([*cmd[:-2], "-t", "--root", str(root)], capture_output=True, text=True, timeout=120,
                          input="")
    assert proc.returncode == 1 and "empty token" in proc.stderr
    assert list(root.iterdir()) == []


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck missing")
def test_scripts_pass_shellcheck() -> None:
    scripts = [str(p) for p in [*(REPO / "bin").glob("*.sh"), *(REPO / "scripts").glob("*.sh")]]
    proc = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
