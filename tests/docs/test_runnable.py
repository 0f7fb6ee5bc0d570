"""The docs check: every command block marked runnable in README.md and docs/*.md runs and succeeds.

A block is runnable when the line right before its opening fence is ``<!-- runnable -->``, optionally with
``expect="TEXT"`` items (each TEXT must appear in the block's output, standard output and error together):

    <!-- runnable expect="12 TLS connections (12 decrypted)" -->
    ```sh
    tlsmirror replay samples/api-mixed.pcap --keylog samples/api-mixed.keylog
    ```

Each command line (``\\`` continuations joined; blank and ``#`` lines skipped; a leading
``python3 -m pip install ... &&`` dropped, since the check runs the checkout under test) runs with
``bash -c`` in a fresh temporary directory holding a copy of ``samples/``, ``tlsmirror`` being this
checkout's (``python3 -m tlsmirror`` with ``src`` on the path), the metrics and key listener ports set to
0 (free ones) so parallel runs do not collide, and must exit 0. docs/development.md says how to mark a block.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.paths import REPO

MARKER = re.compile(r"^<!--\s*runnable\b(?P<opts>.*?)-->\s*$")
EXPECT = re.compile(r'expect="([^"]*)"')
FENCE = re.compile(r"^(```+|~~~+)\s*(\w*)")
INSTALL = re.compile(r"^python3 -m pip install\b[^&]*(&&\s*|$)")
TIMEOUT = 60.0


@dataclass
class Block:
    where: str  # file:line of the marker
    commands: list[str]
    expect: list[str] = field(default_factory=list)


class MarkerError(ValueError):
    pass


def parse_blocks(text: str, name: str) -> list[Block]:
    """The runnable blocks of one Markdown document."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i].rstrip())  # at the start of a line: an indented example is no marker
        if not m:
            i += 1
            continue
        where = f"{name}:{i + 1}"
        opts = m.group("opts")
        expect = EXPECT.findall(opts)
        if EXPECT.sub("", opts).strip():
            raise MarkerError(f"{where}: unknown option in the runnable marker: {opts.strip()!r}")
        if i + 1 >= len(lines) or not (fence := FENCE.match(lines[i + 1])):
            raise MarkerError(f"{where}: a runnable marker must be right before a fenced block")
        j = i + 2
        body: list[str] = []
        while j < len(lines) and not lines[j].startswith(fence.group(1)):
            body.append(lines[j])
            j += 1
        if j >= len(lines):
            raise MarkerError(f"{where}: the fenced block is not closed")
        blocks.append(Block(where, commands(body), expect))
        i = j + 1
    return blocks


def commands(body: list[str]) -> list[str]:
    out: list[str] = []
    pending = ""
    for raw in body:
        line = raw.strip()
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if not line or line.startswith("#"):
            continue
        line = INSTALL.sub("", line, count=1).strip()
        if line:
            out.append(line)
    if pending.strip():
        out.append(pending.strip())
    return out


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def all_blocks() -> list[Block]:
    return [b for doc in documents() for b in parse_blocks(doc.read_text(), str(doc.relative_to(REPO)))]


def _workdir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "work"
    shutil.copytree(REPO / "samples", work / "samples")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "tlsmirror"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tlsmirror "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLSMIRROR_")}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p),
               TLSMIRROR_METRICS_PORT="0", TLSMIRROR_KEYS_PORT="0")
    return work, env


BLOCKS = all_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_runnable_block_succeeds_as_shown(block: Block, tmp_path: Path) -> None:
    work, env = _workdir(tmp_path)
    output = ""
    for cmd in block.commands:
        r = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True,
                           timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        output += r.stdout + r.stderr
        assert r.returncode == 0, f"{block.where}: `{cmd}` exited {r.returncode}:\n{r.stderr[-3000:]}"
    for text in block.expect:
        assert text in output, f"{block.where}: the output lacks {text!r}"


def test_the_main_commands_are_marked() -> None:
    marked = [c for b in BLOCKS for c in b.commands]
    assert "tlsmirror replay samples/api-mixed.pcap --keylog samples/api-mixed.keylog" in marked  # README
    assert any(c.startswith("tlsmirror run --pcap samples/") for c in marked)  # operations.md


def test_marker_parsing() -> None:
    doc = ('intro\n<!-- runnable expect="a b" expect="c" -->\n```sh\n# a comment\n'
           'python3 -m pip install -e . && tlsmirror x \\\n  --y\n\npython3 -m pip install -e .\necho hi\n```\n'
           '```sh\nnot marked\n```\n')
    (b,) = parse_blocks(doc, "t.md")
    assert (b.where, b.commands, b.expect) == ("t.md:2", ["tlsmirror x --y", "echo hi"], ["a b", "c"])
    for bad in ("<!-- runnable -->\ntext\n", "<!-- runnable -->\n```sh\nx\n", "<!-- runnable bogus -->\n```\nx\n```\n"):
        with pytest.raises(MarkerError):
            parse_blocks(bad, "t.md")
