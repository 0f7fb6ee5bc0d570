"""Tests of the capture file reader: pcap, pcapng, gzip, truncation, errors, and the real corpus."""

from __future__ import annotations

import glob
import gzip
import json
import os
import random
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.paths import CORPUS
from tests.support.pcapwriter import (
    Pcapng,
    conversation_pcap,
    ethernet,
    ipv4,
    pcap_bytes,
    sll,
    tcp,
    tcp_conversation,
    write_capture,
)
from tlsmirror.frames.decoder import FrameDecoder
from tlsmirror.shell.errors import CaptureFileError
from tlsmirror.shell.offline.pcapfile import (
    CapturedFrame,
    CaptureReader,
    EmbeddedSecrets,
    read_capture,
)

KEYLOG = "CLIENT_RANDOM " + "11" * 32 + " " + "22" * 48 + "\n"


def frame(i: int, size: int = 100) -> bytes:
    return ethernet(ipv4(tcp(bytes([i & 0xFF]) * size, seq=i)))


FRAMES = [(1_700_000_000.0 + i * 0.25 + 0.000001, frame(i)) for i in range(20)]


def items(path: str | Path) -> list[CapturedFrame | EmbeddedSecrets]:
    return list(read_capture(path))


# ------------------------------------------------------------------ pcap

@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, byteorder: str, nanosecond: bool) -> None:
    path = write_capture(tmp_path / "c.pcap", pcap_bytes(FRAMES, linktype=113, byteorder=byteorder,
                                                         nanosecond=nanosecond))
    got = items(path)
    assert [f.data for f in got] == [d for _, d in FRAMES]  # type: ignore[union-attr]
    assert all(isinstance(f, CapturedFrame) and f.linktype == 113 and f.interface == 0 for f in got)
    for f, (ts, _) in zip(got, FRAMES, strict=True):
        assert abs(f.ts - ts) < 1e-7


def test_pcap_nanosecond_precision(tmp_path: Path) -> None:
    data = pcap_bytes([(1.000000123, b"x" * 60)], nanosecond=True)
    (f,) = items(write_capture(tmp_path / "n.pcap", data))
    assert isinstance(f, CapturedFrame) and f.ts == pytest.approx(1.000000123, abs=1e-12)


def test_pcap_linktype_fcs_bits_masked(tmp_path: Path) -> None:
    data = bytearray(pcap_bytes(FRAMES[:1]))
    data[20:24] = struct.pack("<I", 1 | 0x10000000 | (2 << 29))  # "FCS present" bits
    (f,) = items(write_capture(tmp_path / "fcs.pcap", bytes(data)))
    assert isinstance(f, CapturedFrame) and f.linktype == 1


def test_pcap_records_larger_than_chunks(tmp_path: Path) -> None:
    frames = [(float(i), bytes([i]) * random.Random(i).randrange(1, 9000)) for i in range(200)]
    path = write_capture(tmp_path / "big.pcap", pcap_bytes(frames))
    reader = CaptureReader(path, chunk_size=4096)
    got = [(f.ts, f.data) for f in reader]  # type: ignore[union-attr]
    assert got == frames
    assert not reader.truncated and reader.warnings == [] and reader.frames == 200


# ------------------------------------------------------------------ pcapng

@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_pcapng_interfaces_with_different_resolutions(tmp_path: Path, byteorder: str) -> None:
    png = Pcapng(byteorder)
    png.interface(1)  # default microseconds
    png.interface(113, tsresol=9)  # nanoseconds
    png.interface(101, tsresol=0x80 | 20)  # 2^-20 s
    png.interface(1, tsresol=3, tsoffset=1_000_000)  # ms, plus an offset in seconds
    expected = []
    for i in range(12):
        iface = i % 4
        ts = 1_700_000_000.5 + i * 0.125
        png.packet(ts, frame(i), interface=iface, comment="hi" if i == 3 else None)
        expected.append((ts, (1, 113, 101, 1)[iface], iface, frame(i)))
    got = items(write_capture(tmp_path / "m.pcapng", png.to_bytes()))
    assert len(got) == 12
    for f, (ts, lt, iface, data) in zip(got, expected, strict=True):
        assert isinstance(f, CapturedFrame)
        assert (f.linktype, f.interface, f.data) == (lt, iface, data)
        assert f.ts == pytest.approx(ts, abs=1e-6)


def test_pcapng_multiple_sections_renumber_interfaces(tmp_path: Path) -> None:
    png = Pcapng("<").interface(1).packet(1.0, frame(1))
    png.section(">").interface(113, tsresol=9).interface(1).packet(2.0, sll(b"x" * 40), 0)
    png.packet(3.0, frame(3), 1)
    got = items(write_capture(tmp_path / "s.pcapng", png.to_bytes()))
    assert [(f.linktype, f.interface, f.ts) for f in got] == [  # type: ignore[union-attr]
        (1, 0, 1.0), (113, 1, 2.0), (1, 2, 3.0)]


def test_pcapng_simple_and_obsolete_packet_blocks(tmp_path: Path) -> None:
    for order in "<>":
        png = Pcapng(order).interface(1).packet(5.0, frame(0)).simple_packet(frame(1))
        png.obsolete_packet(6.0, frame(2)).block(0x00000BAD, b"custom").block(4, b"\0\0\0\0")
        png.packet(7.0, frame(3))
        got = items(write_capture(tmp_path / "spb.pcapng", png.to_bytes()))
        assert [(f.ts, f.data) for f in got] == [  # type: ignore[union-attr]
            (5.0, frame(0)), (5.0, frame(1)), (6.0, frame(2)), (7.0, frame(3))]


def test_pcapng_simple_packet_snaplen(tmp_path: Path) -> None:
    png = Pcapng().interface(1, snaplen=64).simple_packet(b"a" * 100)
    (f,) = items(write_capture(tmp_path / "snap.pcapng", png.to_bytes()))
    assert isinstance(f, CapturedFrame) and f.data == b"a" * 64


def test_decryption_secrets_position_preserved(tmp_path: Path) -> None:
    png = Pcapng().secrets(KEYLOG).interface(1).packet(10.0, frame(0)).packet(11.0, frame(1))
    png.secrets(KEYLOG.encode() * 2).packet(12.0, frame(2)).secrets(b"x", secrets_type=0x57474B4C)
    png.secrets("last\n")
    got = items(write_capture(tmp_path / "dsb.pcapng", png.to_bytes()))
    kinds = [(type(x).__name__, x.ts) for x in got]
    assert kinds == [("EmbeddedSecrets", 0.0), ("CapturedFrame", 10.0), ("CapturedFrame", 11.0),
                     ("EmbeddedSecrets", 11.0), ("CapturedFrame", 12.0), ("EmbeddedSecrets", 12.0)]
    assert got[0].data == KEYLOG.encode() and got[3].data == KEYLOG.encode() * 2
    assert got[5].data == b"last\n"
    assert "22" * 48 not in repr(got[0])  # secrets stay out of reprs


def test_unknown_interface_packet_is_skipped_with_warning(tmp_path: Path) -> None:
    png = Pcapng().interface(1).packet(1.0, frame(0))
    data = png.to_bytes() + Pcapng().interface(1).packet(2.0, frame(1)).to_bytes()[28:]  # drop SHB, keep IDB
    # hand-write an EPB for interface 5
    body = struct.pack("<IIIII", 5, 0, 0, 4, 4) + b"abcd"
    data += struct.pack("<II", 6, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    reader = CaptureReader(write_capture(tmp_path / "u.pcapng", data))
    got = list(reader)
    assert len(got) == 2 and reader.skipped == 1
    assert any("undefined interface 5" in w for w in reader.warnings)


# ------------------------------------------------------------------ gzip

def test_gzip_pcap_and_pcapng(tmp_path: Path) -> None:
    p1 = write_capture(tmp_path / "a.pcap.gz", pcap_bytes(FRAMES), gzip=True)
    png = Pcapng().interface(1).secrets(KEYLOG)
    for ts, d in FRAMES:
        png.packet(ts, d)
    p2 = write_capture(tmp_path / "b.pcapng.gz", png.to_bytes(), gzip=True)
    r1 = CaptureReader(p1)
    assert r1.compressed and r1.format == "pcap"
    assert [f.data for f in r1] == [d for _, d in FRAMES]  # type: ignore[union-attr]
    got = items(p2)
    assert isinstance(got[0], EmbeddedSecrets) and len(got) == 21


def test_truncated_gzip_stream_stops_quietly(tmp_path: Path) -> None:
    frames = [(float(i), os.urandom(1000)) for i in range(300)]  # incompressible: the cut loses frames
    comp = gzip.compress(pcap_bytes(frames))
    path = write_capture(tmp_path / "t.pcap.gz", comp[: len(comp) // 2])
    reader = CaptureReader(path)
    got = list(reader)
    assert 0 < len(got) < 300 and reader.truncated
    assert [f.data for f in got] == [d for _, d in frames[: len(got)]]  # type: ignore[union-attr]


# ------------------------------------------------------------------ truncation and errors

@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_truncated_final_record_yields_prefix(tmp_path: Path, kind: str) -> None:
    if kind == "pcap":
        data = pcap_bytes(FRAMES)
    else:
        png = Pcapng().interface(1)
        for ts, d in FRAMES:
            png.packet(ts, d)
        data = png.to_bytes()
    record = len(data) // len(FRAMES)
    for cut in (len(data) - 1, len(data) - record + 5, len(data) - record + 20, len(data) - 3 * record // 2):
        reader = CaptureReader(write_capture(tmp_path / f"t.{kind}", data[:cut]))
        got = list(reader)
        assert [f.data for f in got] == [d for _, d in FRAMES[: len(got)]]  # type: ignore[union-attr]
        assert len(got) in (len(FRAMES) - 1, len(FRAMES) - 2)
        assert reader.truncated and "truncated" in reader.warnings[0]
    reader = CaptureReader(write_capture(tmp_path / "whole", data))
    assert len(list(reader)) == 20 and not reader.truncated


def test_header_only_files_are_empty_captures(tmp_path: Path) -> None:
    assert items(write_capture(tmp_path / "h.pcap", pcap_bytes([]))) == []
    assert items(write_capture(tmp_path / "h.pcapng", Pcapng().to_bytes())) == []


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CaptureFileError, match=r"^.*missing\.pcap: cannot open: "):
        CaptureReader(tmp_path / "missing.pcap")
    with pytest.raises(CaptureFileError, match="cannot open"):
        CaptureReader(tmp_path)
    with pytest.raises(CaptureFileError, match=r"empty\.pcap: empty file$"):
        CaptureReader(write_capture(tmp_path / "empty.pcap", b""))
    with pytest.raises(CaptureFileError, match=r"x\.pcap: not a pcap or pcapng file \(magic 0x3c68746d\)$"):
        CaptureReader(write_capture(tmp_path / "x.pcap", b"<html><body>nope</body></html>"))
    with pytest.raises(CaptureFileError, match="too short"):
        CaptureReader(write_capture(tmp_path / "s.pcap", b"\xd4\xc3"))
    with pytest.raises(CaptureFileError, match="truncated pcap file header"):
        CaptureReader(write_capture(tmp_path / "th.pcap", pcap_bytes([])[:10]))
    with pytest.raises(CaptureFileError, match=r"empty file \(after gzip decompression\)"):
        CaptureReader(write_capture(tmp_path / "e.gz", b"", gzip=True))
    gen = read_capture(tmp_path / "missing.pcapng")  # the generator raises on first use
    with pytest.raises(CaptureFileError):
        next(gen)


def test_corrupt_structures_raise(tmp_path: Path) -> None:
    good = Pcapng().interface(1).packet(1.0, frame(0)).to_bytes()
    bad_bom = good[:8] + b"\0\0\0\0" + good[12:]
    with pytest.raises(CaptureFileError, match="corrupt section header"):
        items(write_capture(tmp_path / "b1.pcapng", bad_bom))
    bad_trailer = good[:-4] + b"\0\0\0\0"
    with pytest.raises(CaptureFileError, match="trailing length mismatch"):
        items(write_capture(tmp_path / "b2.pcapng", bad_trailer))
    huge = pcap_bytes([]) + struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 0x7FFFFFFF)
    with pytest.raises(CaptureFileError, match=r"nothing could be read: .*record length 2147483647 at offset 24"):
        items(write_capture(tmp_path / "b3.pcap", huge))
    version2 = bytearray(good)
    version2[12:14] = b"\x02\0"
    with pytest.raises(CaptureFileError, match="unsupported pcapng version 2"):
        items(write_capture(tmp_path / "b4.pcapng", bytes(version2)))


# ------------------------------------------------------------------ round trips through the decoder

def test_conversation_round_trip(tmp_path: Path) -> None:
    chunks = [(0, b"GET / HTTP/1.1\r\n\r\n"), (1, os.urandom(5000)), (0, b"bye")]
    segs = tcp_conversation(chunks, mss=1000)
    for link, keylog in (("ethernet", None), ("sll", None), ("raw", KEYLOG)):
        path = write_capture(tmp_path / f"conv-{link}", conversation_pcap(chunks, link=link, keylog=keylog,
                                                                         mss=1000))
        dec = FrameDecoder()
        got = []
        secrets = []
        for x in read_capture(path):
            if isinstance(x, EmbeddedSecrets):
                secrets.append(x.data)
            else:
                seg = dec.decode(x.linktype, x.data, x.ts)
                assert seg is not None
                got.append(seg)
        assert [(s.src, s.sport, s.seq, s.ack, s.flags, s.payload) for s in got] == [
            (s.src, s.sport, s.seq, s.ack, s.flags, s.payload) for s in segs]
        assert all(abs(a.ts - b.ts) < 1e-9 for a, b in zip(got, segs, strict=True))
        assert secrets == ([KEYLOG.encode()] if keylog else [])


def test_real_tls_session_capture(tmp_path: Path) -> None:
    tlspair = pytest.importorskip("tests.support.tlspair")
    transcript, _ = tlspair.run_session(tls_version="1.3", tmpdir=tmp_path)
    data = conversation_pcap(transcript.flights, keylog=transcript.keylog)
    got = items(write_capture(tmp_path / "tls.pcapng", data))
    assert isinstance(got[0], EmbeddedSecrets) and got[0].data == transcript.keylog.encode()
    dec = FrameDecoder()
    streams = [b"", b""]
    for x in got[1:]:
        assert isinstance(x, CapturedFrame)
        seg = dec.decode(x.linktype, x.data, x.ts)
        assert seg is not None
        streams[0 if seg.sport == 40000 else 1] += seg.payload
    sent = [b"".join(d for direction, d in transcript.flights if direction == k) for k in (0, 1)]
    assert streams == sent and streams[0][:1] == b"\x16"  # starts with a TLS handshake record


# ------------------------------------------------------------------ fuzzing

def _read_all(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.cap")
        with open(path, "wb") as f:
            f.write(data)
        try:
            for x in read_capture(path):
                assert isinstance(x, CapturedFrame | EmbeddedSecrets)
        except CaptureFileError as e:
            assert str(e).startswith(path + ": ") and "\n" not in str(e)


PREFIXES = [b"", pcap_bytes([]), pcap_bytes([], byteorder=">", nanosecond=True), Pcapng().to_bytes(),
            Pcapng(">").interface(1).to_bytes(), b"\x1f\x8b"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(PREFIXES), data=st.binary(max_size=300))
def test_fuzz_random_bytes_only_raise_capture_file_error(prefix: bytes, data: bytes) -> None:
    _read_all(prefix + data)


def _valid_file() -> bytes:
    png = Pcapng().interface(1, tsresol=9).secrets(KEYLOG).packet(1.0, frame(0), comment="c")
    png.simple_packet(frame(1)).section(">").interface(113).obsolete_packet(2.0, sll(b"x" * 30))
    return png.to_bytes()


VALID_FILES = [_valid_file(), pcap_bytes(FRAMES[:3]), gzip.compress(pcap_bytes(FRAMES[:3]))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(idx=st.integers(0, len(VALID_FILES) - 1), seed=st.integers(0, 2**32), nmut=st.integers(1, 6),
       cut=st.integers(0, 2000))
def test_fuzz_mutated_files_only_raise_capture_file_error(idx: int, seed: int, nmut: int, cut: int) -> None:
    rnd = random.Random(seed)
    data = bytearray(VALID_FILES[idx])
    for _ in range(nmut):
        data[rnd.randrange(len(data))] = rnd.randrange(256)
    _read_all(bytes(data[:cut]))
    _read_all(bytes(data))


# ------------------------------------------------------------------ the real corpus

def _corpus_files() -> list[str]:
    return sorted(f for f in glob.glob(str(CORPUS / "**" / "*.pcap*"), recursive=True)
                  if f.endswith((".pcap", ".pcapng", ".gz")))


@pytest.mark.corpus
@pytest.mark.skipif(not (CORPUS / "cases.json").is_file(), reason="corpus not present")
def test_corpus_reads_without_error() -> None:
    files = _corpus_files()
    assert len(files) >= 200
    total = 0
    for path in files:
        reader = CaptureReader(path)
        dec = FrameDecoder()
        for x in reader:
            if isinstance(x, CapturedFrame):
                total += 1
                dec.decode(x.linktype, x.data, x.ts)
        assert not reader.truncated and reader.warnings == [], path
        assert dec.counters["truncated"] == 0 and dec.counters["unknown_linktype"] == 0, path
    assert total > 10000


@pytest.mark.corpus
@pytest.mark.skipif(not (CORPUS / "cases.json").is_file(), reason="corpus not present")
def test_corpus_embedded_secrets() -> None:
    cases = json.loads((CORPUS / "cases.json").read_text())
    embedded = [c["capture"] for c in cases if c["keytype"] == "embedded"]
    assert len(embedded) == 2
    for capture in embedded:
        got = items(CORPUS / capture)
        secrets = [x for x in got if isinstance(x, EmbeddedSecrets)]
        assert secrets, capture
        text = b"".join(s.data for s in secrets)
        assert b"CLIENT_RANDOM" in text or b"RSA" in text or b"TRAFFIC_SECRET" in text
        assert sum(isinstance(x, CapturedFrame) for x in got) > 0
