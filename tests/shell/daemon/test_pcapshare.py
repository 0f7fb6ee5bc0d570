"""The --pcap flow share each worker reads for itself: every frame to exactly one worker, both directions
and every fragment of a flow to the same one, the per-flow lookup equal to the flow hash."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.daemon import SAMPLE
from tests.support.pcapwriter import ethernet, ipv4, ipv4_fragments, tcp, udp
from tlsmirror.frames.flowhash import FlowHasher
from tlsmirror.shell.daemon.pcapfeed import FlowShare
from tlsmirror.shell.offline.loop import pump
from tlsmirror.shell.offline.pcapfile import CapturedFrame, CaptureReader, read_capture


def test_every_frame_of_the_capture_goes_to_one_worker_whole_flows_together() -> None:
    for n in (2, 3):
        got: list[list[bytes]] = [[] for _ in range(n)]
        shares = [FlowShare(i, n, lambda lt, d, ts, mine=got[i]: mine.append(d) or [],  # type: ignore[misc]
                            lambda ev: None, lambda s, t: None) for i in range(n)]
        for share in shares:
            with CaptureReader(SAMPLE) as r:
                pump(r, share, lambda note: None)
            assert share.frames == share.position == 333 and share.packets == len(got[share.index])
        assert sorted(d for g in got for d in g) == sorted(
            item.data for item in read_capture(SAMPLE) if type(item) is CapturedFrame)
        h = FlowHasher()
        for i, g in enumerate(got):
            assert {h(1, d) % n for d in g} <= {i}


def _frames(sport: int, dport: int, payload: bytes) -> list[bytes]:
    out = [ethernet(ipv4(tcp(payload, sport=sport, dport=dport))),
           ethernet(ipv4(tcp(payload, sport=dport, dport=sport), src="10.0.0.2", dst="10.0.0.1")),
           ethernet(ipv4(udp(payload, sport=sport, dport=dport), proto=17))]
    out += [ethernet(f) for f in ipv4_fragments(ipv4(tcp(payload + b"x" * 100, sport=sport, dport=dport)), 48)]
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 65535), st.integers(1, 65535), st.binary(max_size=40), st.integers(2, 5))
def test_the_per_flow_lookup_is_the_flow_hash(sport: int, dport: int, payload: bytes, n: int) -> None:
    share = FlowShare(0, n, lambda lt, d, ts: [], lambda ev: None, lambda s, t: None)
    h = FlowHasher()
    for data in _frames(sport, dport, payload) * 2:  # the second time from the lookup
        assert share.share_of(1, data) == h(1, data) % n
