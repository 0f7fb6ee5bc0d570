"""Ctrl-C during start-up (issue 15, point 15): ``tlsmirror run --pcap`` with two workers gets SIGINT
on its whole process group (as a terminal sends it) at several moments while the workers' interpreters
start. The supervisor blocks the signals around each worker's start and the worker unblocks them once its
handlers are in, so nothing prints a traceback (KeyboardInterrupt in an importing worker, or the
multiprocessing resource tracker) and the run drains and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.daemon import ENV, KEYLOG, SAMPLE

# Seconds after the supervisor's first child (the resource tracker, then the workers) appears
MOMENTS = (0.0, 0.1, 0.3, 0.6)


def _children(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return fh.read().split()
    except OSError:
        return []


@pytest.mark.slow  # about 3 s of CPU per start (a parent and two worker interpreters), four starts
@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"),
                    reason="needs /proc/PID/task/PID/children")
def test_sigint_to_the_group_during_start_up_prints_no_traceback(tmp_path: os.PathLike[str]) -> None:
    failures = []
    for moment in MOMENTS:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tlsmirror", "run", "--pcap", SAMPLE, "--keylog", KEYLOG, "--workers", "2",
             "--no-keys", "--no-metrics", "-o", os.devnull, "--pcap-linger", "5"],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not _children(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(moment)
            os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        text = err.decode(errors="replace")
        if proc.returncode != 0 or "Traceback" in text or "KeyboardInterrupt" in text:
            failures.append(f"SIGINT {moment}s after the first child: exit {proc.returncode}\n{text[-1500:]}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"),
                    reason="needs /proc/PID/task/PID/children")
def test_sighup_to_the_group_then_stop_prints_no_resource_tracker_keyerror() -> None:
    """``systemctl kill -s HUP`` (every process of the unit) or a hangup reaches multiprocessing's resource
    tracker too: it used to die of it, a new one was started at exit, and every semaphore the supervisor
    then unregistered printed a KeyError traceback. It now starts with SIGHUP blocked."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlsmirror", "run", "--pcap", SAMPLE, "--keylog", KEYLOG, "--workers", "2",
         "--no-keys", "--no-metrics", "-o", os.devnull, "--pcap-linger", "30"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the tracker and both workers
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    text = err.decode(errors="replace")
    assert proc.returncode == 0, text[-2000:]
    assert "Traceback" not in text and "resource_tracker" not in text, text[-2000:]
