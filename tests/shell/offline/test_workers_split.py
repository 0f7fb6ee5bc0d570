"""`replay --workers N` splitting flows in the reader's buffer: the common frames (Ethernet, 802.1Q,
IPv4/IPv6, TCP) are hashed from fixed offsets and the other workers' dropped unread; tunnels, fragments,
IP options and other links go through the full hasher and decoder. The records stay the same for any N,
the engine's clock included."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.pcapwriter import (
    Pcapng,
    ethernet,
    geneve,
    ipv4,
    ipv4_fragments,
    ipv6,
    ipv6_ext,
    ipv6_fragments,
    segment_packet,
    tcp,
    tcp_conversation,
    udp,
    vxlan,
    write_capture,
)
from tlsmirror.frames.decoder import FrameDecoder
from tlsmirror.frames.events import TcpSegment
from tlsmirror.frames.flowhash import FlowHasher, tcp_key_at
from tlsmirror.pipeline import Engine, EngineConfig
from tlsmirror.shell.commands import main
from tlsmirror.shell.offline.replay import ReplayRun, _render
from tlsmirror.shell.offline.share import FlowShare
from tlsmirror.shell.offline.workers import PartWriter

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _req(path: str, pad: int = 0) -> bytes:
    return f"GET /{path} HTTP/1.1\r\nHost: split.test\r\nX-Pad: {'p' * pad}\r\n\r\n".encode()


def _ip_packets(seg: TcpSegment, shape: str) -> list[bytes]:
    """The IP packets carrying ``seg`` in ``shape``."""
    packet = segment_packet(seg)
    if shape == "frag4" and len(packet) > 100:
        return ipv4_fragments(packet, 48)
    if shape == "frag6" and len(packet) > 120:
        return ipv6_fragments(packet, 48, ident=seg.seq)
    if shape == "options":
        t = tcp(seg.payload, sport=seg.sport, dport=seg.dport, seq=seg.seq, ack=seg.ack, flags=seg.flags)
        return [ipv4(t, src=seg.src, dst=seg.dst, options=b"\x01\x01\x01\x00")]  # NOPs, end of list
    return [packet]


def _frames(seg: TcpSegment, shape: str, tunnel_port: int) -> list[tuple[int, bytes]]:
    """(interface, frame) for ``seg`` in ``shape``: interface 0 is Ethernet, 1 raw IP (linktype 101)."""
    out = []
    for packet in _ip_packets(seg, shape):
        if shape == "raw":
            out.append((1, packet))
        elif shape == "vlan":
            out.append((0, ethernet(packet, vlans=[7])))
        elif shape == "qinq":
            out.append((0, ethernet(packet, vlans=[(0x88A8, 100), 200])))
        elif shape == "vxlan":  # the outer UDP source port per connection, as a VTEP picks it
            outer = udp(vxlan(ethernet(packet)), sport=tunnel_port, dport=4789)
            out.append((0, ethernet(ipv4(outer, src="192.0.2.1", dst="192.0.2.2", proto=17))))
        elif shape == "geneve":
            outer = udp(geneve(ethernet(packet)), sport=tunnel_port, dport=6081)
            out.append((0, ethernet(ipv4(outer, src="192.0.2.1", dst="192.0.2.2", proto=17))))
        else:
            out.append((0, ethernet(packet)))
    return out


SHAPES = ["plain", "vlan", "qinq", "ipv6", "vlan6", "vxlan", "geneve", "frag4", "frag6", "options", "raw"]


def _mixed_capture(tmp: Path) -> tuple[str, int]:
    """Connections in every shape (three of each, staggered), non-TCP frames between them, and one plain
    connection idle 400 s between its two exchanges while the others talk: in one process their segments
    expire it (idle_timeout 300 s). Returns the path and the number of exchanges."""
    events: list[tuple[float, int, bytes]] = []
    exchanges = 0
    port = 41000
    for rep in range(3):
        for i, shape in enumerate(SHAPES):
            port += 1
            six = shape in ("ipv6", "vlan6", "frag6")
            client = ("2001:db8::1" if six else "10.0.0.1", port)
            server = ("2001:db8::2" if six else "10.0.0.2", 80)
            start = 1000.0 + rep * 150.0 + i * 7.0
            chunks = [(0, _req(f"{shape}/{rep}/a", 120)), (1, OK), (0, _req(f"{shape}/{rep}/b")), (1, OK)]
            exchanges += 2
            segs = tcp_conversation(chunks, client=client, server=server, ts=start, step=0.5)
            for seg in segs:
                for iface, frame in _frames(seg, "ipv6" if shape == "vlan6" else shape, port + 10000):
                    if shape == "vlan6":
                        frame = ethernet(frame[14:], vlans=[9])
                    events.append((seg.ts, iface, frame))
    idle = tcp_conversation([(0, _req("idle1")), (1, OK), (0, _req("idle2")), (1, OK)],
                            client=("10.0.0.9", 40000), server=("10.0.0.2", 80), ts=1001.0, close=False)
    idle = [s if i < 5 else TcpSegment(s.ts + 400.0, s.src, s.dst, s.sport, s.dport, s.seq, s.ack, s.flags,
                                       s.payload) for i, s in enumerate(idle)]
    events += [(s.ts, 0, ethernet(segment_packet(s))) for s in idle]
    exchanges += 2
    for k in range(40):  # DNS, ARP: not TCP, in nobody's clock
        ts = 1000.25 + k * 11.0
        events.append((ts, 0, ethernet(ipv4(udp(b"\x12\x34" + b"\0" * 10, sport=5353, dport=53), proto=17))))
        events.append((ts, 0, ethernet(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\0" * 20, ethertype=0x0806)))
    events.sort(key=lambda e: e[0])
    png = Pcapng().interface(1, tsresol=9).interface(101, tsresol=9)
    for ts, iface, frame in events:
        png.packet(ts, frame, iface)
    return write_capture(tmp / "mixed.pcapng", png.to_bytes()), exchanges


def _replay(tmp: Path, name: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> bytes:
    out = tmp / name
    assert main(["replay", *args, "-o", str(out)]) == 0
    capsys.readouterr()
    return out.read_bytes()


def _without(data: bytes, *keys: str) -> list[str]:
    recs = [json.loads(x) for x in data.splitlines()]
    return [json.dumps({k: v for k, v in r.items() if k not in keys}, sort_keys=True) for r in recs]


def test_every_shape_same_records_for_any_n(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cap, exchanges = _mixed_capture(tmp_path)
    plain = _replay(tmp_path, "plain.jsonl", [cap], capsys)
    outs = [_replay(tmp_path, f"w{n}.jsonl", [cap, "--workers", str(n)], capsys) for n in (1, 2, 3)]
    assert len(outs[0].splitlines()) == exchanges
    assert _without(outs[0], "route") == _without(outs[1], "route") == _without(outs[2], "route")
    assert sorted(_without(outs[1], "route", "connection_id")) == sorted(_without(plain, "route",
                                                                                  "connection_id"))
    recs = {r["path"]: r for r in (json.loads(x) for x in outs[1].splitlines())}
    assert recs["/idle1"]["connection_id"] != recs["/idle2"]["connection_id"]  # expired while idle
    assert {p.split("/")[1] for p in recs if p.count("/") == 3} == set(SHAPES)


def test_both_paths_taken_and_flows_shared_out(tmp_path: Path) -> None:
    cap, exchanges = _mixed_capture(tmp_path)
    paths: list[set[str]] = []
    for k in range(2):
        engine = Engine(EngineConfig(http=True))
        part = PartWriter(str(tmp_path / f"part{k}"), _render("jsonl", "auto"))
        run = ReplayRun(engine, [part])
        share = run.share = FlowShare(run, k, 2)
        run.run(cap)
        share.finish()
        part.close()
        assert share.skipped > 0  # the other worker's common frames, dropped in the reader's buffer
        assert share.full_frames > 0  # tunnels, fragments, options, raw IP: hashed and decoded in full
        assert share.frame_no == run.frames  # every frame of the file counted, skipped or not
        paths.append({json.loads(x)["path"] for x in (tmp_path / f"part{k}").read_bytes().splitlines()})
    assert paths[0] and paths[1] and not paths[0] & paths[1]
    assert len(paths[0] | paths[1]) == exchanges


def _check_frame(frame: bytes) -> None:
    koff, klen, l4 = tcp_key_at(frame, 0, len(frame))
    padded = b"junk" + frame + b"tail"
    assert tcp_key_at(padded, 4, 4 + len(frame)) == ((koff + 4, klen, l4 + 4) if klen else (0, 0, 0))
    if not klen:
        return
    seg = FrameDecoder().decode(1, frame, 1.0)
    assert seg is not None  # claimed: the decoder makes a segment of it
    assert (seg.sport, seg.dport) == struct.unpack_from("!HH", frame, l4)
    assert FlowHasher().key_hash(frame[koff:koff + klen]) == FlowHasher()(1, frame)


COMMON = [
    ethernet(ipv4(tcp(b"x" * 30, sport=1234, dport=443))),
    ethernet(ipv4(tcp(b"", sport=1234, dport=443))),  # padded to 60 bytes: the padding is not payload
    ethernet(ipv4(tcp(b"y", sport=443, dport=1234, options=b"\x02\x04\x05\xb4")), vlans=[5]),
    ethernet(ipv6(tcp(b"z" * 9, sport=5, dport=6)), vlans=[(0x88A8, 1), 2]),
    ethernet(ipv6(tcp(b"", sport=5, dport=6))),
]


@pytest.mark.parametrize("frame", COMMON)
def test_common_frames_are_keyed_like_the_hasher(frame: bytes) -> None:
    assert tcp_key_at(frame, 0, len(frame))[1] in (12, 36)
    _check_frame(frame)


@pytest.mark.parametrize("frame", [
    ethernet(ipv4(tcp(b"x" * 80), mf=True)),
    ethernet(ipv4(tcp(b"x"), options=b"\x01\x01\x01\x00")),
    ethernet(ipv4(udp(b"x" * 20, dport=4789), proto=17)),
    ethernet(ipv6(tcp(b"x"), ext=[ipv6_ext(0)])),
    ethernet(ipv4(tcp(b"x"), total_length=0)),
    ethernet(ipv4(tcp(b"x"), total_length=300)),
    ethernet(ipv4(tcp(b"x"), total_length=30)),
    ethernet(ipv4(tcp(b"x")), vlans=[1, 2, 3]),
    ethernet(ipv4(tcp(b"x")), vlans=[(0x9100, 1)]),
    ethernet(ipv4(tcp(b"x")))[:40],
    ethernet(b"\x00" * 40, ethertype=0x0806),
])
def test_other_frames_go_to_the_full_decoder(frame: bytes) -> None:
    assert tcp_key_at(frame, 0, len(frame)) == (0, 0, 0)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(COMMON), st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
       st.integers(0, 130))
def test_mutated_frames_claimed_only_when_the_decoder_agrees(base: bytes, edits: list[tuple[int, int]],
                                                              cut: int) -> None:
    frame = bytearray(base)
    for pos, value in edits:
        if pos < len(frame):
            frame[pos] = value
    _check_frame(bytes(frame[:len(frame) - cut] if cut < len(frame) else b""))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_never_break_the_key(data: bytes) -> None:
    _check_frame(data)


def _idle_capture(tmp: Path, shape: str) -> str:
    """Connection A (plain) idles 400 s; connection B in ``shape``, in the other share of two, talks
    meanwhile: only B's frames, dropped in the reader's buffer by A's worker, can expire A there."""
    a = tcp_conversation([(0, _req("a1")), (1, OK), (0, _req("a2")), (1, OK)], client=("10.0.0.1", 40000),
                         server=("10.0.0.2", 80), ts=1000.0, close=False)
    a = [s if i < 5 else TcpSegment(s.ts + 400.0, s.src, s.dst, s.sport, s.dport, s.seq, s.ack, s.flags,
                                    s.payload) for i, s in enumerate(a)]
    hasher = FlowHasher()
    frames = [(s.ts, ethernet(segment_packet(s))) for s in a]
    share_a = hasher(1, frames[0][1]) % 2
    six = shape in ("ipv6", "vlan6")
    for port in range(41000, 41100):
        b = tcp_conversation([(0, _req("b")), (1, OK)], client=("2001:db8::3" if six else "10.0.0.3", port),
                             server=("2001:db8::2" if six else "10.0.0.2", 80), ts=1350.0)
        fb = [(s.ts, f) for s in b for _i, f in _frames(s, "ipv6" if six else shape, 0)]
        if shape == "vlan6":
            fb = [(ts, ethernet(f[14:], vlans=[9])) for ts, f in fb]
        if hasher(1, fb[0][1]) % 2 != share_a:
            break
    assert all(tcp_key_at(f, 0, len(f))[1] for _ts, f in fb)  # all of B on the buffer path
    png = Pcapng().interface(1, tsresol=9)
    for ts, frame in sorted(frames + fb, key=lambda f: f[0]):
        png.packet(ts, frame)
    return write_capture(tmp / f"idle-{shape}.pcapng", png.to_bytes())


@pytest.mark.parametrize("shape", ["plain", "vlan", "qinq", "ipv6", "vlan6"])
def test_skipped_frames_keep_the_clock(tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: str) -> None:
    cap = _idle_capture(tmp_path, shape)
    outs = [_replay(tmp_path, f"w{n}.jsonl", [cap, "--workers", str(n)], capsys) for n in (1, 2)]
    assert outs[0] == outs[1]
    recs = {r["path"]: r for r in (json.loads(x) for x in outs[1].splitlines())}
    assert set(recs) == {"/a1", "/a2", "/b"}
    assert recs["/a1"]["connection_id"] != recs["/a2"]["connection_id"]  # A expired while idle


def test_merge_parts_orders_records_of_unsorted_indexes(tmp_path: Path) -> None:
    from tlsmirror.shell.offline.workers import merge_parts

    records = {0: [(3.0, 7, b"c"), (1.0, 7, b"a"), (5.0, 2, b"e")], 1: [(2.0, 4, b"b"), (2.0, 9, b"bb")],
               2: [], 3: [(4.0, 1, b"d"), (1.0, 8, b"aa")]}
    parts = []
    for k, recs in records.items():
        path = tmp_path / f"part{k}"
        path.write_bytes(b"".join(r[2] for r in recs))
        index, pos = [], 0
        for seq, (start, conn, data) in enumerate(recs):
            index.append((start, conn, seq, pos, len(data)))
            pos += len(data)
        parts.append((str(path), index))
    out = tmp_path / "out"
    with out.open("wb") as fh:
        assert merge_parts(parts, fh, head=b"[", first=b"<", sep=b",", tail=b"]") == 7
    assert out.read_bytes() == b"[<a,aa,b,bb,c,d,e]"
