"""Capture helpers: the offline flow hash, BPF compilation/attachment, AF_PACKET sockets."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.pcapwriter import ethernet, ipv4, ipv4_fragments, ipv6, ipv6_fragments, tcp, udp, vxlan
from tlsmirror.frames.flowhash import FlowHasher
from tlsmirror.shell.daemon.capture import (
    BASE_FILTER,
    LiveSocket,
    bpf_matches,
    compile_bpf,
    default_filter,
)
from tlsmirror.shell.errors import InputError

needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")

v4 = st.binary(min_size=4, max_size=4)
v6 = st.binary(min_size=16, max_size=16)
ports = st.integers(1, 65535)


@settings(max_examples=200, deadline=None)
@given(a=v4, b=v4, pa=ports, pb=ports, payload=st.binary(max_size=40))
def test_hash_is_symmetric_ipv4(a: bytes, b: bytes, pa: int, pb: int, payload: bytes) -> None:
    h = FlowHasher()
    fwd = ethernet(ipv4(tcp(payload, sport=pa, dport=pb), src=a, dst=b))
    rev = ethernet(ipv4(tcp(b"", sport=pb, dport=pa), src=b, dst=a))
    assert h(1, fwd) == h(1, rev)


@settings(max_examples=100, deadline=None)
@given(a=v6, b=v6, pa=ports, pb=ports)
def test_hash_is_symmetric_ipv6(a: bytes, b: bytes, pa: int, pb: int) -> None:
    h = FlowHasher()
    assert h(1, ethernet(ipv6(tcp(sport=pa, dport=pb), src=a, dst=b))) == \
        h(1, ethernet(ipv6(tcp(sport=pb, dport=pa), src=b, dst=a)))


def test_hash_spreads_connections_of_one_host_pair() -> None:
    h = FlowHasher()
    buckets = {h(1, ethernet(ipv4(tcp(sport=40000 + i, dport=443), src="198.18.0.1", dst="198.18.0.2"))) % 4
               for i in range(64)}
    assert buckets == {0, 1, 2, 3}


def test_fragments_follow_their_datagram() -> None:
    h = FlowHasher()
    whole = ipv4(tcp(b"x" * 3000, sport=1234, dport=443), src="198.18.0.1", dst="198.18.0.2", ident=77)
    frags = ipv4_fragments(whole, 1000)
    ref = h(1, ethernet(ipv4(tcp(sport=443, dport=1234), src="198.18.0.2", dst="198.18.0.1")))
    assert [h(1, ethernet(f)) for f in frags] == [ref] * len(frags)
    w6 = ipv6(tcp(b"y" * 3000, sport=1234, dport=443), src="2001:db8::1", dst="2001:db8::2")
    ref6 = h(1, ethernet(ipv6(tcp(sport=443, dport=1234), src="2001:db8::2", dst="2001:db8::1")))
    assert {h(1, ethernet(f)) for f in ipv6_fragments(w6, 1000)} == {ref6}


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120), linktype=st.sampled_from([0, 1, 101, 113, 276, 228, 229, 999]))
def test_hash_never_raises(data: bytes, linktype: int) -> None:
    assert isinstance(FlowHasher()(linktype, data), int)


def test_tunnel_hash_uses_outer_header_like_the_kernel() -> None:
    h = FlowHasher()
    inner = ethernet(ipv4(tcp(sport=1, dport=443)))
    a = ethernet(ipv4(udp(vxlan(inner), sport=5000, dport=4789), src="198.18.1.1", dst="198.18.1.2",
                      proto=17))
    b = ethernet(ipv4(udp(vxlan(inner), sport=4789, dport=5000), src="198.18.1.2", dst="198.18.1.1",
                      proto=17))
    assert h(1, a) == h(1, b)


# ---------------------------------------------------------------------------- BPF
@needs_tcpdump
def test_default_filter_compiles_and_matches() -> None:
    expr = default_filter([8001, 9464], [("198.18.0.9", 4317)], own_addresses=["10.0.0.5", "fd00::5"])
    assert expr.endswith(BASE_FILTER)
    prog = compile_bpf(expr)
    api = ethernet(ipv4(tcp(b"x", sport=40000, dport=443)))
    keys = ethernet(ipv4(tcp(b"x", sport=40000, dport=8001), dst="10.0.0.5"))
    keys_back = ethernet(ipv4(tcp(b"x", sport=8001, dport=40000), src="10.0.0.5"))
    keys6 = ethernet(ipv6(tcp(b"x", sport=40000, dport=8001), dst="fd00::5"))
    metrics = ethernet(ipv4(tcp(b"x", sport=40000, dport=9464), dst="10.0.0.5"))
    export = ethernet(ipv4(tcp(b"x", sport=40000, dport=4317), dst="198.18.0.9"))
    other_4317 = ethernet(ipv4(tcp(b"x", sport=40000, dport=4317), dst="198.18.0.10"))
    dns = ethernet(ipv4(udp(b"q", dport=53), proto=17))
    tunnel = ethernet(ipv4(udp(vxlan(api), dport=4789), proto=17))
    assert bpf_matches(prog, api)
    for own in (keys, keys_back, keys6, metrics, export):
        assert not bpf_matches(prog, own)
    assert bpf_matches(prog, other_4317)
    assert not bpf_matches(prog, dns)
    assert bpf_matches(prog, tunnel)
    assert bpf_matches(prog, ethernet(ipv6(tcp(b"x", dport=443))))
    assert bpf_matches(prog, ethernet(ipv4(tcp(b"x", dport=443)), vlans=[100]))
    assert not bpf_matches(prog, ethernet(ipv4(udp(b"q", dport=53), proto=17), vlans=[100]))


@needs_tcpdump
def test_a_mirrored_client_on_the_listener_port_is_captured() -> None:
    """A mirrored connection is between other hosts: its client may use 8001 (or the metrics port) as its
    own port, and is captured both ways; only connections to this sensor's addresses are its own."""
    prog = compile_bpf(default_filter([8001, 9464], own_addresses=["10.0.0.5"]))
    for port in (8001, 9464):
        assert bpf_matches(prog, ethernet(ipv4(tcp(b"x", sport=port, dport=443))))
        assert bpf_matches(prog, ethernet(ipv4(tcp(b"x", sport=443, dport=port), src="10.0.0.2",
                                               dst="10.0.0.1")))
    # an interface without an address (a mirror port or TAP) carries none of the sensor's own connections
    assert default_filter([8001, 9464], own_addresses=[]) == BASE_FILTER


@needs_tcpdump
def test_bad_filter_names_the_expression() -> None:
    with pytest.raises(InputError, match=r"capture.bpf 'tcp and and' does not compile"):
        compile_bpf("tcp and and")


def test_missing_interface_is_an_input_error() -> None:
    with pytest.raises(InputError, match="does not exist"):
        LiveSocket("nosuchif0", program=None, fanout_group=None)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs CAP_NET_RAW")
@needs_tcpdump
def test_live_socket_on_loopback_filters_and_counts() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    prog = compile_bpf(f"tcp port {port}")
    group = (os.getpid() + 7) & 0xFFFF
    socks = [LiveSocket("lo", program=prog, fanout_group=group, buffer_bytes=1 << 20) for _ in range(2)]
    try:
        c = socket.create_connection(("127.0.0.1", port))
        s, _ = srv.accept()
        c.sendall(b"hello")
        s.recv(10)
        c.close()
        s.close()
        frames: list[bytes] = []
        for _ in range(100):  # the ring hands a block over when full or RING_RETIRE_MS after its first packet
            for ls in socks:
                ls.read_batch(64, frames)
            if len(frames) >= 6 and sum(ls.read_stats()[0] for ls in socks) == len(frames):
                break
            time.sleep(0.02)
        assert frames, "nothing captured"
        for f in frames:  # only our port passed the filter
            sport, dport = struct.unpack_from("!HH", f, 34)
            assert port in (sport, dport)
        # the fanout hash is symmetric: one connection lands on one socket
        counts = [ls.read_stats()[0] for ls in socks]
        assert sorted(counts)[0] == 0 and sum(counts) == len(frames)
    finally:
        for ls in socks:
            ls.close()
        srv.close()
