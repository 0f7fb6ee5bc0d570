"""`tlsmirror keys send --keylog -` sends each line as soon as it is read (``tail -F keys.log | ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.keylistener import HOST, cr, line, listening, secret_hex
from tests.support.paths import SRC as SRC_DIR

SRC = str(SRC_DIR)


def test_lines_from_stdin_are_sent_as_they_come(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with listening(tmp_path) as lst:
        proc = subprocess.Popen([sys.executable, "-m", "tlsmirror", "keys", "send", f"{HOST}:{lst.port}",
                                 "--insecure", "--keylog", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, text=True)
        assert proc.stdin is not None
        try:
            for i in range(3):
                proc.stdin.write(line(i) + "\n")
                proc.stdin.flush()
                # received while the pipe is still open: nothing waits for the end of the input
                assert [s.ident for s in lst.wait_secrets(i + 1, timeout=10)] == [cr(k) for k in range(i + 1)]
            bad = f"CLIENT_RANDOM {cr(9).hex()} {secret_hex(9, 47)}"
            out, err = proc.communicate(bad + "\n# a comment\n" + line(3) + "\n", timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert [s.ident for s in lst.wait_secrets(4)] == [cr(0), cr(1), cr(2), cr(3)]
    assert out.splitlines() == [f"sent {cr(i)[:4].hex()}... CLIENT_RANDOM" for i in range(4)]
    assert "stdin line 4: not a key log line" in err and "skipped" in err
    assert "sent 4 lines" in err and secret_hex(9, 47)[:16] not in err + out
