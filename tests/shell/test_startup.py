"""Start-up: what ``tlsmirror replay`` imports before the first packet (lazy imports, issue 13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Imported only when a capture needs them: HTTP/2, brotli/zstd bodies, the API-protocol readers, the
# other commands' modules (and what only they import).
LAZY = ("hpack", "hyperframe", "brotli", "zstandard", "tlsmirror.http.h2", "tlsmirror.http.graphql",
        "tlsmirror.http.websocket", "tlsmirror.http.grpc", "tlsmirror.http.sse", "tlsmirror.http.protobuf",
        "tlsmirror.shell.commands.run", "tlsmirror.shell.commands.doctor", "tlsmirror.shell.commands.keys",
        "tlsmirror.shell.commands.f5", "tlsmirror.shell.commands.config", "tlsmirror.shell.export.otlp",
        "grpc", "google.protobuf", "redis", "logging")


def _modules_after(code: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_replay_command_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    """The replay command's parser and engine, up to the point where packets flow: none of LAZY."""
    code = ("from tlsmirror.shell.commands import build_parser\n"
            "build_parser('replay')\n"
            "import tlsmirror.shell.offline.replay, tlsmirror.shell.export.jsonl")
    loaded = _modules_after(code)
    assert "tlsmirror.shell.commands.replay" in loaded
    assert "tlsmirror.pipeline" in loaded
    assert sorted(loaded & set(LAZY)) == []


def test_every_command_is_registered_without_a_command_name() -> None:
    from tlsmirror.shell.commands import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)  # type: ignore[arg-type]
    only = build_parser("replay")
    sub = next(a for a in only._actions if a.dest == "command")
    assert list(sub.choices) == ["replay"]  # type: ignore[arg-type]
