"""scripts/build_bundle.sh finds each Python by running it: a pyenv shim that fails is skipped, with a message.

``--probe`` runs the search alone (no build); the whole build runs with a stand-in Python whose
"compiled wheel" is an empty file, so that it takes seconds, not the minutes of mypyc. The bundle
that tests/e2e/test_install.py installs is built with --no-compile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux bundle")

PYVER = f"{sys.version_info[0]}.{sys.version_info[1]}"
OTHER = f"{sys.version_info[0]}.{sys.version_info[1] + 1}"  # a version only shims and fakes provide here


def _shim(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _probe(tmp_path: Path, pythons: str, path: list[Path]) -> subprocess.CompletedProcess[str]:
    """build_bundle.sh --probe with only ``path`` on PATH and an empty home (no pyenv)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.pathsep.join(str(p) for p in path), "HOME": str(home), "LANG": "C"}
    return subprocess.run(["/bin/bash", str(REPO / "scripts" / "build_bundle.sh"), "--probe", "--pythons", pythons],
                          capture_output=True, text=True, env=env, timeout=120)


def test_failing_shim_is_skipped_with_a_message(tmp_path: Path) -> None:
    """A pyenv-like shim first on PATH that exits 127 is skipped, and the real Python behind it is used;
    a version only the failing shim provides is reported as built without its compiled wheel."""
    shims, real = tmp_path / "shims", tmp_path / "real"
    for v in (PYVER, OTHER):
        _shim(shims / f"python{v}", f"echo 'pyenv: python{v}: command not found' >&2; exit 127")
    real.mkdir()
    (real / f"python{PYVER}").symlink_to(os.path.realpath(sys.executable))
    proc = _probe(tmp_path, f"{PYVER} {OTHER}", [shims, real])
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert f"note: {shims}/python{PYVER} does not run (exit 127): skipped" in err
    assert f"Python {PYVER}: {real}/python{PYVER} runs: it builds the compiled wheel" in err
    assert f"note: {shims}/python{OTHER} does not run (exit 127): skipped" in err
    assert f"note: no Python {OTHER} runs on this machine: its installs use the pure-Python wheel" in err
    assert "command not found" not in err  # the shim's own noise is not passed on


def test_pyenv_versions_are_searched_and_a_wrong_version_is_refused(tmp_path: Path) -> None:
    """Behind a failing shim, pyenv's installed versions are tried; a pythonX.Y that is another version
    is not taken for X.Y."""
    shims = tmp_path / "shims"
    _shim(shims / f"python{PYVER}", "exit 127")
    liar = tmp_path / "liar"
    (liar / f"python{OTHER}").parent.mkdir()
    (liar / f"python{OTHER}").symlink_to(os.path.realpath(sys.executable))
    version_bin = tmp_path / "home" / ".pyenv" / "versions" / f"{PYVER}.99" / "bin"
    version_bin.mkdir(parents=True)
    (version_bin / f"python{PYVER}").symlink_to(os.path.realpath(sys.executable))
    proc = _probe(tmp_path, f"{PYVER} {OTHER}", [shims, liar])
    assert proc.returncode == 0, proc.stderr
    assert f"Python {PYVER}: {version_bin}/python{PYVER} runs" in proc.stderr
    assert f"note: {liar}/python{OTHER} is not Python {OTHER}: skipped" in proc.stderr
    assert f"note: no Python {OTHER} runs on this machine" in proc.stderr


@pytest.mark.slow
def test_bundle_lists_its_pythons(tmp_path: Path) -> None:
    """The whole build: behind a failing shim, the next python3.X that runs builds the compiled wheel
    (a stand-in that writes one, instead of minutes of mypyc) and BUNDLE.txt says so."""
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    shims, fake = tmp_path / "shims", tmp_path / "fake"
    _shim(shims / f"python{PYVER}", "exit 127")
    # A Python for the probe (-c) that "compiles" (-m pip wheel ... --wheel-dir DIR SRC) by writing a wheel.
    _shim(fake / f"python{PYVER}", f"""case "$1" in
  -c) exit 0 ;;
  -m) while [ $# -gt 0 ]; do [ "$1" = --wheel-dir ] && dir=$2; shift; done
      [ -n "$TLSMIRROR_COMPILE" ] && : > "$dir/tlsmirror-0.0.0-{tag}-{tag}-linux_x86_64.whl"; exit 0 ;;
esac
exit 2""")
    env = {k: v for k, v in os.environ.items() if k != "PYENV_ROOT"}
    env.update(PATH=os.pathsep.join([str(shims), str(fake), env["PATH"]]), HOME=str(tmp_path))
    out = tmp_path / "dist"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_bundle.sh"), "--pythons", PYVER, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=1200)
    if proc.returncode != 0 and "Could not find a version" in proc.stderr:
        pytest.skip("no package index reachable to fetch dependency wheels")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"note: {shims}/python{PYVER} does not run (exit 127): skipped" in proc.stderr
    assert f"compiled wheel for Python: {PYVER}; pure-Python wheel only: none)" in proc.stdout
    (tar,) = out.glob("tlsmirror-*-linux-amd64.tar.gz")
    with tarfile.open(tar) as tf:
        names = tf.getnames()
        top = names[0].split("/")[0]
        info = tf.extractfile(f"{top}/BUNDLE.txt").read().decode()  # type: ignore[union-attr]
    assert f"compiled: {PYVER}\n" in info and "pure-only: none\n" in info, info
    assert f"{top}/wheels/tlsmirror-0.0.0-{tag}-{tag}-linux_x86_64.whl" in names
    assert any(n.startswith(f"{top}/wheels/tlsmirror-") and n.endswith("-py3-none-any.whl") for n in names)
