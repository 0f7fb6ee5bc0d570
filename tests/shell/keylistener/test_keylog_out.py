"""``--keylog-out`` / ``keys.keylog_out`` (issue 15, point 14): the file holds session secrets, so a file
that is already there is made 0600, or the listener refuses to start when it cannot (not the owner)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from tests.support.keylistener import client_ctx, line, listening, send_tls
from tlsmirror.shell.errors import InputError
from tlsmirror.shell.keylistener.server import KeyServer, KeyServerConfig


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o640, 0o400])
def test_existing_file_is_made_0600_and_appended_to(tmp_path: Path, mode: int) -> None:
    out = tmp_path / "keys.log"
    out.write_text("# kept\n")
    out.chmod(mode)
    with listening(tmp_path, keylog_out=str(out)) as lst:
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        send_tls(lst.port, client_ctx(tmp_path), (line(1) + "\n").encode())
        lst.wait_secrets(1)
    assert out.read_text() == "# kept\n" + line(1) + "\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_new_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        server = KeyServer(KeyServerConfig(host="127.0.0.1", port=0, tls=False,
                                           keylog_out=str(tmp_path / "new.log")), lambda b: None)
        server._open_keylog_out()
        server._close_keylog_out()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.log").stat().st_mode) == 0o600


def _open_as(uid: int, path: str) -> str:
    """Open *path* as keylog_out in a forked child running as *uid*: its InputError, or "" if it opened."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(rfd)
            os.setgid(uid)
            os.setuid(uid)
            server = KeyServer(KeyServerConfig(host="127.0.0.1", port=0, tls=False, keylog_out=path),
                               lambda b: None)
            try:
                server._open_keylog_out()
                server._close_keylog_out()
            except InputError as exc:
                os.write(wfd, str(exc).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        msg = r.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return msg


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the listener as another user")
def test_not_owner_refuses_with_a_clear_error() -> None:
    d = tempfile.mkdtemp(prefix="tlsmirror-keylog-")
    try:
        os.chmod(d, 0o777)
        path = os.path.join(d, "shared.log")
        with open(path, "w") as f:
            f.write("")
        os.chmod(path, 0o666)  # writable by the listener's user, but owned by root
        msg = _open_as(65534, path)
        assert msg.startswith(f"keylog_out {path} has mode 0666 and cannot be made 0600"), msg
        assert "owned by uid 0" in msg and "chmod 600" in msg and "\n" not in msg
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 and os.path.getsize(path) == 0
        os.chmod(path, 0o600)
        os.chown(path, 65534, 65534)
        assert _open_as(65534, path) == ""  # its own file, already private: fine
    finally:
        shutil.rmtree(d)


def test_refusal_stops_the_listener_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "keys.log"
    out.write_text("")
    out.chmod(0o644)

    def no(fd: int, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", no)
    server = KeyServer(KeyServerConfig(host="127.0.0.1", port=0, tls=False, keylog_out=str(out)),
                       lambda b: None)
    with pytest.raises(InputError, match="mode 0644 and cannot be made 0600"):
        server._open_keylog_out()
    assert server._keylog_out is None
