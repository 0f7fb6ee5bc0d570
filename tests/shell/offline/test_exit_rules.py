"""One rule for every capture-file command (issue 15 point 8): ``-o`` overwrites and ``--append``
appends, for every command and format; input that cannot work is one clear line and exit 1 (a key log
without a usable line unless the capture holds secrets, a capture given as ``--keylog``); records lost
for good (a collector's final rejection) exit 1; summary reasons grouped, not cut into look-alikes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.otlp_receiver import HttpReceiver
from tests.support.paths import SAMPLES
from tests.support.pcapwriter import Pcapng, write_capture
from tlsmirror.shell.commands import main
from tlsmirror.shell.offline.pcapfile import CapturedFrame, CaptureReader

PCAP = str(SAMPLES / "api-mixed.pcap")
KEYLOG = str(SAMPLES / "api-mixed.keylog")


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def with_secrets(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The sample as pcapng with its key log in a Decryption Secrets Block before the packets."""
    ng = Pcapng().interface(1).secrets(Path(KEYLOG).read_bytes())
    with CaptureReader(PCAP) as reader:
        for item in reader:
            assert type(item) is CapturedFrame
            ng.packet(item.ts, item.data)
    return write_capture(tmp_path_factory.mktemp("dsb") / "inline.pcapng", ng.to_bytes())


@pytest.mark.parametrize("command, fmt", [("replay", "jsonl"), ("replay", "har"), ("decrypt", None)])
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_output_is_overwritten(command: str, fmt: str | None, workers: list[str], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = [command, PCAP, "--keylog", KEYLOG, "-o", str(out), *workers, *(["--format", fmt] if fmt else [])]
    assert _run(args, capsys)[0] == 0
    first = out.read_bytes()
    out.write_bytes(first + b"left over from before\n" * 1000)
    assert _run(args, capsys)[0] == 0
    assert out.read_bytes() == first


@pytest.mark.parametrize("command", ["replay", "decrypt"])
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_append_appends(command: str, workers: list[str], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    args = [command, PCAP, "--keylog", KEYLOG, "-o", str(out), *workers]
    assert _run(args, capsys)[0] == 0
    once = out.read_bytes()
    assert _run([*args, "--append"], capsys)[0] == 0
    assert out.read_bytes() == once + once


def test_har_cannot_be_appended(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["replay", PCAP, "--keylog", KEYLOG, "--format", "har", "--append",
                      "-o", str(tmp_path / "x.har")], capsys)
    assert code == 1 and len(err.splitlines()) == 1 and "cannot be appended" in err


@pytest.mark.parametrize("command", ["replay", "decrypt"])
def test_key_log_without_usable_line_is_an_error(command: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.keylog"
    bad.write_text("".join(f"not a key log line {i}\n" for i in range(50)))
    code, err = _run([command, PCAP, "--keylog", str(bad), "-o", str(tmp_path / "o")], capsys)
    assert code == 1
    assert err.splitlines() == [f"tlsmirror: error: {bad}: no usable key log line (50 lines skipped, line 1: "
                                "unknown label not); is this an NSS key log?"]
    empty = tmp_path / "empty.keylog"
    empty.write_text("")
    code, err = _run([command, PCAP, "--keylog", str(empty), "-o", str(tmp_path / "o")], capsys)
    assert code == 1 and "no usable key log line (the file is empty)" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command", ["replay", "decrypt"])
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_unusable_key_log_is_a_warning_when_the_capture_holds_secrets(
        command: str, workers: list[str], with_secrets: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.keylog"
    bad.write_text("nothing here\n")
    code, err = _run([command, with_secrets, "--keylog", str(bad), "-o", str(tmp_path / "o"), *workers], capsys)
    assert code == 0
    assert f"{bad}: no usable key log line (1 lines skipped, line 1: unknown label nothing); using the " \
           "secrets the capture holds" in err
    assert "12 decrypted" in err  # the secrets block reached every worker


@pytest.mark.parametrize("command", ["replay", "decrypt"])
def test_capture_given_as_key_log_is_one_line(command: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run([command, PCAP, "--keylog", PCAP, "-o", str(tmp_path / "o")], capsys)
    assert code == 1
    assert err.splitlines() == [f"tlsmirror: error: {PCAP}: is a capture file, not an NSS key log "
                                "(--keylog FILE takes a key log; captures are given as arguments)"]


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_summary_groups_equal_reasons(workers: list[str], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.keylog"  # a usable line, for a connection that is not in the capture
    other.write_text(f"CLIENT_RANDOM {'ab' * 32} {'cd' * 48}\n")
    code, err = _run(["replay", PCAP, "--keylog", str(other), "-o", str(tmp_path / "o"), *workers], capsys)
    assert code == 0
    assert "12 TLS connections (12 no_key)" in err
    lines = [x for x in err.splitlines() if x.startswith("  no_key: ")]
    assert len(lines) == 2  # TLS 1.2 and TLS 1.3: one line each, with a count
    assert sum(int(re.match(r"  no_key: (\d+)x ", x).group(1)) for x in lines) == 12  # type: ignore[union-attr]
    assert "other reasons" not in err and "…" not in err and "..." not in err
    assert "no secret for its client random (CLIENT_RANDOM, or a pre-master secret)" in err
    assert re.search(r"\d+ bytes \(in all\) of ciphertext dropped", err)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_replay_exits_1_when_the_collector_rejects_spans(workers: list[str], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with HttpReceiver() as rx:
        rx.fail_next(1000, code="invalid")  # HTTP 400: not retried, the spans are lost for good
        code, err = _run(["replay", PCAP, "--keylog", KEYLOG, "-o", str(tmp_path / "o"), *workers,
                          "--otlp-endpoint", rx.endpoint, "--otlp-protocol", "http", "--flush-timeout", "20"],
                         capsys)
    assert code == 1
    assert re.search(r"OtlpExporter: .*failed 60", err)
