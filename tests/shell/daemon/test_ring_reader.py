"""The TPACKET_V3 block reader: the C reader and its Python fallback on rings laid out as the kernel does.

No root needed: the ring is a bytearray with the kernel's block and frame headers (linux/if_packet.h,
``tpacket_block_desc`` and ``tpacket3_hdr``); the live ring itself is tested in test_capture_ring.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.shell.daemon import capture

READERS: list[tuple[str, Callable[..., tuple[int, int, int]]]] = [("python", capture.read_blocks_py)]
try:
    from tlsmirror.shell.daemon._ring import read_blocks as _c_reader

    READERS.append(("c", _c_reader))
except ImportError:  # a build without the C reader: the fallback alone
    pass

BLOCK = 2048
BLOCKS = 4
USER, KERNEL, VLAN_VALID, TPID_VALID = 1, 0, 1 << 4, 1 << 6
FIRST = 48  # the first frame's offset in a block (after the block descriptor)
MAC = 66  # a frame's data offset from its header (the kernel's: header, sockaddr_ll, alignment)


def _frame(i: int, size: int) -> bytes:
    return bytes((i + k) & 0xFF for k in range(size))


def _ring(blocks: list[list[tuple[bytes, int, int, int, int, int]]], user: list[bool]) -> bytearray:
    """A ring of BLOCKS blocks; block *b* holds the frames blocks[b]: (data, sec, nsec, status, tci, tpid)."""
    ring = bytearray(BLOCK * BLOCKS)
    for b, frames in enumerate(blocks):
        base = b * BLOCK
        off = FIRST
        for k, (data, sec, nsec, status, tci, tpid) in enumerate(frames):
            size = MAC + len(data)
            nxt = 0 if k == len(frames) - 1 else (size + 15) & ~15
            struct.pack_into("=IIIIIIHH", ring, base + off, nxt, sec, nsec, len(data), len(data), status, MAC, MAC)
            struct.pack_into("=IIH", ring, base + off + 28, 0, tci, tpid)
            ring[base + off + MAC:base + off + MAC + len(data)] = data
            off += nxt
        struct.pack_into("=IIIII", ring, base, 3, 0, USER if user[b] else KERNEL, len(frames), FIRST)
    return ring


def _read(reader: Callable[..., tuple[int, int, int]], ring: bytearray, block: int, limit: int,
          ether: bool = True) -> tuple[Any, ...]:
    frames: list[bytes] = []
    stamps: list[float] = []
    nxt, n, total = reader(ring, block, BLOCK, BLOCKS, limit, frames, stamps, ether)
    return nxt, n, total, frames, stamps, bytes(ring)


@pytest.mark.parametrize(("name", "reader"), READERS)
def test_reads_the_blocks_handed_over_and_gives_them_back(name: str, reader: Callable[..., Any]) -> None:
    blocks = [[(_frame(b * 10 + k, 60 + k), 1_700_000_000 + b, 123_456_789 * k % 10**9, USER, 0, 0)
               for k in range(3)] for b in range(BLOCKS)]
    ring = _ring(blocks, [True, True, False, True])
    nxt, n, total, frames, stamps, after = _read(reader, ring, 0, 1000)
    assert (nxt, n) == (2, 6)  # blocks 0 and 1; block 2 is still the kernel's
    assert frames == [blocks[b][k][0] for b in (0, 1) for k in range(3)]
    assert total == sum(len(f) for f in frames)
    assert stamps == [blocks[b][k][1] + blocks[b][k][2] * 1e-9 for b in (0, 1) for k in range(3)]
    assert [struct.unpack_from("=I", after, b * BLOCK + 8)[0] for b in range(BLOCKS)] == [0, 0, 0, 1]
    # from block 3 on: block 3, then (wrapping) block 0, now the kernel's
    nxt, n, *_ = _read(reader, bytearray(after), 3, 1000)
    assert (nxt, n) == (0, 3)


@pytest.mark.parametrize(("name", "reader"), READERS)
def test_a_limit_stops_after_the_block_that_reaches_it(name: str, reader: Callable[..., Any]) -> None:
    blocks = [[(_frame(k, 40), 1, 0, USER, 0, 0) for k in range(3)] for _ in range(BLOCKS)]
    nxt, n, *_ = _read(reader, _ring(blocks, [True] * BLOCKS), 0, 4)
    assert (nxt, n) == (2, 6)  # whole blocks: the second one reaches the limit


@pytest.mark.parametrize(("name", "reader"), READERS)
def test_puts_back_the_vlan_tag_the_nic_took_off(name: str, reader: Callable[..., Any]) -> None:
    data = _frame(7, 64)
    blocks = [[(data, 1, 0, USER | VLAN_VALID, 100, 0), (data, 1, 0, USER | VLAN_VALID | TPID_VALID, 200, 0x88A8),
               (data, 1, 0, USER, 300, 0x8100)], [], [], []]
    _nxt, _n, _total, frames, *_ = _read(reader, _ring(blocks, [True, False, False, False]), 0, 100)
    assert frames[0] == data[:12] + struct.pack("!HH", 0x8100, 100) + data[12:]
    assert frames[1] == data[:12] + struct.pack("!HH", 0x88A8, 200) + data[12:]
    assert frames[2] == data  # no tag
    _nxt, _n, _total, raw, *_ = _read(reader, _ring(blocks, [True, False, False, False]), 0, 100, ether=False)
    assert raw == [data, data, data]  # not Ethernet: nothing put back


@pytest.mark.parametrize(("name", "reader"), READERS)
def test_headers_pointing_outside_their_block_are_refused(name: str, reader: Callable[..., Any]) -> None:
    blocks = [[(_frame(1, 50), 1, 0, USER, 0, 0)], [], [], []]
    ring = _ring(blocks, [True, False, False, False])
    struct.pack_into("=I", ring, FIRST + 12, BLOCK)  # a snaplen past the block's end
    with pytest.raises(ValueError, match="outside its block"):
        _read(reader, ring, 0, 10)
    ring = _ring(blocks, [True, False, False, False])
    struct.pack_into("=I", ring, 12, 10**6)  # more frames than a block holds
    with pytest.raises(ValueError, match="more frames"):
        _read(reader, ring, 0, 10)
    with pytest.raises(ValueError, match="geometry"):
        reader(bytearray(100), 0, BLOCK, BLOCKS, 10, [], [], True)


_FIELDS = [8, 12, 16, *(FIRST + f for f in (0, 4, 8, 12, 20, 24, 32, 36)),
           *(FIRST + 128 + f for f in (0, 12, 20, 24))]  # block and frame header fields (the second at 128)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, BLOCKS - 1), st.sampled_from(_FIELDS), st.integers(0, 2**32 - 1)),
                max_size=6), st.integers(0, BLOCKS - 1), st.integers(1, 20))
def test_damaged_headers_give_the_same_outcome_from_both_readers(patches: list[tuple[int, int, int]], block: int,
                                                                 limit: int) -> None:
    """Header fields overwritten at random: both readers give the same frames, or the same ValueError;
    neither reads outside the ring nor loops without end."""
    frames = [[(_frame(b * 3 + k, 40 + 7 * k), b, k, USER | (VLAN_VALID if k == 1 else 0), 5, 0) for k in range(3)]
              for b in range(BLOCKS)]
    base = _ring(frames, [True] * BLOCKS)
    for b, field, value in patches:
        struct.pack_into("=I", base, b * BLOCK + field, value)
    outcomes = []
    for _name, reader in READERS:
        try:
            outcomes.append(_read(reader, bytearray(base), block, limit))
        except ValueError as exc:
            outcomes.append(("ValueError", str(exc)))
    assert all(o == outcomes[0] for o in outcomes)
