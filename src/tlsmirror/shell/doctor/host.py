"""The host side: the configuration file and the systemd service."""

from __future__ import annotations

import os
import shutil
import subprocess

from ..config import Config, load_config
from ..errors import InputError
from .result import FAIL, OK, SKIP, WARN, DoctorOptions, Result, see


def check_build() -> Result:
    """How this install was built: compiled (mypyc) or pure Python, which is 3-4x slower."""
    from ... import __version__, build

    kind = build()
    data = {"version": __version__, "build": kind}
    if kind == "compiled":
        return Result("build", OK, f"tlsmirror {__version__}, compiled: the hot path runs as C extensions "
                                   "(mypyc)", data=data)
    return Result("build", WARN, f"tlsmirror {__version__}, {kind}: 3-4x slower than the compiled build", [
        "reinstall with a C compiler present (gcc or cc): `python3 -m pip install .` then compiles the hot "
        "modules; the install bundle ships compiled wheels for its Python versions", see("pure-python-build")],
        data=data)


def check_config(opts: DoctorOptions) -> tuple[Config, Result]:
    """The effective configuration, or the defaults when it cannot be loaded (reported)."""
    env = os.environ if opts.env is None else opts.env
    try:
        cfg = load_config(opts.config, env=env)
    except InputError as exc:
        text = str(exc)
        cfg = load_config(None, env={}, use_default_path=False)
        if "Permission denied" in text:
            return cfg, Result("config", WARN, f"cannot read the configuration: {text}",
                               ["run doctor as root (sudo), or as the service user, to read it; "
                                "the checks below use the defaults"])
        return cfg, Result("config", FAIL, text,
                           ["`tlsmirror run` refuses this configuration too: fix it, check with "
                            "`tlsmirror config check`; the checks below use the defaults"])
    where = cfg.path or "none (defaults and environment)"
    res = Result("config", OK, f"{where}: valid", data={"path": cfg.path})
    if cfg.warnings:
        res.status = WARN
        res.message += f"; {len(cfg.warnings)} warning(s)"
        res.advice = list(cfg.warnings)
    return cfg, res


def check_service(unit: str, timeout: float) -> Result:
    """``systemctl is-active UNIT`` when systemd runs this machine."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not os.path.isdir("/run/systemd/system"):
        return Result("service", SKIP, "systemd is not running here: the unit was not checked "
                                       "(the metrics line below tells whether the sensor runs)")
    try:
        out = subprocess.run([systemctl, "is-active", unit], capture_output=True, text=True, timeout=timeout)
        state = (out.stdout.strip() or out.stderr.strip() or "unknown").splitlines()[0]
        show = subprocess.run([systemctl, "show", unit, "-p", "LoadState", "-p", "NRestarts", "-p", "SubState"],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return Result("service", WARN, f"systemctl failed: {exc}", ["check by hand: systemctl status " + unit])
    props = dict(line.split("=", 1) for line in show.stdout.splitlines() if "=" in line)
    data = {"state": state, **props}
    if props.get("LoadState") == "not-found":
        return Result("service", FAIL, f"the systemd unit {unit} is not installed", [
            "install with bin/install.sh (docs/install.md), or give the unit's name with --unit"], data)
    restarts = int(props.get("NRestarts", "0") or 0) if props.get("NRestarts", "").isdigit() else 0
    if state == "active":
        res = Result("service", OK, f"{unit} is active", data=data)
        if restarts:
            res.status = WARN
            res.message += f", restarted {restarts} times by systemd"
            res.advice = [f"it crashed or exited with an error: journalctl -u {unit} -n 100 shows why"]
        return res
    if state in ("activating", "reloading", "deactivating"):
        return Result("service", WARN, f"{unit} is {state}", [
            f"run doctor again in a few seconds; if it stays so: journalctl -u {unit} -n 50"], data)
    return Result("service", FAIL, f"{unit} is {state}", [
        f"start it: sudo systemctl start {unit}; if it stops again, journalctl -u {unit} -n 50 shows why "
        "(a configuration error is one line naming the key and the fix)", see("sensor-not-running")], data)
