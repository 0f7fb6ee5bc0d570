"""The script of `tlsmirror f5 tmsh` run under `set -e` against a stand-in tmsh that keeps the BIG-IP's
objects and refuses a duplicate or a reference to a missing object: the default layout, the layout
of the reference guide (its own node name, one pool for keys and cloning), and names that would make
two objects one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import tmsh_standin
from tlsmirror.f5 import F5ConfigError, TmshOptions, render_tmsh
from tlsmirror.shell.commands import main

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash not installed")

REFERENCE = ["--node-name", "traceable-agent", "--pool-name", "traceable-agent-ssl-pool",
             "--clone-pool-name", "traceable-agent-ssl-pool", "--sideband-name", "traceable-agent-ssl-vs",
             "--rule-name", "traceable-agent-keys"]


def run_script(tmp_path: Path, script: str, virtual: str) -> tuple[subprocess.CompletedProcess[str],
                                                                   tmsh_standin.State]:
    assert BASH is not None
    state = tmp_path / "bigip.json"
    env = tmsh_standin.install(tmp_path / "bin", state, virtual)
    assert subprocess.run([BASH, "-n"], input=script, text=True, timeout=20).returncode == 0
    proc = subprocess.run([BASH, "-e"], input=script, text=True, capture_output=True, env=env, timeout=60)
    return proc, tmsh_standin.load(state)


def cli_script(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["f5", "tmsh", *argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_standin_refuses_a_duplicate_and_a_missing_reference(tmp_path: Path) -> None:
    proc, _ = run_script(tmp_path, "set -e\ntmsh create ltm node /Common/n address 10.0.0.1\n"
                                   "tmsh create ltm node /Common/n address 10.0.0.1\necho reached\n", "/Common/api")
    assert proc.returncode == 1 and "already exists" in proc.stderr and "reached" not in proc.stdout
    proc, _ = run_script(tmp_path, "tmsh create ltm pool /Common/p members add { /Common/nope:80 } monitor tcp\n",
                         "/Common/api")
    assert proc.returncode == 1 and "node /Common/nope does not exist" in proc.stderr


def test_default_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "listener.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    script = cli_script(capsys, "--sensor", "10.1.2.3", "--virtual", "api_vs", "--sensor-cert-file", str(cert))
    proc, bigip = run_script(tmp_path, script, "/Common/api_vs")
    assert proc.returncode == 0, proc.stderr
    assert bigip["node"] == {"/Common/tlsmirror_sensor": {"address": "10.1.2.3"}}
    assert bigip["pool"]["/Common/tlsmirror_keys_pool"] == {"members": ["/Common/tlsmirror_sensor:8001"],
                                                           "monitor": "tcp"}
    assert bigip["pool"]["/Common/tlsmirror_clone_pool"] == {"members": ["/Common/tlsmirror_sensor:0"],
                                                            "monitor": "gateway_icmp"}
    profile = bigip["profile"]["/Common/tlsmirror_keys_serverssl"]
    assert profile["ca-file"] == "/Common/tlsmirror_sensor_ca.crt" and profile["peer-cert-mode"] == "require"
    assert bigip["cert"]["/Common/tlsmirror_sensor_ca.crt"] == {"file": str(cert)}
    sideband = bigip["virtual"]["/Common/tlsmirror_keys_vs"]
    assert sideband["pool"] == "/Common/tlsmirror_keys_pool"
    assert sideband["profiles"] == ["/Common/tcp", "/Common/tlsmirror_keys_serverssl"]
    assert "/Common/tlsmirror_keys" in bigip["rule"]
    api = bigip["virtual"]["/Common/api_vs"]
    assert api["rules"] == ["/Common/existing_rule_1", "/Common/other_rule", "/Common/tlsmirror_keys"]
    assert api["clone-pools"] == ["/Common/tlsmirror_clone_pool"] and api["clone-context"] == ["context",
                                                                                              "clientside"]
    assert "saved" in bigip and "tlsmirror objects created" in proc.stdout


def test_reference_guide_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One pool for keys and cloning, the guide's node name: every object once, everything attached."""
    script = cli_script(capsys, "--sensor", "10.1.2.3", "--virtual", "/Common/api_vs", *REFERENCE)
    assert script.count("tmsh create ltm pool ") == 1
    proc, bigip = run_script(tmp_path, script, "/Common/api_vs")
    assert proc.returncode == 0, proc.stderr
    assert bigip["node"] == {"/Common/traceable-agent": {"address": "10.1.2.3"}}
    assert bigip["pool"] == {"/Common/traceable-agent-ssl-pool": {"members": ["/Common/traceable-agent:8001"],
                                                                 "monitor": "tcp"}}
    assert bigip["virtual"]["/Common/traceable-agent-ssl-vs"]["pool"] == "/Common/traceable-agent-ssl-pool"
    api = bigip["virtual"]["/Common/api_vs"]
    assert api["rules"][-1] == "/Common/traceable-agent-keys"
    assert api["clone-pools"] == ["/Common/traceable-agent-ssl-pool"]
    assert 'set static::tlsmirror_keys_vs "/Common/traceable-agent-ssl-vs"' in bigip["rule"][
        "/Common/traceable-agent-keys"]["text"]
    assert "saved" in bigip
    # the hsl transport with the shared pool: the iRule streams to the very pool that clones
    script = cli_script(capsys, "--sensor", "10.1.2.3", "--virtual", "api_vs", "--transport", "hsl", *REFERENCE)
    proc, bigip = run_script(tmp_path / "hsl", script, "/Common/api_vs")
    assert proc.returncode == 0, proc.stderr
    assert list(bigip["pool"]) == ["/Common/traceable-agent-ssl-pool"]
    assert bigip["virtual"]["/Common/api_vs"]["clone-pools"] == ["/Common/traceable-agent-ssl-pool"]


def test_separate_capture_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = cli_script(capsys, "--sensor", "10.1.2.3", "--virtual", "api_vs", "--capture-ip", "10.9.9.9",
                        "--node-name", "agent", "--capture-node-name", "agent-capture")
    proc, bigip = run_script(tmp_path, script, "/Common/api_vs")
    assert proc.returncode == 0, proc.stderr
    assert bigip["node"] == {"/Common/agent": {"address": "10.1.2.3"},
                             "/Common/agent-capture": {"address": "10.9.9.9"}}
    assert bigip["pool"]["/Common/tlsmirror_clone_pool"]["members"] == ["/Common/agent-capture:0"]


@pytest.mark.parametrize(("options", "message"), [
    ({"capture_ip": "10.9.9.9", "capture_node_name": "tlsmirror_sensor"}, "needs its own node"),
    ({"clone_pool_name": "tlsmirror_keys_pool", "capture_ip": "10.9.9.9"}, "one pool for keys and cloning"),
    ({"sideband_name": "api_vs"}, "are both /Common/api_vs"),
])
def test_one_name_for_two_objects_is_refused(options: dict[str, str], message: str) -> None:
    with pytest.raises(F5ConfigError, match=message):
        render_tmsh(TmshOptions(sensor="10.1.2.3", virtual="api_vs", **options))  # type: ignore[arg-type]


THREE = ["--sensor", "10.1.2.1", "--sensor", "10.1.2.2", "--sensor", "10.1.2.3"]
FABRIC_NOTE = "THE SENSORS MUST SHARE THEIR SECRETS THROUGH THE KEY FABRIC"


def test_one_sensor_has_no_active_active_note(capsys: pytest.CaptureFixture[str]) -> None:
    script = cli_script(capsys, "--sensor", "10.1.2.3", "--virtual", "api_vs")
    assert FABRIC_NOTE not in script and "Active-active" not in script


def test_three_sensors_hsl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Active-active with HSL: a node per sensor, every key listener in the HSL pool, every sensor in the
    clone pool, the iRule streaming to that pool, and the note that the sensors need the fabric."""
    script = cli_script(capsys, *THREE, "--virtual", "api_vs", "--transport", "hsl")
    assert FABRIC_NOTE in script and "keys.fabric" in script
    proc, bigip = run_script(tmp_path, script, "/Common/api_vs")
    assert proc.returncode == 0, proc.stderr
    assert bigip["node"] == {f"/Common/tlsmirror_sensor_{i}": {"address": f"10.1.2.{i}"} for i in (1, 2, 3)}
    assert bigip["pool"] == {
        "/Common/tlsmirror_keys_pool": {"members": [f"/Common/tlsmirror_sensor_{i}:8001" for i in (1, 2, 3)],
                                        "monitor": "tcp"},
        "/Common/tlsmirror_clone_pool": {"members": [f"/Common/tlsmirror_sensor_{i}:0" for i in (1, 2, 3)],
                                         "monitor": "gateway_icmp"},
    }
    assert "/Common/tlsmirror_keys_vs" not in bigip["virtual"]
    rule = bigip["rule"]["/Common/tlsmirror_keys"]["text"]
    assert 'set static::tlsmirror_keys_pool "/Common/tlsmirror_keys_pool"' in rule and "keys.fabric" in rule
    api = bigip["virtual"]["/Common/api_vs"]
    assert api["rules"][-1] == "/Common/tlsmirror_keys" and api["clone-pools"] == ["/Common/tlsmirror_clone_pool"]
    assert "saved" in bigip


def test_three_sensors_sideband_with_capture_interfaces(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Sideband: the internal virtual server's pool load balances over all three listeners; each sensor's
    capture interface is its own node in the clone pool (IPv6 members included)."""
    cert = tmp_path / "listener.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    script = cli_script(capsys, *THREE, "--virtual", "api_vs", "--sensor-cert-file", str(cert),
                        "--capture-ip", "10.9.9.1", "--capture-ip", "10.1.2.2", "--capture-ip", "2001:db8::3")
    assert FABRIC_NOTE in script
    proc, bigip = run_script(tmp_path, script, "/Common/api_vs")
    assert proc.returncode == 0, proc.stderr
    assert bigip["node"] == {"/Common/tlsmirror_sensor_1": {"address": "10.1.2.1"},
                             "/Common/tlsmirror_sensor_2": {"address": "10.1.2.2"},
                             "/Common/tlsmirror_sensor_3": {"address": "10.1.2.3"},
                             "/Common/tlsmirror_sensor_capture_1": {"address": "10.9.9.1"},
                             "/Common/tlsmirror_sensor_capture_3": {"address": "2001:db8::3"}}
    assert bigip["pool"]["/Common/tlsmirror_keys_pool"]["members"] == [
        f"/Common/tlsmirror_sensor_{i}:8001" for i in (1, 2, 3)]
    assert bigip["pool"]["/Common/tlsmirror_clone_pool"]["members"] == [
        "/Common/tlsmirror_sensor_capture_1:0", "/Common/tlsmirror_sensor_2:0", "/Common/tlsmirror_sensor_capture_3.0"]
    assert bigip["virtual"]["/Common/tlsmirror_keys_vs"]["pool"] == "/Common/tlsmirror_keys_pool"
    assert bigip["profile"]["/Common/tlsmirror_keys_serverssl"]["peer-cert-mode"] == "require"
    assert 'set static::tlsmirror_keys_vs "/Common/tlsmirror_keys_vs"' in bigip["rule"]["/Common/tlsmirror_keys"][
        "text"]
    assert bigip["virtual"]["/Common/api_vs"]["clone-pools"] == ["/Common/tlsmirror_clone_pool"]


@pytest.mark.parametrize("transport", ["sideband", "hsl"])
def test_three_sensors_reference_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str], transport: str) -> None:
    """The reference guide's one pool for keys and cloning, with three sensors and their node names given
    one per sensor: one pool of three members, created once, attached as the clone pool."""
    names = ["agent-a", "agent-b", "agent-c"]
    ref = [x for x in REFERENCE if x not in ("--node-name", "traceable-agent")]
    script = cli_script(capsys, *THREE, "--virtual", "api_vs", "--transport", transport, *ref,
                        *(w for n in names for w in ("--node-name", n)))
    assert script.count("tmsh create ltm pool ") == 1 and FABRIC_NOTE in script
    proc, bigip = run_script(tmp_path, script, "/Common/api_vs")
    assert proc.returncode == 0, proc.stderr
    assert bigip["node"] == {f"/Common/{n}": {"address": f"10.1.2.{i}"} for i, n in enumerate(names, 1)}
    assert bigip["pool"] == {"/Common/traceable-agent-ssl-pool": {
        "members": [f"/Common/{n}:8001" for n in names], "monitor": "tcp"}}
    assert bigip["virtual"]["/Common/api_vs"]["clone-pools"] == ["/Common/traceable-agent-ssl-pool"]
    if transport == "sideband":
        assert bigip["virtual"]["/Common/traceable-agent-ssl-vs"]["pool"] == "/Common/traceable-agent-ssl-pool"


def test_standin_refuses_a_second_node_for_one_address(tmp_path: Path) -> None:
    proc, _ = run_script(tmp_path, "tmsh create ltm node /Common/a address 10.0.0.1\n"
                                   "tmsh create ltm node /Common/b address 10.0.0.1\n", "/Common/api")
    assert proc.returncode == 1 and "node address (10.0.0.1) already exists" in proc.stderr


S3 = ("10.1.2.1", "10.1.2.2", "10.1.2.3")


@pytest.mark.parametrize(("options", "message"), [
    ({"sensor": ()}, "no sensor address"),
    ({"capture_ip": ("10.9.9.1",)}, "--capture-ip given once for 3 sensors"),
    ({"node_name": ("a", "b")}, "--node-name given 2 times for 3 sensors"),
    ({"capture_ip": ("10.9.9.1", "10.9.9.2", "10.9.9.3"), "capture_node_name": ("c", "d")},
     "--capture-node-name given 2 times"),
    ({"sensor": ("10.1.2.1", "10.1.2.1")}, "the address 10.1.2.1 is given twice"),
    ({"capture_ip": ("10.9.9.1", "10.1.2.1", "10.9.9.3")}, "the address 10.1.2.1 is given twice"),
    ({"capture_ip": ("10.9.9.1", "10.9.9.1", "10.9.9.3")}, "the address 10.9.9.1 is given twice"),
    ({"node_name": ("a", "b", "a")}, "two nodes named /Common/a"),
    ({"capture_ip": ("10.9.9.1", "10.9.9.2", "10.9.9.3"), "capture_node_name": ("c", "tlsmirror_sensor_1", "e")},
     "two nodes named /Common/tlsmirror_sensor_1"),
    ({"clone_pool_name": "tlsmirror_keys_pool", "capture_ip": ("10.9.9.1", "10.1.2.2", "10.1.2.3")},
     "one pool for keys and cloning"),
])
def test_several_sensors_impossible_layouts_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(F5ConfigError, match=message):
        render_tmsh(TmshOptions(**{"sensor": S3, "virtual": "api_vs", **options}))  # type: ignore[arg-type]


def test_several_sensors_cli_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["f5", "tmsh", *THREE, "--virtual", "api_vs", "--capture-ip", "10.9.9.9"]) == 1
    assert "--capture-ip given once for 3 sensors" in capsys.readouterr().err


@pytest.mark.parametrize("reference", [False, True])
def test_active_passive_priority_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str], reference: bool) -> None:
    """--active-passive: both sensors in both pools, the first in the higher priority group, with
    min-active-members 1 (the standby gets traffic only when the active sensor's members are down); the
    fabric is optional, and the script says so instead of requiring it."""
    names = ["--node-name", "active", "--node-name", "standby"]
    extra = [x for x in REFERENCE if x not in ("--node-name", "traceable-agent")] if reference else []
    script = cli_script(capsys, "--sensor", "10.1.2.1", "--sensor", "10.1.2.2", "--virtual", "api_vs",
                        "--active-passive", *names, *extra)
    assert FABRIC_NOTE not in script and "Active/passive: 2 sensors" in script and "keys.fabric" in script
    proc, bigip = run_script(tmp_path, script, "/Common/api_vs")
    assert proc.returncode == 0, proc.stderr
    key_pool = "/Common/traceable-agent-ssl-pool" if reference else "/Common/tlsmirror_keys_pool"
    expected = {key_pool: {"members": ["/Common/active:8001", "/Common/standby:8001"], "monitor": "tcp",
                           "min-active-members": 1,
                           "priority-groups": {"/Common/active:8001": 2, "/Common/standby:8001": 1}}}
    if not reference:
        expected["/Common/tlsmirror_clone_pool"] = {
            "members": ["/Common/active:0", "/Common/standby:0"], "monitor": "gateway_icmp",
            "min-active-members": 1, "priority-groups": {"/Common/active:0": 2, "/Common/standby:0": 1}}
    assert bigip["pool"] == expected
    clone = key_pool if reference else "/Common/tlsmirror_clone_pool"
    assert bigip["virtual"]["/Common/api_vs"]["clone-pools"] == [clone]
    sideband = "/Common/traceable-agent-ssl-vs" if reference else "/Common/tlsmirror_keys_vs"
    assert bigip["virtual"][sideband]["pool"] == key_pool


def test_active_passive_needs_two_sensors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["f5", "tmsh", "--sensor", "10.1.2.1", "--virtual", "api_vs", "--active-passive"]) == 1
    assert "active/passive needs at least two sensors" in capsys.readouterr().err
