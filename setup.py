"""Build script: metadata lives in pyproject.toml; this only adds the mypyc-compiled modules.

``pip install .`` (or ``-e .``) compiles the per-packet and per-exchange modules with mypyc whenever a C
compiler is present (measured: replay twice as fast); without one, or when compiling fails, tlsmirror
is pure Python and behaves the same (``tlsmirror --version`` and ``tlsmirror doctor`` say which).
``TLSMIRROR_COMPILE=0`` (or set and empty) builds pure Python.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import sysconfig

from setuptools import Extension, setup

# The hot path, measured with bench/profile.py: what runs for every packet, record and exchange.
COMPILED = [
    "src/tlsmirror/frames/events.py",
    "src/tlsmirror/tcp/events.py",
    "src/tlsmirror/tls/events.py",
    "src/tlsmirror/frames/layers.py",
    "src/tlsmirror/frames/link.py",
    "src/tlsmirror/frames/ip.py",
    "src/tlsmirror/frames/tunnels.py",
    "src/tlsmirror/frames/decoder.py",
    "src/tlsmirror/tcp/reassembly.py",
    "src/tlsmirror/tls/ciphers.py",
    "src/tlsmirror/tls/schedule.py",
    "src/tlsmirror/tls/handshake.py",
    "src/tlsmirror/tls/context.py",
    "src/tlsmirror/frames/addresses.py",
    "src/tlsmirror/frames/flowhash.py",
    "src/tlsmirror/keys/keylog.py",
    "src/tlsmirror/keys/store.py",
    "src/tlsmirror/tls/session.py",
    "src/tlsmirror/pipeline.py",
    "src/tlsmirror/shell/offline/pcapfile.py",
    "src/tlsmirror/shell/offline/loop.py",
    "src/tlsmirror/shell/offline/decrypt.py",
    "src/tlsmirror/shell/offline/replay.py",
    "src/tlsmirror/shell/offline/share.py",
    "src/tlsmirror/shell/offline/workers.py",
    "src/tlsmirror/shell/export/jsonl.py",
    "src/tlsmirror/shell/export/sharedjsonl.py",
    "src/tlsmirror/shell/daemon/pcapfeed.py",
    "src/tlsmirror/shell/daemon/callsink.py",
    "src/tlsmirror/http/events.py",
    "src/tlsmirror/http/bodies.py",
    "src/tlsmirror/http/h1.py",
    "src/tlsmirror/http/h2.py",
    "src/tlsmirror/http/connection.py",
    "src/tlsmirror/calls.py",
    "src/tlsmirror/record.py",
    "src/tlsmirror/inventory/schema.py",
    "src/tlsmirror/inventory/sensitive.py",
    "src/tlsmirror/inventory/routes.py",
    "src/tlsmirror/inventory/inventory.py",
]


def _c_compiler() -> str | None:
    """The C compiler setuptools would run (``$CC``, else the one Python was built with), if installed."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(cc)
    return shutil.which(words[0]) if words else None


def _extensions() -> list[object]:
    wanted = os.environ.get("TLSMIRROR_COMPILE")  # None: compile when a C compiler is present
    if wanted is not None and wanted.strip().lower() not in ("1", "true", "yes"):
        print("tlsmirror: TLSMIRROR_COMPILE set: pure Python build", file=sys.stderr)
        return []
    if _c_compiler() is None:
        print("tlsmirror: no C compiler found: pure Python build (install gcc or cc, and reinstall, for the "
              "compiled modules: 3-4x faster)", file=sys.stderr)
        return []
    # the plain HTTP/1 head's one-call parser (src/tlsmirror/http/_head.c): llhttp parses every other head
    head = Extension("tlsmirror.http._head", ["src/tlsmirror/http/_head.c"], optional=True)
    # the live capture ring's block reader (src/tlsmirror/shell/daemon/_ring.c): capture.py has the same loop
    ring = Extension("tlsmirror.shell.daemon._ring", ["src/tlsmirror/shell/daemon/_ring.c"], optional=True)
    try:
        from mypyc.build import mypycify

        # No config file: the project's strict settings need the runtime dependencies' types, which an
        # isolated build environment does not have; mypyc only needs the annotations.
        exts = mypycify(["--config-file=", "--ignore-missing-imports", *COMPILED], opt_level="3")
    except BaseException as exc:  # noqa: BLE001 - a failed compile falls back to pure Python
        print(f"tlsmirror: mypyc compile skipped ({type(exc).__name__}: {exc}); pure Python", file=sys.stderr)
        return [head, ring]
    for ext in exts:
        ext.optional = True  # a C compiler problem also falls back to pure Python
    return [*exts, head, ring]


setup(ext_modules=_extensions())
