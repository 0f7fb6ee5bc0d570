"""The build line of doctor and ``tlsmirror --version``: compiled or pure Python (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tlsmirror
from tlsmirror.shell.doctor.host import check_build
from tlsmirror.shell.doctor.result import OK, WARN

SRC = str(Path(__file__).resolve().parents[3] / "src")


@pytest.mark.parametrize(("kind", "status"), [("compiled", OK), ("pure Python", WARN), ("partly compiled", WARN)])
def test_doctor_names_the_build(monkeypatch: pytest.MonkeyPatch, kind: str, status: str) -> None:
    monkeypatch.setattr(tlsmirror, "build", lambda: kind)
    res = check_build()
    assert res.check == "build" and res.status == status
    assert kind in res.message and tlsmirror.__version__ in res.message
    assert res.data == {"version": tlsmirror.__version__, "build": kind}
    if status == WARN:
        assert any("C compiler" in a for a in res.advice)


def test_build_is_what_is_imported() -> None:
    """``build()`` looks at the files the hot modules load from, without importing them."""
    import importlib.util

    origin = importlib.util.find_spec("tlsmirror.pipeline").origin  # type: ignore[union-attr]
    assert origin is not None
    if origin.endswith(".py"):
        assert tlsmirror.build() in ("pure Python", "partly compiled")
    else:
        assert tlsmirror.build() in ("compiled", "partly compiled")


def test_version_names_the_build() -> None:
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run([sys.executable, "-m", "tlsmirror", "--version"], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out == f"tlsmirror {tlsmirror.__version__} ({tlsmirror.build()})\n"
