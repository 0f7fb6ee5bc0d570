"""Corrupt data in the middle of a capture (issue 15, point 7): the reader resynchronises to the next
plausible pcap record / valid pcapng block, counts the bytes it skipped and warns once with the offset;
``decrypt`` and ``replay`` finish every connection and exit 0 unless nothing could be read."""

from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.paths import SAMPLES
from tests.support.pcapwriter import Pcapng, ethernet, ipv4, pcap_bytes, tcp, write_capture
from tlsmirror.frames.decoder import FrameDecoder
from tlsmirror.shell.commands import main
from tlsmirror.shell.errors import CaptureFileError
from tlsmirror.shell.offline.pcapfile import MAX_RECORD, CapturedFrame, CaptureReader, EmbeddedSecrets

SAMPLE = SAMPLES / "api-mixed.pcap"
KEYLOG = SAMPLES / "api-mixed.keylog"
BAD = 0xFFFFFFF0


def frame(i: int, size: int = 100) -> bytes:
    return ethernet(ipv4(tcp(bytes([i & 0xFF]) * size, seq=i)))


FRAMES = [(1_700_000_000.0 + i * 0.25, frame(i, 60 + i)) for i in range(40)]


def pcap_offsets(data: bytes, order: str = "<", rec_len: int = 16) -> list[int]:
    """Offsets of every record header of a (valid) pcap file."""
    out, pos = [], 24
    while pos < len(data):
        out.append(pos)
        pos += rec_len + struct.unpack_from(order + "I", data, pos + 8)[0]
    return out


def pcapng_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset, block type) of every block of a little-endian pcapng file."""
    out, pos = [], 0
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        out.append((pos, btype))
        pos += blen
    return out


def read(data: bytes, tmp_path: Path, name: str = "c.pcap") -> tuple[CaptureReader, list[Any]]:
    reader = CaptureReader(write_capture(tmp_path / name, data))
    return reader, list(reader)


# ------------------------------------------------------------------ the reader

@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_pcap_corrupt_length_resynchronises(tmp_path: Path, order: str, nanosecond: bool) -> None:
    data = bytearray(pcap_bytes(FRAMES, byteorder=order, nanosecond=nanosecond))
    offs = pcap_offsets(bytes(data), order)
    struct.pack_into(order + "I", data, offs[17] + 8, BAD)
    reader, got = read(bytes(data), tmp_path)
    assert [f.data for f in got] == [d for i, (_, d) in enumerate(FRAMES) if i != 17]
    assert reader.corrupt_bytes == offs[18] - offs[17] and reader.corrupt_regions == 1
    assert not reader.truncated
    assert reader.warnings == [f"{reader.name}: skipped {offs[18] - offs[17]} bytes of corrupt data (first: "
                               f"record length {BAD} at offset {offs[17]}); read on from the next valid record"]


def test_pcap_length_past_the_end_resynchronises_and_cut_file_still_truncates(tmp_path: Path) -> None:
    data = bytearray(pcap_bytes(FRAMES))
    offs = pcap_offsets(bytes(data))
    # longer than the rest of the file but not implausible on its own (below snaplen, origlen raised too)
    struct.pack_into("<II", data, offs[5] + 8, 200_000, 200_000)
    reader, got = read(bytes(data), tmp_path)
    assert [f.data for f in got] == [d for i, (_, d) in enumerate(FRAMES) if i != 5]
    assert reader.corrupt_bytes == offs[6] - offs[5] and not reader.truncated
    # the same length in the last record is a file cut short, not corruption
    cut = bytearray(pcap_bytes(FRAMES))
    struct.pack_into("<II", cut, offs[-1] + 8, 200_000, 200_000)
    reader, got = read(bytes(cut), tmp_path, "cut.pcap")
    assert len(got) == len(FRAMES) - 1 and reader.truncated and not reader.corrupt_bytes
    assert "truncated record" in reader.warnings[0]


def test_pcap_several_regions_warn_once(tmp_path: Path) -> None:
    data = bytearray(pcap_bytes(FRAMES))
    offs = pcap_offsets(bytes(data))
    for k in (3, 20, 30):
        struct.pack_into("<I", data, offs[k] + 8, BAD)
    data[offs[25] + 16:offs[26]] = b"\xff" * (offs[26] - offs[25] - 16)  # a damaged payload is just data
    reader, got = read(bytes(data), tmp_path)
    assert len(got) == len(FRAMES) - 3 and reader.corrupt_regions == 3
    assert reader.corrupt_bytes == sum(offs[k + 1] - offs[k] for k in (3, 20, 30))
    assert len(reader.warnings) == 1 and "in 3 places" in reader.warnings[0]
    assert f"at offset {offs[3]}" in reader.warnings[0]


def test_pcap_garbage_block_in_the_middle(tmp_path: Path) -> None:
    data = pcap_bytes(FRAMES)
    offs = pcap_offsets(data)
    junk = random.Random(7).randbytes(5000)
    reader, got = read(data[:offs[10]] + junk + data[offs[10]:], tmp_path)
    assert [f.data for f in got] == [d for _, d in FRAMES]
    assert reader.corrupt_bytes == len(junk)


def _pcapng(frames: list[tuple[float, bytes]], secrets_at: int = -1) -> bytes:
    png = Pcapng().interface(1)
    for i, (ts, d) in enumerate(frames):
        if i == secrets_at:
            png.secrets("CLIENT_RANDOM " + "11" * 32 + " " + "22" * 48 + "\n")
        png.packet(ts, d)
    return png.to_bytes()


@pytest.mark.parametrize("damage", ["length", "trailer", "unaligned", "packet"])
def test_pcapng_corrupt_block_resynchronises(tmp_path: Path, damage: str) -> None:
    data = bytearray(_pcapng(FRAMES, secrets_at=30))
    blocks = pcapng_offsets(bytes(data))
    epbs = [off for off, btype in blocks if btype == 6]
    at, nxt = epbs[12], epbs[13]
    if damage == "length":
        struct.pack_into("<I", data, at + 4, BAD)
    elif damage == "trailer":
        struct.pack_into("<I", data, nxt - 4, 12345)
    elif damage == "unaligned":
        struct.pack_into("<I", data, at + 4, nxt - at + 2)
    else:  # a well-framed block whose packet length exceeds it
        struct.pack_into("<I", data, at + 20, 60000)
    reader, got = read(bytes(data), tmp_path, "c.pcapng")
    assert [f.data for f in got if type(f) is CapturedFrame] == [d for i, (_, d) in enumerate(FRAMES) if i != 12]
    assert sum(type(x) is EmbeddedSecrets for x in got) == 1  # the secrets after the damage are kept
    assert reader.corrupt_bytes == nxt - at and reader.corrupt_regions == 1
    assert len(reader.warnings) == 1 and f"at offset {at}" in reader.warnings[0]


def test_nothing_readable_is_an_error_and_headers_stay_strict(tmp_path: Path) -> None:
    data = bytearray(pcap_bytes(FRAMES[:1]))
    struct.pack_into("<I", data, 24 + 8, BAD)
    with pytest.raises(CaptureFileError, match=r"nothing could be read: skipped \d+ bytes .* at offset 24\)$"):
        read(bytes(data), tmp_path)
    png = bytearray(_pcapng(FRAMES[:2]))
    png[8:12] = b"\0\0\0\0"  # the first section header's byte order: not a pcapng file we can read
    with pytest.raises(CaptureFileError, match="corrupt section header at offset 0"):
        read(bytes(png), tmp_path, "c.pcapng")


# ------------------------------------------------------------------ hypothesis

def _sample_records() -> tuple[bytes, list[int]]:
    data = SAMPLE.read_bytes()
    return data, pcap_offsets(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 10_000), length=st.integers(MAX_RECORD + 1, 2**32 - 1))
def test_fuzz_one_corrupt_length_loses_only_that_record(which: int, length: int) -> None:
    data, offs = _sample_records()
    k = which % len(offs)
    bad = bytearray(data)
    struct.pack_into("<I", bad, offs[k] + 8, length)
    with CaptureReader(write_capture(Path(_tmp()) / "f.pcap", bytes(bad))) as reader:
        got = [f.data for f in reader if type(f) is CapturedFrame]
    want = [data[o + 16:(offs[i + 1] if i + 1 < len(offs) else len(data))] for i, o in enumerate(offs) if i != k]
    assert got == want


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(["pcap", "pcapng"]), seed=st.integers(0, 2**32),
       nmut=st.integers(1, 40), span=st.integers(1, 64))
def test_fuzz_random_corruption_never_crashes_or_hangs(fmt: str, seed: int, nmut: int, span: int) -> None:
    rnd = random.Random(seed)
    data = bytearray(pcap_bytes(FRAMES) if fmt == "pcap" else _pcapng(FRAMES, secrets_at=20))
    header = 24 if fmt == "pcap" else 28
    for _ in range(nmut):  # bursts of random bytes after the file header
        at = rnd.randrange(header, len(data))
        data[at:at + span] = rnd.randbytes(min(span, len(data) - at))
    start = time.monotonic()
    dec = FrameDecoder()
    try:
        with CaptureReader(write_capture(Path(_tmp()) / f"f.{fmt}", bytes(data))) as reader:
            n = 0
            for x in reader:
                assert type(x) in (CapturedFrame, EmbeddedSecrets)
                if type(x) is CapturedFrame:
                    dec.decode(x.linktype, x.data, x.ts)
                    n += 1
            assert n <= len(FRAMES) + nmut  # resynchronising never invents many records
            assert reader.corrupt_bytes <= len(data)
    except CaptureFileError as e:
        assert "nothing could be read" in str(e) or "offset 0" in str(e)
    assert time.monotonic() - start < 30


_TMP: list[str] = []


def _tmp() -> str:
    if not _TMP:
        import tempfile
        _TMP.append(tempfile.mkdtemp(prefix="tlsmirror-corrupt-"))
    return _TMP[0]


# ------------------------------------------------------------------ decrypt and replay, end to end

def _calls(path: Path) -> list[tuple[Any, ...]]:
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    return [(r["client"]["port"], r["request_start_ts"], r["method"], r["target"], r["status"]) for r in recs]


def _flow_ports(record: bytes) -> tuple[int, int]:
    seg = FrameDecoder().decode(1, record, 0.0)
    assert seg is not None
    return seg.sport, seg.dport


def _sample_as(fmt: str) -> tuple[bytes, list[int], list[bytes]]:
    """The sample capture as pcap or pcapng: the bytes, the offset of each packet record, its frame."""
    data, offs = _sample_records()
    frames = [data[o + 16:(offs[i + 1] if i + 1 < len(offs) else len(data))] for i, o in enumerate(offs)]
    if fmt == "pcap":
        return data, offs, frames
    ts = [struct.unpack_from("<II", data, o) for o in offs]
    png = _pcapng([(s + us / 1e6, f) for (s, us), f in zip(ts, frames, strict=True)])
    return png, [off for off, btype in pcapng_offsets(png) if btype == 6], frames


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("payload", [False, True])
def test_replay_and_decrypt_read_on_after_corruption(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     fmt: str, payload: bool) -> None:
    data, offs, frames = _sample_as(fmt)
    clean = write_capture(tmp_path / f"clean.{fmt}", data)
    assert main(["replay", clean, "--keylog", str(KEYLOG), "-o", str(tmp_path / "clean.jsonl")]) == 0
    assert main(["decrypt", clean, "--keylog", str(KEYLOG), "-o", str(tmp_path / "clean.dec")]) == 0
    capsys.readouterr()
    # a record in the middle: a pure ACK (the calls stay the same) or one carrying TLS data
    mid = len(offs) // 2
    dec = FrameDecoder()

    def carries(i: int) -> bool:
        seg = dec.decode(1, frames[i], 0.0)
        return seg is not None and bool(seg.payload)

    k = next(i for i in range(mid, len(offs)) if carries(i) == payload)
    bad = bytearray(data)
    struct.pack_into("<I", bad, offs[k] + (8 if fmt == "pcap" else 4), BAD)
    path = write_capture(tmp_path / f"bad.{fmt}", bytes(bad))
    assert main(["replay", path, "--keylog", str(KEYLOG), "-o", str(tmp_path / "bad.jsonl")]) == 0
    err = capsys.readouterr().err
    size = (offs[k + 1] - offs[k]) if fmt == "pcapng" else 16 + len(frames[k])
    assert f"skipped {size} bytes of corrupt data (first: " in err and f"at offset {offs[k]})" in err
    assert "exchanges" in err.splitlines()[-1] or "exchange" in err
    want, got = _calls(tmp_path / "clean.jsonl"), _calls(tmp_path / "bad.jsonl")
    if not payload:
        assert got == want
    else:
        damaged = set(_flow_ports(frames[k]))
        assert [c for c in got if c[0] not in damaged] == [c for c in want if c[0] not in damaged]
        assert set(got) <= set(want)
    # decrypt: every connection is still finished and reported
    assert main(["decrypt", path, "--keylog", str(KEYLOG), "-o", str(tmp_path / "bad.dec")]) == 0
    err = capsys.readouterr().err
    assert f"skipped {size} bytes of corrupt data" in err
    def by_client(p: Path) -> dict[str, dict[str, Any]]:
        recs = [json.loads(x) for x in p.read_text().splitlines()]
        return {r["client"]: {k: v for k, v in r.items() if k not in ("id", "end")} for r in recs}

    conns, clean_conns = by_client(tmp_path / "bad.dec"), by_client(tmp_path / "clean.dec")
    assert conns.keys() == clean_conns.keys()
    damaged_client = {c for c in conns if int(c.rsplit(":", 1)[1]) in _flow_ports(frames[k])}
    assert len(damaged_client) == 1
    assert {c: r for c, r in conns.items() if payload is False or c not in damaged_client} == {
        c: r for c, r in clean_conns.items() if payload is False or c not in damaged_client}


def test_replay_of_an_unreadable_capture_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(pcap_bytes(FRAMES))
    struct.pack_into("<I", data, 24 + 8, BAD)
    data[24 + 16:] = b"\xee" * (len(data) - 40)
    path = write_capture(tmp_path / "gone.pcap", bytes(data))
    assert main(["replay", path, "-o", str(tmp_path / "x.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "nothing could be read" in err and "Traceback" not in err
