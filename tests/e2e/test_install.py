"""The install bundle: built, installed into a staging root with --no-download, upgraded, uninstalled."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.support import tmsh_standin
from tests.support.paths import REPO

PYVER = f"{sys.version_info[0]}.{sys.version_info[1]}"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="Linux installer"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-compile: the mypyc build takes minutes of CPU; the compiled wheels' part of the build is
    # tested by tests/e2e/test_bundle.py.
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_bundle.sh"), "--pythons", PYVER, "--no-compile",
                           "--out", str(out)], capture_output=True, text=True, timeout=1800)
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
    # The bundle says which Pythons have tlsmirror's compiled wheel: none, with --no-compile.
    info = (out / top / "BUNDLE.txt").read_text()
    assert "compiled: none\n" in info and f"pure-only: {PYVER}\n" in info, info
    assert list((out / top / "wheels").glob("tlsmirror-*-py3-none-any.whl")), info
    assert f"compiled wheel for Python: none; pure-Python wheel only: {PYVER})" in proc.stdout
    return out / top


def _install(bundle: Path, root: Path, *extra: str, token: str | None = "tok-SECRET-123",
             port: int | None = None, env: str = "staging", service: str = "orders-api",
             listener: bool = True) -> subprocess.CompletedProcess[str]:
    """install.sh as an operator types it (-t), the token arriving on standard input; token=None: no -t
    and nothing on standard input (a re-run that keeps the stored token); listener=False: without
    --enable-tls-capture and --server-port."""
    keys = ["--enable-tls-capture", "--server-port", str(port or _free_port())] if listener else []
    cmd = ["bash", str(bundle / "bin" / "install.sh"), "mirror", "-i", "lo", "-e", env, "-s", service,
           *(["-t"] if token is not None else []), *keys, "--no-download", "--yes", "--root", str(root), *extra]
    if token is None:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, input=token + "\n")


def _tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under root with its mode and (files) content: to show that nothing changed."""
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.read_bytes() if p.is_file() and not p.is_symlink()
                                       else None) for p in sorted(root.rglob("*"))}


def _host_address() -> str | None:
    """A non-loopback IPv4 address of this host's interfaces (what a BIG-IP would connect to)."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=20).stdout
    for m in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/", out):
        if not ipaddress.ip_address(m.group(1)).is_loopback:
            return m.group(1)
    return None


def _write_cert_without_addresses(cert_path: Path, key_path: Path) -> None:
    """A self-signed certificate naming only a host name, as install.sh made them before."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{socket.gethostname()}-tlsmirror")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(k, hashes.SHA256()))
    key_path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_install_upgrade_uninstall(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = _install(bundle, root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tok-SECRET-123" not in proc.stdout + proc.stderr
    assert f"the pure-Python build: the bundle has no compiled wheel for Python {PYVER}" in proc.stdout

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

    _check_listener_certificate(root, venv_tlsmirror)
    _check_f5_hint(proc.stdout, root, venv_tlsmirror, tmp_path)

    # Re-run: token, certificate and config kept (the operator's lines too); the changed -e/-s applied,
    # each shown with its old value.
    config.write_text(text + "# edited by the operator\n")
    cert = (root / "var/lib/tlsmirror/listener.crt").read_bytes()
    port = int(re.search(r"port: (\d+)", text).group(1))  # type: ignore[union-attr]
    proc = _install(bundle, root, token=None, port=port, env="production", service="payments-api")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "keeping the token" in proc.stdout and "Platform refresh token" not in proc.stdout + proc.stderr
    assert token.read_text().strip() == "tok-SECRET-123"
    edited = config.read_text()
    assert "# edited by the operator" in edited
    assert 'service_name: "payments-api"' in edited and 'environment: "production"' in edited
    assert 'service_name: "orders-api"' not in edited and _mode(config) == 0o640
    assert 'otlp.service_name: "payments-api"  <- -s payments-api (was orders-api)' in proc.stdout
    assert 'otlp.environment: "production"  <- -e production (was staging)' in proc.stdout
    assert (root / "var/lib/tlsmirror/listener.crt").read_bytes() == cert
    assert "tlsmirror is installed." in proc.stdout and f"--port {port} " in proc.stdout

    # A new --server-port and --workers (a line the first install did not write) are applied too.
    new_port = _free_port()
    proc = _install(bundle, root, "--workers", "3", token=None, port=new_port, env="production",
                    service="payments-api")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"keys.port: {new_port}  <- --server-port {new_port} (was {port})" in proc.stdout
    assert "capture.workers: 3  <- --workers 3 (was not set)" in proc.stdout
    edited = config.read_text()
    assert f"  port: {new_port}\n" in edited and "capture:\n  workers: 3\n" in edited
    assert f"--port {new_port} " in proc.stdout
    port = new_port
    # Flags not given keep the config's values: the listener stays on, on its port, and says so.
    proc = _install(bundle, root, token=None, listener=False, env="production", service="payments-api")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "the flags match it" in proc.stdout and "the key listener stays on" in proc.stdout
    assert f"--port {port} " in proc.stdout and config.read_text() == edited
    # The operator's own spelling of a value (unquoted, with a comment) matches the same flag; a kept
    # certificate without IP addresses (an older install.sh's) is kept with a warning.
    config.write_text(edited.replace('environment: "production"', "environment: production  # the live one"))
    state = root / "var/lib/tlsmirror"
    crt, key = (state / "listener.crt").read_bytes(), (state / "listener.key").read_bytes()
    _write_cert_without_addresses(state / "listener.crt", state / "listener.key")
    proc = _install(bundle, root, token=None, port=port, env="production", service="payments-api")
    assert proc.returncode == 0 and "the flags match it" in proc.stdout, proc.stderr[-3000:]
    assert "# the live one" in config.read_text()
    assert "listener.crt names no IP address" in proc.stderr and "--sensor <this host IP>" in proc.stdout
    config.write_text(edited)
    (state / "listener.crt").write_bytes(crt)
    (state / "listener.key").write_bytes(key)

    # -t with an empty answer keeps the stored token; -t with one replaces it
    proc = _install(bundle, root, token="", port=port, env="production", service="payments-api")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert token.read_text().strip() == "tok-SECRET-123" and "the flags match it" in proc.stdout
    proc = _install(bundle, root, token="tok-NEW", port=port, env="production", service="payments-api")
    assert proc.returncode == 0 and "replace the token" in proc.stdout
    assert token.read_text().strip() == "tok-NEW" and _mode(token) == 0o600
    assert "tok-NEW" not in proc.stdout + proc.stderr

    # What a re-run cannot apply is refused with the reason, before anything changes: a flag the
    # config has no line for, --no-token on a config that uses the token, a new port that is taken.
    config.write_text(edited.replace('  service_name: "payments-api"\n', ""))
    before = _tree(root)
    proc = _install(bundle, root, token=None, port=port, env="production", service="billing")
    assert proc.returncode == 1
    assert "cannot apply -s billing" in proc.stderr and "no otlp.service_name line" in proc.stderr
    assert _tree(root) == before
    config.write_text(edited)
    before = _tree(root)
    proc = _install(bundle, root, "--no-token", token=None, port=port, env="production", service="payments-api")
    assert proc.returncode == 1 and "cannot apply --no-token" in proc.stderr
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        taken = int(busy.getsockname()[1])
        proc = _install(bundle, root, token=None, port=taken, env="production", service="payments-api")
    assert proc.returncode == 1 and f"port {taken} is already in use" in proc.stderr
    assert _tree(root) == before
    # A re-run that fails after editing the config (here its check fails) puts the config back.
    broken = edited + "# the next line is wrong\n"
    config.write_text(broken.replace("otlp:\n", "otlp:\n  bogus: 1\n"))
    kept = config.read_bytes()
    proc = _install(bundle, root, token="tok-OTHER", port=port, env="qa", service="payments-api")
    assert proc.returncode != 0 and "unknown key otlp.bogus" in proc.stdout + proc.stderr
    assert f"restored {config}" in proc.stderr and f"restored {token}" in proc.stderr
    assert config.read_bytes() == kept and token.read_text().strip() == "tok-NEW"
    config.write_text(edited)

    # --dry-run on the installed sensor: "would" wording, nothing changed.
    before = _tree(root)
    proc = _install(bundle, root, "--dry-run", token=None, port=port, env="qa", service="payments-api")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "would" in proc.stdout and "tlsmirror is installed" not in proc.stdout
    assert "nothing was changed" in proc.stdout and "otlp.environment" in proc.stdout
    assert _tree(root) == before

    # Uninstall: --dry-run changes nothing and says "would"; --yes is taken; it keeps config and
    # token; --purge removes them.
    un = REPO / "bin" / "uninstall.sh"
    for extra in ([], ["--purge"]):
        proc = subprocess.run(["bash", str(un), "--root", str(root), "--dry-run", *extra], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "would run: rm -rf" in proc.stdout and "nothing was changed" in proc.stdout
        assert "tlsmirror removed" not in proc.stdout and "would be removed" in proc.stdout
        assert _tree(root) == before
    proc = subprocess.run(["bash", str(un), "--root", str(root), "--yes"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (root / "opt/tlsmirror").exists() and not (root / "etc/systemd/system/tlsmirror.service").exists()
    assert config.exists() and token.exists()
    proc = subprocess.run(["bash", str(un), "--root", str(root), "--purge"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    assert not (root / "etc/tlsmirror").exists() and not (root / "var/lib/tlsmirror").exists()


def test_rerun_turns_on_the_listener_and_the_token(bundle: Path, tmp_path: Path) -> None:
    """A sensor installed without key listener and token: a re-run with --enable-tls-capture and -t
    applies both to its config (the lines the first install left out are added) and makes the
    certificate."""
    root = tmp_path / "root"
    root.mkdir()
    proc = _install(bundle, root, "--no-token", token=None, listener=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = root / "etc/tlsmirror/config.yaml"
    first = config.read_text()
    assert "enabled: false" in first and "token_file" not in first and "cert:" not in first
    assert not (root / "var/lib/tlsmirror/listener.crt").exists() and "F5 side" not in proc.stdout
    port = _free_port()
    proc = _install(bundle, root, token="tok-LATER", port=port)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "keys.enabled: true  <- --enable-tls-capture (was false)" in out
    assert f"keys.port: {port}  <- --server-port {port} (was 8001)" in out
    assert 'keys.cert: "/var/lib/tlsmirror/listener.crt"  <- --enable-tls-capture (was not set)' in out
    assert 'otlp.token_file: "/etc/tlsmirror/token"' in out and "store the token" in out
    text = config.read_text()
    assert "keys:\n" in text and 'otlp:\n  token_file: "/etc/tlsmirror/token"\n' in text
    assert 'key: "/var/lib/tlsmirror/listener.key"' in text and "enabled: true" in text
    assert (root / "etc/tlsmirror/token").read_text().strip() == "tok-LATER"
    assert _mode(root / "var/lib/tlsmirror/listener.crt") == 0o600 and "F5 side" in out


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
    assert "would run:" in proc.stdout and "==> would write" in proc.stdout
    assert "tlsmirror is installed" not in proc.stdout and "nothing was changed" in proc.stdout
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


def _check_listener_certificate(root: Path, tlsmirror: Path) -> None:
    """The certificate names this host's addresses: `keys send --ca listener.crt IP:PORT` verifies it
    against a listener running with it, by the host's IP address."""
    from cryptography import x509

    state = root / "var/lib/tlsmirror"
    cert = x509.load_pem_x509_certificate((state / "listener.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "::1"} <= ips and socket.gethostname() in san.get_values_for_type(x509.DNSName)
    address = _host_address()
    if address is None:
        pytest.skip("no non-loopback address on this host")
    assert address in ips
    port = _free_port()
    serve = subprocess.Popen([str(tlsmirror), "keys", "serve", "--cert", str(state / "listener.crt"), "--key",
                              str(state / "listener.key"), "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = f"CLIENT_RANDOM {'00' * 32} {'11' * 48}"
        for _ in range(100):
            send = subprocess.run([str(tlsmirror), "keys", "send", f"{address}:{port}", "--ca",
                                   str(state / "listener.crt"), line], capture_output=True, text=True, timeout=60)
            if send.returncode == 0:
                break
            time.sleep(0.2)
        assert send.returncode == 0, send.stderr
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def _check_f5_hint(stdout: str, root: Path, tlsmirror: Path, tmp_path: Path) -> None:
    """The closing hint copies the listener certificate and passes it to `f5 tmsh`; the script it
    prints runs against the stand-in tmsh, in the default and in the reference-guide layout."""
    state = root / "var/lib/tlsmirror"
    assert f"scp {state}/listener.crt admin@<bigip>:/var/tmp/tlsmirror-listener.pem" in stdout
    # The documents name the file install.sh writes, and the same copy to the BIG-IP.
    assert "scp /var/lib/tlsmirror/listener.crt admin@bigip:/var/tmp/tlsmirror-listener.pem" in (
        REPO / "docs" / "f5.md").read_text()
    assert "`/var/lib/tlsmirror/listener.crt`" in (REPO / "docs" / "install.md").read_text()
    hint = next(line.strip() for line in stdout.splitlines() if " f5 tmsh " in line)
    assert hint.endswith("--sensor-cert-file /var/tmp/tlsmirror-listener.pem > tlsmirror-f5.sh")
    hint = hint.removesuffix(" > tlsmirror-f5.sh")
    on_bigip = tmp_path / "bigip-listener.pem"
    shutil.copyfile(state / "listener.crt", on_bigip)
    argv = hint.replace("<VS name>", "/Common/api_vs").replace("/var/tmp/tlsmirror-listener.pem",
                                                               str(on_bigip)).split()
    assert argv[0] == str(tlsmirror) and "<" not in hint.split("--virtual")[0]  # the sensor's IP is filled in
    reference = ["--node-name", "traceable-agent", "--pool-name", "traceable-agent-ssl-pool",
                 "--clone-pool-name", "traceable-agent-ssl-pool"]
    for layout, extra in (("default", []), ("reference", reference)):
        gen = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=60)
        assert gen.returncode == 0, gen.stderr
        state_file = tmp_path / f"{layout}.json"
        env = tmsh_standin.install(tmp_path / f"{layout}-bin", state_file, "/Common/api_vs")
        run = subprocess.run(["bash", "-e"], input=gen.stdout, capture_output=True, text=True, env=env, timeout=60)
        assert run.returncode == 0, (layout, run.stderr)
        bigip = tmsh_standin.load(state_file)
        profile = bigip["profile"]["/Common/tlsmirror_keys_serverssl"]
        assert profile["peer-cert-mode"] == "require" and profile["ca-file"] in bigip["cert"]
        assert len(bigip["virtual"]["/Common/api_vs"]["clone-pools"]) == 1
        assert len(bigip["pool"]) == (1 if layout == "reference" else 2)


def _rerun_root(tmp_path: Path, config: str) -> Path:
    """A staging root holding only an existing config (and a token): what a re-run reads first."""
    root = tmp_path / "root"
    (root / "etc/tlsmirror").mkdir(parents=True)
    (root / "etc/tlsmirror/config.yaml").write_text(config)
    (root / "etc/tlsmirror/token").write_text("tok-KEPT\n")
    return root


_CONFIG = """# written by hand
capture:
  interfaces: [lo, 'eth7']   # two
keys:
  enabled: true
  port: 18001
  cert: "/etc/ssl/own.crt"
  key: "/etc/ssl/own.key"
otlp:
  endpoint: "localhost:4317"
  service_name: 'orders-api'  # the API
  environment: staging
  token_file: "/etc/tlsmirror/token"
"""


def test_rerun_plan_without_a_bundle(tmp_path: Path) -> None:
    """The re-run's plan (what it applies, keeps, refuses) read from a hand-written config, under
    --dry-run with the repository's install.sh: no bundle needed, nothing changed."""
    root = _rerun_root(tmp_path, _CONFIG)
    before = _tree(root)
    def base(root: Path) -> list[str]:
        return ["bash", str(REPO / "bin" / "install.sh"), "mirror", "--yes", "--root", str(root), "--dry-run"]

    proc = subprocess.run([*base(root), "-i", "lo", "-e", "staging", "-s", "payments-api", "--workers", "2"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "==> would keep the existing" in out and "keeping the key listener on, on port 18001" in out
    assert "otlp.service_name: \"payments-api\"  <- -s payments-api (was orders-api)" in out
    assert "capture.workers: 2  <- --workers 2 (was not set)" in out
    assert "capture.interfaces" not in out and "otlp.environment" not in out  # -i lo is listed; equal value
    assert "keys.cert" not in out and "keeping the key listener's certificate" in out  # the operator's own
    assert "keeping the token" in out and "would be upgraded" in out and "tlsmirror is installed" not in out
    assert _tree(root) == before

    for config, flags, reason in (
        (_CONFIG.replace("  interfaces: [lo, 'eth7']   # two\n", "  interfaces:\n    - eth7\n"), ["-i", "lo"],
         "cannot apply -i lo to the existing {c}: its capture.interfaces is not a one-line value"),
        (_CONFIG.replace("  environment: staging\n", ""), ["-i", "lo"],
         "cannot apply -e staging to the existing {c}: it has no otlp.environment line"),
        (_CONFIG, ["-i", "lo", "--no-token"], "cannot apply --no-token to the existing {c}"),
    ):
        root = _rerun_root(tmp_path / f"case{len(flags)}{len(config)}", config)
        before = _tree(root)
        proc = subprocess.run([*base(root), *flags, "-e", "staging", "-s", "orders-api"], capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 1, proc.stdout
        assert reason.format(c=root / "etc/tlsmirror/config.yaml") in proc.stderr, proc.stderr
        assert _tree(root) == before
