"""`tlsmirror doctor`'s key fabric check against a real redis-server: an ACL user with only the commands of
docs/operations.md passes; a wrong password, a missing permission, a stopped Redis, persistence and a
fabric without sensors each say what is wrong and what to do."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.support.redis import RedisServer
from tlsmirror.keys.events import CLIENT_RANDOM, Secret
from tlsmirror.shell.config import load_config
from tlsmirror.shell.doctor.fabric import probe_fabric
from tlsmirror.shell.doctor.result import DoctorOptions, render_text
from tlsmirror.shell.doctor.run import run_doctor
from tlsmirror.shell.fabric.client import Fabric
from tlsmirror.shell.fabric.connect import FabricSettings

# docs/operations.md, "Key fabric": the ACL of the sensors' user
ACL = ("resetkeys ~tlsmirror:* resetchannels &tlsmirror:fabric -@all +ping +set +get +mget +scan +publish "
       "+subscribe +del +client|setname")
PASSWORD = "acl-pw-93be-fabric"


def _user(redis_server: RedisServer, name: str, acl: str) -> None:
    redis_server.client().execute_command("ACL", "SETUSER", name, "on", f">{PASSWORD}", *acl.split())


def _cfg(tmp_path: Path, url: str, password: str = PASSWORD) -> object:
    pw = tmp_path / "fabric.pw"
    pw.write_text(password + "\n")
    return load_config(None, env={}, flags={"keys.fabric": url, "keys.fabric_password_file": str(pw),
                                            "keys.enabled": False},
                       use_default_path=False)


def test_an_acl_user_with_the_documented_commands_passes_and_sees_the_sensors(tmp_path: Path,
                                                                             redis_server: RedisServer) -> None:
    _user(redis_server, "tlsmirror", ACL)
    url = f"redis://tlsmirror@127.0.0.1:{redis_server.port}/0"
    sensor = Fabric(FabricSettings(url=url, sensor_id="sensor-a", password=PASSWORD, timeout=1.0), lambda s: None)
    assert sensor.start(5.0)
    sensor.publish([Secret(CLIENT_RANDOM, os.urandom(32), os.urandom(48)) for _ in range(3)])
    end = time.monotonic() + 10
    while sensor.snapshot()["secrets_out"] < 3 and time.monotonic() < end:
        time.sleep(0.05)
    try:
        r = probe_fabric(_cfg(tmp_path, url), 2.0)  # type: ignore[arg-type]
        assert r.status == "OK", r
        assert "3 secrets held" in r.message and "1 sensor on it (sensor-a)" in r.message
        assert r.data["peers"] == ["sensor-a"] and r.data["entries"] == 3
        assert not redis_server.client().keys("tlsmirror:probe:*")  # the probe cleans up
        # the whole doctor run lists it
        cfg_file = tmp_path / "c.yaml"
        cfg_file.write_text(f"keys:\n  enabled: false\n  fabric: {url}\n  fabric_password_file: {tmp_path}/fabric.pw\n"
                            "metrics:\n  enabled: false\n")
        results = run_doctor(DoctorOptions(config=str(cfg_file), wait=0, env={}, sample=False))
        text = render_text(results)
        assert any(x.check == "key fabric" and x.status == "OK" for x in results), text
        assert PASSWORD not in text
    finally:
        sensor.stop()
    r = probe_fabric(_cfg(tmp_path, url), 2.0)  # type: ignore[arg-type]
    assert r.status == "WARN" and "0 sensors on it" in r.message
    assert any("is `tlsmirror run` running" in a for a in r.advice)


def test_what_goes_wrong_is_named(tmp_path: Path, redis_server: RedisServer) -> None:
    _user(redis_server, "tlsmirror", ACL)
    _user(redis_server, "nosub", ACL.replace(" +subscribe", ""))
    url = f"redis://tlsmirror@127.0.0.1:{redis_server.port}/0"
    wrong = probe_fabric(_cfg(tmp_path, url, password="not-the-pw-11"), 2.0)  # type: ignore[arg-type]
    assert wrong.status == "FAIL" and "login refused" in wrong.message
    assert "not-the-pw-11" not in render_text([wrong])
    nosub = probe_fabric(_cfg(tmp_path, f"redis://nosub@127.0.0.1:{redis_server.port}/0"), 2.0)  # type: ignore[arg-type]
    assert nosub.status == "FAIL" and "may not do what the fabric needs" in nosub.message, nosub
    assert any("operations.md" in a for a in nosub.advice)
    redis_server.client().config_set("save", "3600 1")
    plain = load_config(None, env={}, flags={"keys.fabric": f"redis://127.0.0.1:{redis_server.port}/0"},
                        use_default_path=False)
    persisted = probe_fabric(plain, 2.0)
    assert persisted.status == "WARN" and any("writes its data to disk" in a for a in persisted.advice), persisted
    redis_server.stop()
    down = probe_fabric(_cfg(tmp_path, url), 1.0)  # type: ignore[arg-type]
    assert down.status == "FAIL" and any("redis-cli" in a for a in down.advice), down
    none = probe_fabric(load_config(None, env={}, flags={}, use_default_path=False), 1.0)
    assert none.status == "SKIP"
