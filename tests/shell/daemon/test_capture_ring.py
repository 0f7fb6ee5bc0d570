"""Live capture from the TPACKET_V3 ring: real frames through a veth pair into LiveSocket."""

from __future__ import annotations

import itertools
import logging
import os
import select
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.pcapwriter import ethernet, ipv4, tcp
from tlsmirror.shell.daemon import capture
from tlsmirror.shell.daemon.capture import LiveSocket, capture_modes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (veth pair, CAP_NET_RAW)")


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    """(sender end, capture end) of a fresh veth pair."""
    a, b = f"trg{os.getpid() % 10000}a", f"trg{os.getpid() % 10000}b"
    subprocess.run(["ip", "link", "del", a], capture_output=True)
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True, capture_output=True)
    for name in (a, b):
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1"], capture_output=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True, capture_output=True)
    time.sleep(0.05)
    try:
        yield a, b
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)


def _sender(name: str) -> socket.socket:
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind((name, 0))
    return tx


def _frame(seq: int, sport: int = 40000, size: int = 100, vlans: tuple[int, ...] = ()) -> bytes:
    payload = struct.pack("!I", seq) + b"x" * (size - 4)
    return ethernet(ipv4(tcp(payload, sport=sport, dport=443), src="198.18.0.1", dst="198.18.0.2"),
                    vlans=vlans)


def _ours(frames: list[bytes], vlan: bool = False) -> list[tuple[int, int, bytes]]:
    """(sport, seq, frame) of the test's frames among *frames* (the kernel may add its own)."""
    base = 18 if vlan else 14
    out = []
    for f in frames:
        if len(f) >= base + 44 and f[base - 2:base] == b"\x08\x00" and f[base + 12:base + 16] == bytes(
                [198, 18, 0, 1]):
            sport = struct.unpack_from("!H", f, base + 20)[0]
            seq = struct.unpack_from("!I", f, base + 40)[0]
            out.append((sport, seq, f))
    return out


def _drain(socks: list[LiveSocket], want: int, timeout: float = 10.0) -> list[list[tuple[float, int, bytes]]]:
    """Read every socket (poll, then whole blocks) until *want* test frames arrived or *timeout*."""
    got: list[list[tuple[float, int, bytes]]] = [[] for _ in socks]
    poller = select.poll()
    for s in socks:
        poller.register(s.fileno(), select.POLLIN)
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            i = by_fd[fd]
            batch: list[bytes] = []
            socks[i].read_batch(256, batch)
            got[i].extend(socks[i].stamped(batch))
        if sum(len(_ours([f for _, _, f in g])) for g in got) >= want:
            break
    return got


def test_ring_delivers_frames_with_per_packet_kernel_timestamps(veth: tuple[str, str]) -> None:
    tx_if, rx_if = veth
    ls = LiveSocket(rx_if, program=None, fanout_group=None, ring_bytes=4 << 20)
    tx = _sender(tx_if)
    try:
        assert ls.mode == "ring" and capture_modes([ls]) == {"ring": 1, "recv": 0}
        before = time.time()
        sent = [_frame(i, size=100 + i) for i in range(500)]
        for i, f in enumerate(sent):
            tx.send(f)
            if i % 50 == 0:
                time.sleep(0.002)  # the frames spread over more than one block and wake-up
        after = time.time()
        [got] = _drain([ls], 500)
        ours = [(ts, f) for ts, lt, f in got if _ours([f])]
        assert [f for _, f in ours] == sent  # every frame, whole, in order
        assert all(lt == 1 for _, lt, _ in got)
        stamps = [ts for ts, _ in ours]
        assert all(b > a for a, b in itertools.pairwise(stamps)), "timestamps not strictly increasing"
        assert before - 1 <= stamps[0] and stamps[-1] <= after + 1  # kernel times, not the read's
        assert stamps[-1] - stamps[0] > 0.01  # per packet, not one stamp per batch
        packets, drops = ls.read_stats()
        assert drops == 0 and packets >= 500
    finally:
        tx.close()
        ls.close()


def test_ring_puts_back_the_vlan_tag_the_kernel_took_off(veth: tuple[str, str]) -> None:
    tx_if, rx_if = veth
    ls = LiveSocket(rx_if, program=None, fanout_group=None, ring_bytes=1 << 20)
    tx = _sender(tx_if)
    try:
        sent = [_frame(i, vlans=(100,)) for i in range(3)]
        for f in sent:
            tx.send(f)
        [got] = _drain([ls], 3)
        assert [f for _, _, f in got if _ours([f], vlan=True)] == sent
    finally:
        tx.close()
        ls.close()


def test_fanout_of_two_ring_sockets_splits_flows_whole(veth: tuple[str, str]) -> None:
    tx_if, rx_if = veth
    group = (os.getpid() + 11) & 0xFFFF
    socks = [LiveSocket(rx_if, program=None, fanout_group=group, ring_bytes=2 << 20) for _ in range(2)]
    tx = _sender(tx_if)
    try:
        flows, per_flow = 32, 20
        for seq in range(per_flow):
            for k in range(flows):
                tx.send(_frame(seq, sport=41000 + k))
        got = _drain(socks, flows * per_flow)
        seen = [{(sport, seq) for sport, seq, _ in _ours([f for _, _, f in g])} for g in got]
        assert len(seen[0]) + len(seen[1]) == flows * per_flow
        ports = [{sport for sport, _ in got_one} for got_one in seen]
        assert ports[0] and ports[1], "fanout did not split the flows"
        assert not ports[0] & ports[1], "a flow was split over two sockets"
        for got_one in seen:  # a socket that has a flow has all of its packets
            assert all((p, q) in got_one for p, _ in got_one for q in range(per_flow))
    finally:
        tx.close()
        for s in socks:
            s.close()


def test_a_stalled_reader_has_its_drops_counted(veth: tuple[str, str]) -> None:
    tx_if, rx_if = veth
    ls = LiveSocket(rx_if, program=None, fanout_group=None, ring_bytes=256 << 10, snaplen=2048)
    tx = _sender(tx_if)
    try:
        assert ls.mode == "ring" and ls._blocks * ls._block_bytes <= 256 << 10
        n = 3000  # ~3.3 MB of frames into a 256 KiB ring nobody reads
        for i in range(n):
            tx.send(_frame(i, size=1000))
        time.sleep(0.2)
        [got] = _drain([ls], n, timeout=1.0)
        read = len(_ours([f for _, _, f in got]))
        packets, drops = ls.read_stats()
        assert 0 < read < n
        assert drops > 0 and ls.kernel_freezes > 0
        assert packets >= n and read + drops >= n  # every frame sent was read or counted as dropped
        # after the stall the ring works again
        for i in range(10):
            tx.send(_frame(n + i, size=1000))
        [again] = _drain([ls], 10)
        assert len(_ours([f for _, _, f in again])) == 10
    finally:
        tx.close()
        ls.close()


def test_falls_back_to_recv_when_the_ring_cannot_be_set_up(
        veth: tuple[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    tx_if, rx_if = veth
    monkeypatch.setattr(capture, "TPACKET_V3", 77)  # a version this kernel does not have
    caplog.set_level(logging.INFO, logger="tlsmirror")
    ls = LiveSocket(rx_if, program=None, fanout_group=None)
    off = LiveSocket(rx_if, program=None, fanout_group=None, ring_bytes=0)
    tx = _sender(tx_if)
    try:
        assert ls.mode == "recv" and "PACKET_RX_RING" in ls.fallback_reason
        assert off.mode == "recv" and "ring_bytes" in off.fallback_reason
        assert capture_modes([ls, off]) == {"ring": 0, "recv": 2}
        assert any("one packet per recv" in r.getMessage() and rx_if in r.getMessage() for r in caplog.records)
        sent = [_frame(i) for i in range(20)]
        t0 = time.time()
        for f in sent:
            tx.send(f)
        for s in (ls, off):
            [got] = _drain([s], 20)
            assert [f for _, _, f in got if _ours([f])] == sent
            assert all(ts >= t0 for ts, _, _ in got)  # the wall clock of the read
    finally:
        tx.close()
        ls.close()
        off.close()


def test_at_a_stop_what_the_ring_holds_is_read_and_a_silent_ring_ends_it_at_once(veth: tuple[str, str]) -> None:
    tx_if, rx_if = veth
    ls = LiveSocket(rx_if, program=None, fanout_group=None, ring_bytes=4 << 20)
    tx = _sender(tx_if)
    try:
        sent = [_frame(i) for i in range(2_000)]  # several blocks: more than one batch of 64 frames
        for f in sent:
            tx.send(f)
        time.sleep(0.1)  # the last block retires (RING_RETIRE_MS) and nothing more arrives
        got: list[bytes] = []
        n = capture.read_what_is_left([ls], 64, time.monotonic() + 20, lambda s, frames: got.extend(frames))
        assert [f for f in got if _ours([f])] == sent and n == len(got)  # all of it, in order
        start = time.monotonic()
        assert capture.read_what_is_left([ls], 64, start + 20, lambda s, frames: got.extend(frames)) == 0
        assert time.monotonic() - start < 1  # nothing left: the stop does not wait for its bound
        for f in sent:  # and a bound in the past reads nothing: the stop's time is not overrun
            tx.send(f)
        time.sleep(0.1)
        assert capture.read_what_is_left([ls], 64, time.monotonic() - 1, lambda s, frames: None) == 0
    finally:
        tx.close()
        ls.close()
