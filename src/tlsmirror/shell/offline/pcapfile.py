"""Streaming reader for pcap and pcapng capture files (optionally gzip-compressed).

Reads in large chunks and yields one :class:`CapturedFrame` per packet and one :class:`EmbeddedSecrets`
per pcapng Decryption Secrets Block holding a TLS key log, in file order. Memory stays bounded by the
chunk size and the largest record. A file whose last record is cut short yields everything before it
and notes the truncation in :attr:`CaptureReader.warnings`; every other problem raises
:class:`CaptureFileError` with a one-line message naming the file.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import CaptureFileError

CHUNK = 1 << 20
MAX_RECORD = 64 << 20  # larger records/blocks mean a corrupt file
MAX_WARNINGS = 20

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
SECRETS_TLS_KEYLOG = 0x544C534B  # 'TLSK'

_OPT_END = 0
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14


@dataclass(slots=True)
class CapturedFrame:
    """One captured packet: *interface* numbers interfaces across the whole file (0 for pcap).

    Built once per packet, so a plain slotted dataclass with a written-out ``__init__``, treated as
    immutable: compiled, it costs a fraction of a NamedTuple (whose ``__new__`` is interpreted)."""

    ts: float
    linktype: int
    data: bytes
    interface: int

    def __init__(self, ts: float, linktype: int, data: bytes, interface: int) -> None:
        self.ts = ts
        self.linktype = linktype
        self.data = data
        self.interface = interface


@dataclass(frozen=True, slots=True)
class EmbeddedSecrets:
    """NSS key log text from a pcapng Decryption Secrets Block.

    ``ts`` is the timestamp of the last frame before the block (0.0 if none). The repr hides the
    secrets.
    """

    ts: float
    data: bytes

    def __repr__(self) -> str:
        return f"EmbeddedSecrets(ts={self.ts!r}, data=<{len(self.data)} bytes>)"


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

    def _cut(self, what: str) -> None:
        self.truncated = True
        self._warn(f"{self.name}: truncated {what} at offset {self._offset()}; stopped reading")

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
        finally:
            self.close()

    # ------------------------------------------------------------ pcap

    def _pcap(self) -> Iterator[CapturedFrame]:
        rec = struct.Struct(self._order + "IIII")
        rec_len = self._rec_len
        divisor = self._divisor
        linktype = self.linktype
        # declared: struct gives Any, and compiled, typed locals make the per-record arithmetic native
        sec: int
        frac: int
        caplen: int
        _origlen: int
        while True:
            buf, pos = self._buf, self._pos
            if len(buf) - pos < rec_len:
                if not self._fill(rec_len):
                    if len(self._buf) > self._pos:
                        self._cut("record header")
                    return
                buf, pos = self._buf, self._pos
            sec, frac, caplen, _origlen = rec.unpack_from(buf, pos)
            if caplen > MAX_RECORD:
                raise self._error(f"corrupt record at offset {self._offset()} (length {caplen})")
            start = pos + rec_len
            stop = start + caplen
            if stop > len(buf):
                if not self._fill(rec_len + caplen):
                    self._cut("record")
                    return
                buf, pos = self._buf, self._pos
                start = pos + rec_len
                stop = start + caplen
            self._pos = stop
            self.frames += 1
            yield CapturedFrame(sec + frac / divisor, linktype, buf[start:stop], 0)

    # ------------------------------------------------------------ pcapng

    def _pcapng(self) -> Iterator[CapturedFrame | EmbeddedSecrets]:
        order = "<"
        u32 = struct.Struct("<I")
        head = struct.Struct("<II")
        epb = struct.Struct("<IIIII")
        ifaces: list[_Interface] = []
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
            btype, blen = head.unpack_from(buf, pos)
            if btype == _BT_SHB:
                bom = buf[pos + 8:pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    order = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    order = ">"
                else:
                    raise self._error(f"corrupt section header at offset {self._offset()}")
                u32 = struct.Struct(order + "I")
                head = struct.Struct(order + "II")
                epb = struct.Struct(order + "IIIII")
                btype, blen = head.unpack_from(buf, pos)
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                raise self._error(f"corrupt block at offset {self._offset()} (length {blen})")
            if len(buf) - pos < blen:
                if not self._fill(blen):
                    self._cut("block")
                    return
                buf, pos = self._buf, self._pos
            if u32.unpack_from(buf, pos + blen - 4)[0] != blen:
                raise self._error(f"corrupt block at offset {self._offset()} (trailing length mismatch)")
            body, end = pos + 8, pos + blen - 4
            if btype in (_BT_EPB, _BT_PB):
                if end - body < 20:
                    raise self._error(f"corrupt packet block at offset {self._offset()}")
                if btype == _BT_EPB:
                    if_id, ts_hi, ts_lo, caplen, _olen = epb.unpack_from(buf, body)
                else:
                    if_id, ts_hi, ts_lo, caplen, _olen = epb.unpack_from(buf, body)
                    if_id = if_id & 0xFFFF if order == "<" else if_id >> 16  # 16-bit id, 16-bit drops
                if body + 20 + caplen > end:
                    raise self._error(f"corrupt packet block at offset {self._offset()} (length {caplen})")
                self._pos = pos + blen
                if if_id >= len(ifaces):
                    self.skipped += 1
                    self._warn(f"{self.name}: packet for undefined interface {if_id} skipped")
                    continue
                iface = ifaces[if_id]
                last_ts = ((ts_hi << 32) | ts_lo) / iface.divisor + iface.offset
                self.frames += 1
                yield CapturedFrame(last_ts, iface.linktype, buf[body + 20:body + 20 + caplen], iface.index)
                continue
            self._pos = pos + blen
            if btype == _BT_SHB:
                if end - body < 16:
                    raise self._error(f"corrupt section header at offset {self._offset() - blen}")
                major = struct.unpack_from(order + "H", buf, body + 4)[0]
                if major != 1:
                    raise self._error(f"unsupported pcapng version {major}")
                ifaces = []
            elif btype == _BT_IDB:
                if end - body < 8:
                    raise self._error(f"corrupt interface block at offset {self._offset() - blen}")
                linktype, _res, snaplen = struct.unpack_from(order + "HHI", buf, body)
                divisor, offset = self._if_options(buf, body + 8, end, order)
                ifaces.append(_Interface(n_ifaces, linktype, snaplen, divisor, offset))
                n_ifaces += 1
            elif btype == _BT_SPB:
                if end - body < 4:
                    raise self._error(f"corrupt simple packet block at offset {self._offset() - blen}")
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
                    raise self._error(f"corrupt decryption secrets block at offset {self._offset() - blen}")
                stype, slen = struct.unpack_from(order + "II", buf, body)
                if body + 8 + slen > end:
                    raise self._error(f"corrupt decryption secrets block at offset {self._offset() - blen}")
                if stype == SECRETS_TLS_KEYLOG:
                    yield EmbeddedSecrets(last_ts, buf[body + 8:body + 8 + slen])
                else:
                    self._warn(f"{self.name}: decryption secrets of type 0x{stype:08x} ignored")
            # any other block type (name resolution, statistics, custom, ...) is skipped

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
