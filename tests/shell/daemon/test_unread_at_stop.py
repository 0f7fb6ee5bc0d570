"""Frames the kernel passed to the capture sockets but no worker read: counted from the workers' stats."""

from __future__ import annotations

from typing import Any

from tlsmirror.shell.daemon.metrics import MetricsState


def stats(packets: int, kernel_packets: int, kernel_drops: int) -> dict[str, Any]:
    return {"packets": packets, "bytes": packets * 100, "kernel_packets": kernel_packets,
            "kernel_drops": kernel_drops, "outcomes": {}, "exchanges": {}}


def test_unread_is_what_the_kernel_passed_minus_what_the_workers_read() -> None:
    st = MetricsState(2)
    st.alive = {0: True, 1: True}
    # the shape of the 4-pass run stopped early: 411,000 frames passed, 229,507 read, no kernel drop
    st.update(0, stats(120_000, 205_500, 0))
    st.update(1, stats(109_507, 205_500, 0))
    assert st.unread(st.totals()) == 181_493


def test_dropped_frames_are_not_unread_and_a_caught_up_sensor_has_none() -> None:
    st = MetricsState(1)
    st.alive = {0: True}
    st.update(0, stats(900, 1_000, 100))  # PACKET_STATISTICS counts the 100 drops in its 1,000 packets
    assert st.unread(st.totals()) == 0
    st.retire(0)  # a restarted worker's counters carry over; its successor read what it passed
    st.update(0, stats(50, 60, 0))
    assert st.unread(st.totals()) == 10


def test_a_capture_file_has_no_kernel_counters_and_nothing_unread() -> None:
    st = MetricsState(1, mode="pcap")
    st.alive = {0: True}
    st.update(0, stats(5_000, 0, 0))
    assert st.unread(st.totals()) == 0
