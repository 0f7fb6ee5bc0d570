"""Reaching the fabric: the keys.fabric* settings, a TLS Redis verified against keys.fabric_ca, Sentinel."""

from __future__ import annotations

import datetime
import ipaddress
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.keylistener import make_ca, make_client_cert
from tests.support.redis import RedisServer
from tlsmirror.keys.events import CLIENT_RANDOM, Secret
from tlsmirror.shell.config import MASK, load_config, read_fabric_password, show
from tlsmirror.shell.errors import InputError
from tlsmirror.shell.fabric.client import Fabric
from tlsmirror.shell.fabric.connect import FabricSettings, describe, sentinel_parts
from tlsmirror.shell.fabric.entries import secret_key


def _cfg(**flags: str) -> object:
    return load_config(None, env={}, flags=flags, use_default_path=False)


def test_fabric_settings_are_checked_and_the_password_never_shown(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret-fabric-pw\n")
    cfg = load_config(None, env={"TLSMIRROR_KEYS_FABRIC": "redis://tlsmirror@10.0.0.5:6379/2",
                                 "TLSMIRROR_KEYS_FABRIC_PASSWORD_FILE": str(pw)}, use_default_path=False)
    assert read_fabric_password(cfg) == "s3cret-fabric-pw"
    s = FabricSettings.from_config(cfg, "sensor-1")
    assert s.password == "s3cret-fabric-pw" and "s3cret" not in repr(s)
    assert s.where == "redis://10.0.0.5:6379/2" and s.key_ttl == cfg.engine.key_ttl
    env_pw = load_config(None, env={"TLSMIRROR_KEYS_FABRIC": "rediss://h:6380",
                                    "TLSMIRROR_KEYS_FABRIC_PASSWORD": "env-pw-1"}, use_default_path=False)
    assert read_fabric_password(env_pw) == "env-pw-1"
    assert "env-pw-1" not in show(env_pw) and MASK in show(env_pw)
    assert FabricSettings.from_config(env_pw).sensor_id  # a default sensor id
    bad = {
        "keys.fabric=http://h:6379": "not a Redis address",
        "keys.fabric=redis://:pw@h:6379": "password in it",
        "keys.fabric=redis://user:pw@h:6379": "password in it",
        "keys.fabric=redis+sentinel://h:26379": "names no service",
        "keys.fabric=redis://": "not a Redis address",
    }
    for assignment, why in bad.items():
        key, _, value = assignment.partition("=")
        with pytest.raises(InputError, match=why) as err:
            load_config(None, env={}, flags={key: value}, use_default_path=False)
        assert "pw@" not in str(err.value)
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(InputError, match="not TLS"):
        load_config(None, env={}, flags={"keys.fabric": "redis://h", "keys.fabric_ca": str(ca)},
                    use_default_path=False)
    with pytest.raises(InputError, match="both set"):
        load_config(None, env={}, flags={"keys.fabric": "redis://h", "keys.fabric_password": "a",
                                         "keys.fabric_password_file": str(pw)}, use_default_path=False)
    with pytest.raises(InputError, match="not a sensor name"):
        FabricSettings.from_config(load_config(None, env={}, flags={"keys.fabric": "redis://h",
                                                                    "keys.fabric_id": "a b"},
                                               use_default_path=False))


def test_sentinel_addresses() -> None:
    assert sentinel_parts("redis+sentinel://u@h1:26380,[::1],h3/mymaster/3") == (
        [("h1", 26380), ("::1", 26379), ("h3", 26379)], "u", "mymaster", 3)
    assert describe("redis+sentinel://u@h1:26380,h2/mymaster") == "redis+sentinel://h1:26380,h2/mymaster"
    with pytest.raises(InputError):
        sentinel_parts("redis+sentinel://h1/")


def _server_cert(tmp_path: Path, ca: tuple[object, object]) -> tuple[str, str]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    c, k = tmp_path / "redis.crt", tmp_path / "redis.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return str(c), str(k)


def _wait(cond: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_rediss_with_the_configured_ca_and_refused_without_it(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "fabric-ca")
    cert, key = _server_cert(tmp_path, ca)
    ccert, ckey = make_client_cert(tmp_path, ca, "sensor-a")
    server = RedisServer(tmp_path / "redis")
    tls_port = server.port
    server.port = 0  # no plain port
    server.args = ("--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file", key,
                   "--tls-ca-cert-file", str(tmp_path / "fabric-ca.pem"), "--tls-auth-clients", "yes")
    import subprocess

    cmd = ["redis-server", "--port", "0", "--bind", "127.0.0.1", "--save", "", "--dir", str(server.dir), *server.args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0"
        got: list[Secret] = []
        cafile = str(tmp_path / "fabric-ca.pem")
        good = Fabric(FabricSettings(url=url, sensor_id="a", ca=cafile, cert=ccert, key=ckey, timeout=2.0),
                      got.extend)
        untrusted = Fabric(FabricSettings(url=url, sensor_id="b", cert=ccert, key=ckey, timeout=1.0), got.extend,
                           log_every=0)
        no_cert = Fabric(FabricSettings(url=url, sensor_id="c", ca=cafile, timeout=1.0), got.extend, log_every=0)
        assert _wait(lambda: good.start(1.0), 15)  # the server may take a moment to listen
        assert not untrusted.start(3.0) and untrusted.snapshot()["errors"] >= 1
        assert not no_cert.start(3.0) and no_cert.snapshot()["errors"] >= 1
        # the settings from the configuration, as the daemon reads them
        cfg = load_config(None, env={}, flags={"keys.fabric": url, "keys.fabric_ca": cafile,
                                               "keys.fabric_cert": ccert, "keys.fabric_key": ckey},
                          use_default_path=False)
        from tlsmirror.shell.doctor.fabric import probe_fabric

        assert probe_fabric(cfg, 2.0).status in ("OK", "WARN")  # WARN: no sensor on it yet
        with pytest.raises(InputError, match="go together"):
            load_config(None, env={}, flags={"keys.fabric": url, "keys.fabric_cert": ccert}, use_default_path=False)
        s = Secret(CLIENT_RANDOM, os.urandom(32), os.urandom(48))
        good.publish([s])
        assert _wait(lambda: good.snapshot()["secrets_out"] == 1, 10)
        good.stop()
        untrusted.stop()
        no_cert.stop()
    finally:
        proc.terminate()
        proc.wait(10)


def test_sentinel_finds_the_master(tmp_path: Path) -> None:
    master = RedisServer(tmp_path / "master").start()
    import subprocess

    sport = RedisServer(tmp_path / "sentinel").port
    conf = tmp_path / "sentinel" / "sentinel.conf"
    conf.write_text(f"port {sport}\nbind 127.0.0.1\nsentinel monitor fabric 127.0.0.1 {master.port} 1\n")
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        got: list[Secret] = []
        f = Fabric(FabricSettings(url=f"redis+sentinel://127.0.0.1:{sport}/fabric", sensor_id="a", timeout=2.0),
                   got.extend)
        assert _wait(lambda: f.start(1.0), 20)
        s = Secret(CLIENT_RANDOM, os.urandom(32), os.urandom(48))
        f.publish([s])
        assert _wait(lambda: master.client().exists(secret_key(s)) == 1, 10)
        f.stop()
    finally:
        proc.terminate()
        proc.wait(10)
        master.stop()
