"""Streaming reader for pcap and pcapng capture files (optionally gzip-compressed).

Reads in large chunks and yields one :class:`CapturedFrame` per packet and one :class:`EmbeddedSecrets`
per pcapng Decryption Secrets Block holding a TLS key log, in file order. Memory stays bounded by the
chunk size and the largest record. A file whose last record is cut short yields everything before it
and notes the truncation in :attr:`CaptureReader.warnings`. Corrupt data after a valid file header (a
record or block length that cannot be right, a block whose trailing length differs) is skipped: the
reader resynchronises to the next plausible pcap record / valid pcapng block, counts the bytes it
skipped (:attr:`CaptureReader.corrupt_bytes`) and warns once with the offset of the first damage. A
file that cannot be opened, has no valid header, or of which nothing could be read raises
:class:`CaptureFileError` with a one-line message naming the file.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any, Final

from ..errors import CaptureFileError

CHUNK = 1 << 20
# larger records/blocks mean a corrupt file (Final: compiled, a constant, not a module dict lookup per record)
MAX_RECORD: Final = 64 << 20
MAX_WARNINGS = 20


def _u32(buf: bytes, pos: int, little: bool) -> int:
    """The unsigned 32-bit integer at *pos*. Compiled, four native byte loads: cheaper than a struct
    unpack, a Python method call (about 2k instructions per record, callgrind)."""
    if little:
        return buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16) | (buf[pos + 3] << 24)
    return (buf[pos] << 24) | (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]
DEFAULT_SNAPLEN = 262144  # the largest plausible record when the file header gives no usable snaplen
# A record found while resynchronising is plausible only if its time is near the last good one (or the
# record before it): one day back, thirty days ahead.
RESYNC_BACK = 86400
RESYNC_AHEAD = 30 * 86400

_PCAP_MAGICS = {
    # first four bytes -> (byte order, fraction divisor, record header length)
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000, 16),
    b"\x34\xcd\xb2\xa1": ("<", 1_000_000, 24),  # Kuznetzov's modified pcap (extra 8 bytes per record)
    b"\xa1\xb2\xcd\x34": (">", 1_000_000, 24),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_GZIP = b"\x1f\x8b"

_BT_SHB = 0x0A0D0D0A
_BT_IDB = 1
_BT_PB = 2
_BT_SPB = 3
_BT_EPB = 6
_BT_DSB = 0x0000000A
# block types a resynchronising reader accepts as the start of a block (pcapng specification, section 11)
_KNOWN_BLOCKS = frozenset({_BT_SHB, _BT_IDB, _BT_PB, _BT_SPB, 4, 5, _BT_EPB, 9, _BT_DSB, 0xBAD, 0x40000BAD})
SECRETS_TLS_KEYLOG = 0x544C534B  # 'TLSK'

_OPT_END = 0
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14


class CapturedFrame:
    """One captured packet: *interface* numbers interfaces across the whole file (0 for pcap).

    Built once per packet, so a plain slotted class with a written-out ``__init__`` (not a dataclass: see
    ``http.events``), treated as immutable: compiled, it costs a fraction of a NamedTuple (whose ``__new__``
    is interpreted)."""

    __slots__ = ("data", "interface", "linktype", "ts")

    ts: float
    linktype: int
    data: bytes
    interface: int

    def __init__(self, ts: float, linktype: int, data: bytes, interface: int) -> None:
        self.ts = ts
        self.linktype = linktype
        self.data = data
        self.interface = interface

    def __repr__(self) -> str:
        return (f"CapturedFrame(ts={self.ts!r}, linktype={self.linktype!r}, data={self.data!r}, "
                f"interface={self.interface!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not CapturedFrame:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __reduce__(self) -> tuple[type[CapturedFrame], tuple[Any, ...]]:
        return CapturedFrame, (self.ts, self.linktype, self.data, self.interface)


class EmbeddedSecrets:
    """NSS key log text from a pcapng Decryption Secrets Block.

    ``ts`` is the timestamp of the last frame before the block (0.0 if none). The repr hides the
    secrets.
    """

    __slots__ = ("data", "ts")

    ts: float
    data: bytes

    def __init__(self, ts: float, data: bytes) -> None:
        self.ts = ts
        self.data = data

    def __repr__(self) -> str:
        return f"EmbeddedSecrets(ts={self.ts!r}, data=<{len(self.data)} bytes>)"

    def __eq__(self, other: object) -> bool:
        if type(other) is not EmbeddedSecrets:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[EmbeddedSecrets], tuple[Any, ...]]:
        return EmbeddedSecrets, (self.ts, self.data)


class FrameFilter:
    """Looks at every packet where it lies in the reader's buffer before a :class:`CapturedFrame` is
    made of it (``CaptureReader.filter``): ``replay --workers`` drops the other workers' frames there,
    without copying them out. This one keeps every frame."""

    def skip(self, linktype: int, buf: bytes, start: int, stop: int, ts: float) -> bool:
        """True: the packet ``buf[start:stop]`` at ``ts`` is not yielded (it is still counted)."""
        return False


class _Interface:
    __slots__ = ("divisor", "index", "linktype", "offset", "snaplen")

    def __init__(self, index: int, linktype: int, snaplen: int, divisor: int, offset: int) -> None:
        self.index = index
        self.linktype = linktype
        self.snaplen = snaplen
        self.divisor = divisor
        self.offset = offset


class CaptureReader:
    """Single-pass reader over one capture file.

    Opening validates the file header (raising :class:`CaptureFileError`); iterating yields
    :class:`CapturedFrame` and :class:`EmbeddedSecrets`. After iteration, ``truncated`` tells whether
    the last record was cut short and ``warnings`` holds (at most ``MAX_WARNINGS``) non-fatal notes.
    Use as a context manager, or call :meth:`close`, if you stop iterating early.
    """

    def __init__(self, path: str | os.PathLike[str], *, chunk_size: int = CHUNK) -> None:
        self.name = os.fsdecode(path)
        self.warnings: list[str] = []
        self.truncated = False
        self.compressed = False
        self.format = ""
        self.frames = 0
        self.skipped = 0  # packets not yielded (unknown interface)
        self.filter: FrameFilter | None = None  # sees each packet first; counted in ``frames`` either way
        self.secrets_blocks = 0
        self.corrupt_bytes = 0  # bytes skipped to resynchronise after corrupt data
        self.corrupt_regions = 0
        self._first_corrupt = ""  # what was wrong where first, for the one warning
        self._chunk = max(chunk_size, 4096)
        self._buf = b""
        self._pos = 0
        self._consumed = 0  # bytes of the (decompressed) stream before _buf
        self._eof = False
        try:
            raw = open(path, "rb")  # noqa: SIM115  (closed by close())
        except OSError as e:
            raise CaptureFileError(f"{self.name}: cannot open: {e.strerror or e}") from None
        self._file: io.BufferedIOBase = raw
        try:
            head = self._read_exactly(4)
            if head[:2] == _GZIP:
                self.compressed = True
                try:
                    raw.seek(0)
                except OSError:
                    raise self._error("compressed input is not seekable") from None
                self._file = gzip.GzipFile(fileobj=raw, mode="rb")
                self._raw = raw
                self._buf, self._pos, self._consumed, self._eof = b"", 0, 0, False
                head = self._read_exactly(4)
            if not head:
                raise self._error("empty file" + (" (after gzip decompression)" if self.compressed else ""))
            if head in _PCAP_MAGICS:
                self.format = "pcap"
                order, self._divisor, self._rec_len = _PCAP_MAGICS[head]
                self._order = order
                hdr = self._read_exactly(20)
                if len(hdr) < 20:
                    raise self._error("truncated pcap file header")
                _major, _minor, _zone, _sigfigs, self.snaplen, network = struct.unpack(order + "HHiIII", hdr)
                self.linktype = network & 0xFFFF  # upper bits: FCS information
                self._limit = self.snaplen if 0 < self.snaplen <= MAX_RECORD else DEFAULT_SNAPLEN
            elif head == _PCAPNG_SHB:
                self.format = "pcapng"
                self._pos -= 4  # the block loop reads the Section Header Block from its start
            else:
                if len(head) < 4:
                    raise self._error(f"too short to be a capture file ({len(head)} bytes)")
                magic = int.from_bytes(head, "big")
                raise self._error(f"not a pcap or pcapng file (magic 0x{magic:08x})")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ plumbing

    def _error(self, problem: str) -> CaptureFileError:
        return CaptureFileError(f"{self.name}: {problem}")

    def _warn(self, note: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(note)
        elif len(self.warnings) == MAX_WARNINGS:
            self.warnings.append("further warnings suppressed")

    def _fill(self, n: int) -> bool:
        """Make at least *n* bytes available at ``_pos``; False at end of file with fewer."""
        have = len(self._buf) - self._pos
        if have >= n:
            return True
        parts = [self._buf[self._pos:]] if have else []
        self._consumed += self._pos
        want = max(n - have, self._chunk)
        try:
            while have < n and not self._eof:
                more = self._file.read1(want)  # read1: a cut gzip stream still gives all it has
                if not more:
                    break
                parts.append(more)
                have += len(more)
                want = max(n - have, 0) or self._chunk
        except EOFError:  # gzip stream cut short: as a truncated file
            self._eof = True
            self._warn(f"{self.name}: compressed stream ends early")
        except (OSError, zlib.error) as e:
            raise self._error(f"read error: {getattr(e, 'strerror', None) or e}") from None
        self._buf = b"".join(parts)
        self._pos = 0
        return have >= n

    def _read_exactly(self, n: int) -> bytes:
        self._fill(n)
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def _offset(self) -> int:
        return self._consumed + self._pos

    @property
    def bytes_read(self) -> int:
        """Bytes of the capture consumed so far (after gzip decompression): for progress reports."""
        return self._consumed + self._pos

    def _cut(self, what: str, offset: int = -1) -> None:
        self.truncated = True
        at = self._offset() if offset < 0 else offset
        self._warn(f"{self.name}: truncated {what} at offset {at}; stopped reading")

    def _skipped(self, start: int, problem: str) -> None:
        """Count the bytes from *start* to the current position as corrupt data skipped for *problem*."""
        if not self.corrupt_regions:
            self._first_corrupt = f"{problem} at offset {start}"
        self.corrupt_regions += 1
        self.corrupt_bytes += self._offset() - start

    def _corruption_report(self) -> None:
        """At the end of the file: the one warning about corrupt data, or the error if nothing was read."""
        if not self.corrupt_regions:
            return
        places = f" in {self.corrupt_regions} places" if self.corrupt_regions > 1 else ""
        what = f"skipped {self.corrupt_bytes} bytes of corrupt data{places} (first: {self._first_corrupt})"
        if not self.frames and not self.secrets_blocks:
            raise self._error(f"nothing could be read: {what}")
        self._warn(f"{self.name}: {what}; read on from the next valid record")

    def close(self) -> None:
        """Release the file (idempotent)."""
        self._file.close()
        raw = getattr(self, "_raw", None)
        if raw is not None:
            raw.close()
        self._buf = b""

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[CapturedFrame | EmbeddedSecrets]:
        try:
            if self.format == "pcap":
                yield from self._pcap()
            else:
                yield from self._pcapng()
            self._corruption_report()
        finally:
            self.close()

    # ------------------------------------------------------------ pcap

    def _pcap(self) -> Iterator[CapturedFrame]:
        rec = struct.Struct(self._order + "IIII")
        rec_len = self._rec_len
        divisor = self._divisor
        linktype = self.linktype
        limit = self._limit
        little = self._order == "<"
        filt = self.filter
        last_sec = -1  # seconds of the last good record (-1: none yet), for resynchronising
        while True:
            buf, pos = self._buf, self._pos
            if len(buf) - pos < rec_len:
                if not self._fill(rec_len):
                    if len(self._buf) > self._pos:
                        self._cut("record header")
                    return
                buf, pos = self._buf, self._pos
            if little:  # the usual order, in line: compiled, native byte loads without a call per field
                sec = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16) | (buf[pos + 3] << 24)
                frac = buf[pos + 4] | (buf[pos + 5] << 8) | (buf[pos + 6] << 16) | (buf[pos + 7] << 24)
                caplen = buf[pos + 8] | (buf[pos + 9] << 8) | (buf[pos + 10] << 16) | (buf[pos + 11] << 24)
                origlen = buf[pos + 12] | (buf[pos + 13] << 8) | (buf[pos + 14] << 16) | (buf[pos + 15] << 24)
            else:
                sec = _u32(buf, pos, False)
                frac = _u32(buf, pos + 4, False)
                caplen = _u32(buf, pos + 8, False)
                origlen = _u32(buf, pos + 12, False)
            if caplen > MAX_RECORD or (caplen > origlen and caplen > limit):
                start = self._offset()
                self._resync_pcap(rec, last_sec)
                self._skipped(start, f"record length {caplen}")
                continue
            start = pos + rec_len
            stop = start + caplen
            if stop > len(buf):
                if not self._fill(rec_len + caplen):
                    # past the end: the last record cut short, or a corrupt length with records after it
                    at = self._offset()
                    if self._resync_pcap(rec, last_sec):
                        self._skipped(at, f"record length {caplen}")
                        continue
                    self._cut("record", at)
                    return
                buf, pos = self._buf, self._pos
                start = pos + rec_len
                stop = start + caplen
            self._pos = stop
            self.frames += 1
            last_sec = sec
            ts = sec + frac / divisor
            if filt is not None and filt.skip(linktype, buf, start, stop, ts):
                continue
            yield CapturedFrame(ts, linktype, buf[start:stop], 0)

    def _pcap_plausible(self, rec: struct.Struct, pos: int, near: int) -> int:
        """The captured length of a plausible record header at *pos* of the buffer, else -1: a time with
        a valid fraction (near *near* seconds unless that is -1), 0 < caplen <= snaplen, origlen >=
        caplen."""
        sec: int
        frac: int
        caplen: int
        origlen: int
        sec, frac, caplen, origlen = rec.unpack_from(self._buf, pos)
        if caplen == 0 or caplen > self._limit or origlen < caplen or frac >= self._divisor:
            return -1
        if near >= 0 and not near - RESYNC_BACK <= sec <= near + RESYNC_AHEAD:
            return -1
        return caplen

    def _resync_pcap(self, rec: struct.Struct, last_sec: int) -> bool:
        """Move from a corrupt record header to the next plausible one (its record ends exactly at the end
        of the file, or the header after it is plausible too); True if found, else at the end of file."""
        rec_len = self._rec_len
        self._pos += 1
        while self._fill(rec_len):
            pos = self._pos
            caplen = self._pcap_plausible(rec, pos, last_sec)
            if caplen >= 0:
                sec: int = rec.unpack_from(self._buf, pos)[0]
                if self._fill(2 * rec_len + caplen):
                    if self._pcap_plausible(rec, self._pos + rec_len + caplen, sec) >= 0:
                        return True
                elif len(self._buf) - self._pos == rec_len + caplen:
                    return True
            self._pos += 1
        self._pos = len(self._buf)
        return False

    # ------------------------------------------------------------ pcapng

    def _pcapng(self) -> Iterator[CapturedFrame | EmbeddedSecrets]:
        order = "<"
        u32 = struct.Struct("<I")
        head = struct.Struct("<II")
        epb = struct.Struct("<IIIII")
        ifaces: list[_Interface] = []
        filt = self.filter
        n_ifaces = 0
        last_ts = 0.0
        btype: int  # declared for native arithmetic when compiled (struct gives Any)
        blen: int
        if_id: int
        ts_hi: int
        ts_lo: int
        caplen: int
        _olen: int
        while True:
            if not self._fill(12):
                if len(self._buf) > self._pos:
                    self._cut("block header")
                return
            buf, pos = self._buf, self._pos
            at = self._offset()
            btype, blen = head.unpack_from(buf, pos)
            if btype == _BT_SHB:
                bom = buf[pos + 8:pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    order = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    order = ">"
                elif at == 0:
                    raise self._error("corrupt section header at offset 0")
                else:
                    self._resync_pcapng(head, u32)
                    self._skipped(at, "section header byte order")
                    continue
                u32 = struct.Struct(order + "I")
                head = struct.Struct(order + "II")
                epb = struct.Struct(order + "IIIII")
                btype, blen = head.unpack_from(buf, pos)
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                if at == 0:
                    raise self._error(f"corrupt block at offset 0 (length {blen})")
                self._resync_pcapng(head, u32)
                self._skipped(at, f"block length {blen}")
                continue
            if len(buf) - pos < blen:
                if not self._fill(blen):
                    # past the end: the last block cut short, or a corrupt length with blocks after it
                    if at and self._resync_pcapng(head, u32):
                        self._skipped(at, f"block length {blen}")
                        continue
                    self._cut("block", at)
                    return
                buf, pos = self._buf, self._pos
            if u32.unpack_from(buf, pos + blen - 4)[0] != blen:
                if at == 0:
                    raise self._error("corrupt block at offset 0 (trailing length mismatch)")
                self._resync_pcapng(head, u32)
                self._skipped(at, "block trailing length mismatch")
                continue
            body, end = pos + 8, pos + blen - 4
            self._pos = pos + blen
            if btype in (_BT_EPB, _BT_PB):
                if end - body < 20:
                    self._skipped(at, "packet block too short")
                    continue
                if btype == _BT_EPB:
                    if_id, ts_hi, ts_lo, caplen, _olen = epb.unpack_from(buf, body)
                else:
                    if_id, ts_hi, ts_lo, caplen, _olen = epb.unpack_from(buf, body)
                    if_id = if_id & 0xFFFF if order == "<" else if_id >> 16  # 16-bit id, 16-bit drops
                if body + 20 + caplen > end:
                    self._skipped(at, f"packet length {caplen}")
                    continue
                if if_id >= len(ifaces):
                    self.skipped += 1
                    self._warn(f"{self.name}: packet for undefined interface {if_id} skipped")
                    continue
                iface = ifaces[if_id]
                last_ts = ((ts_hi << 32) | ts_lo) / iface.divisor + iface.offset
                self.frames += 1
                if filt is not None and filt.skip(iface.linktype, buf, body + 20, body + 20 + caplen, last_ts):
                    continue
                yield CapturedFrame(last_ts, iface.linktype, buf[body + 20:body + 20 + caplen], iface.index)
                continue
            if btype == _BT_SHB:
                major = struct.unpack_from(order + "H", buf, body + 4)[0] if end - body >= 16 else -1
                if major != 1:
                    if at == 0:
                        raise self._error("corrupt section header at offset 0" if major < 0
                                          else f"unsupported pcapng version {major}")
                    self._skipped(at, "section header")
                    continue
                ifaces = []
            elif btype == _BT_IDB:
                if end - body < 8:
                    self._skipped(at, "interface block too short")
                    continue
                linktype, _res, snaplen = struct.unpack_from(order + "HHI", buf, body)
                divisor, offset = self._if_options(buf, body + 8, end, order)
                ifaces.append(_Interface(n_ifaces, linktype, snaplen, divisor, offset))
                n_ifaces += 1
            elif btype == _BT_SPB:
                if end - body < 4:
                    self._skipped(at, "simple packet block too short")
                    continue
                if not ifaces:
                    self.skipped += 1
                    self._warn(f"{self.name}: simple packet block without an interface skipped")
                    continue
                iface = ifaces[0]
                caplen = min(u32.unpack_from(buf, body)[0], end - body - 4)
                if iface.snaplen:
                    caplen = min(caplen, iface.snaplen)
                self.frames += 1
                # No timestamp in a Simple Packet Block: keep the previous one so time never goes back.
                yield CapturedFrame(last_ts, iface.linktype, buf[body + 4:body + 4 + caplen], iface.index)
            elif btype == _BT_DSB:
                if end - body < 8:
                    self._skipped(at, "decryption secrets block too short")
                    continue
                stype, slen = struct.unpack_from(order + "II", buf, body)
                if body + 8 + slen > end:
                    self._skipped(at, f"decryption secrets length {slen}")
                    continue
                if stype == SECRETS_TLS_KEYLOG:
                    self.secrets_blocks += 1
                    yield EmbeddedSecrets(last_ts, buf[body + 8:body + 8 + slen])
                else:
                    self._warn(f"{self.name}: decryption secrets of type 0x{stype:08x} ignored")
            # any other block type (name resolution, statistics, custom, ...) is skipped

    def _pcapng_valid(self, head: struct.Struct, u32: struct.Struct) -> bool:
        """Whether a valid block starts at the current position: a known type, a length that is a multiple
        of 4 within bounds, the trailing length equal (a section header: in its own byte order)."""
        btype: int
        blen: int
        if not self._fill(12):
            return False
        buf, pos = self._buf, self._pos
        btype, blen = head.unpack_from(buf, pos)
        if btype == _BT_SHB:
            bom = buf[pos + 8:pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                head, u32 = struct.Struct("<II"), struct.Struct("<I")
            elif bom == b"\x1a\x2b\x3c\x4d":
                head, u32 = struct.Struct(">II"), struct.Struct(">I")
            else:
                return False
            btype, blen = head.unpack_from(buf, pos)
        elif btype not in _KNOWN_BLOCKS:
            return False
        if blen < 12 or blen % 4 or blen > MAX_RECORD or not self._fill(blen):
            return False
        trailer: int = u32.unpack_from(self._buf, self._pos + blen - 4)[0]
        return trailer == blen

    def _resync_pcapng(self, head: struct.Struct, u32: struct.Struct) -> bool:
        """Move from a corrupt block to the next valid one (4-byte steps: blocks are 4-byte aligned); True
        if found, else at the end of the file."""
        self._pos += 4
        while self._fill(12):
            if self._pcapng_valid(head, u32):
                return True
            self._pos += 4
        self._pos = len(self._buf)
        return False

    @staticmethod
    def _if_options(buf: bytes, off: int, end: int, order: str) -> tuple[int, int]:
        """``(divisor, offset)`` from an Interface Description Block's options."""
        divisor, offset = 1_000_000, 0
        opt = struct.Struct(order + "HH")
        while off + 4 <= end:
            code, length = opt.unpack_from(buf, off)
            off += 4
            if code == _OPT_END or off + length > end:
                break
            if code == _OPT_IF_TSRESOL and length >= 1:
                res = buf[off]
                divisor = 2 ** (res & 0x7F) if res & 0x80 else 10**res
            elif code == _OPT_IF_TSOFFSET and length >= 8:
                offset = struct.unpack_from(order + "q", buf, off)[0]
            off += (length + 3) & ~3
        return divisor, offset


def read_capture(path: str | os.PathLike[str]) -> Iterator[CapturedFrame | EmbeddedSecrets]:
    """Frames and embedded secrets of a pcap/pcapng(.gz) file, in file order (see CaptureReader)."""
    with CaptureReader(path) as reader:
        yield from reader
