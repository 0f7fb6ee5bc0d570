"""Record decryptors: one object per connection direction, holding the cipher state and sequence number.

All cryptography comes from ``cryptography``; cipher objects are created once per direction. A CBC
decryptor is one long-lived CBC context: TLS 1.0 chains records through it naturally, and for TLS 1.1+
the record's explicit IV is fed through too (its output block is dropped), which yields exactly
``D(C1) xor IV`` for the first real block.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from hmac import compare_digest
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, CipherAlgorithm, modes
from cryptography.hazmat.primitives.ciphers import algorithms as modern
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from tlsmirror.tls.errors import DecryptError, TlsParseError, UnsupportedError
from tlsmirror.tls.schedule import KeyBlock, tls13_key_iv
from tlsmirror.tls.suites import CipherSuite

__all__ = [
    "RecordDecryptor",
    "decryptor_from_key_block",
    "tls12_decryptor",
    "tls13_decryptor",
]

SSL3 = 0x0300
TLS10 = 0x0301
TLS11 = 0x0302
TLS12 = 0x0303

# Final: compiled, a Final literal is a constant in the code, where a plain module global is a dict
# lookup per use (per record here)
MAX_TLS12_CIPHERTEXT: Final = 2**14 + 2048
MAX_TLS13_CIPHERTEXT: Final = 2**14 + 256
_SEQ_BITS: Final = 64
_compare_digest: Final = compare_digest  # a native static: no module dict lookup per CBC record
_SEQ_MASK: Final = (1 << 64) - 1  # a sequence number wraps at 2**64: tested by ``>> 64`` (a native shift),
# the mask (a long int: a generic operation per use) applied only when it does

_SSL3_MAC_HDR = struct.Struct(">QBH")  # seq, type, length


def _aad(seq: int, content_type: int, version: int, length: int) -> bytes:
    """seq, type, version, length (8, 1, 2, 2 bytes): the TLS 1.2 AEAD data and the TLS HMAC header.
    Compiled, int.to_bytes is native where a struct pack is a Python method call (about 2k instructions)."""
    return ((seq << 40) | (content_type << 32) | (version << 16) | length).to_bytes(13, "big")


class RecordDecryptor:
    """What every record decryptor is. A base class, not a Protocol: compiled, a call through it is a
    native (vtable) call instead of a Python method lookup per record."""

    __slots__ = ("seq",)

    seq: int  # sequence number of the next record; the session moves it to skip or retry records

    def decrypt(self, content_type: int, record_version: int, fragment: bytes) -> tuple[int, bytes]:
        """Decrypt one record's fragment; return (content_type, plaintext).

        TLS 1.3 returns the inner content type with padding removed. The sequence number advances on
        every call, successful or not. Raises DecryptError on a bad tag/MAC/padding and TlsParseError
        on impossible lengths.
        """
        raise NotImplementedError


# --------------------------------------------------------------------------- AEAD


_Open = Callable[[bytes, bytes, bytes], bytes]  # an AEAD object's decrypt(nonce, data, associated_data)


def _aead(cipher: str, key: bytes, tag_len: int) -> AESGCM | AESCCM | ChaCha20Poly1305:
    if cipher.endswith("_GCM") and cipher.startswith("AES"):
        return AESGCM(key)
    if cipher.startswith("AES") and (cipher.endswith("_CCM") or cipher.endswith("_CCM_8")):
        return AESCCM(key, tag_length=tag_len)
    if cipher == "CHACHA20_POLY1305":
        return ChaCha20Poly1305(key)
    raise UnsupportedError(f"AEAD cipher {cipher}")


class _Tls12Aead(RecordDecryptor):
    """TLS 1.2 AEAD: GCM/CCM with 4-byte salt + 8-byte explicit nonce, ChaCha20 with iv xor seq."""

    __slots__ = ("_explicit", "_iv_int", "_min", "_open", "_salt", "_tag")

    def __init__(self, suite: CipherSuite, key: bytes, iv: bytes) -> None:
        # the cipher object's bound decrypt, made once: compiled, a call of it skips the method lookup
        self._open: _Open = _aead(suite.cipher, key, suite.tag_len).decrypt
        self._tag = suite.tag_len
        self._explicit = suite.cipher != "CHACHA20_POLY1305"
        self._salt = iv
        self._iv_int = int.from_bytes(iv, "big")
        self._min = self._tag + (8 if self._explicit else 0)
        self.seq = 0

    def decrypt(self, content_type: int, record_version: int, fragment: bytes) -> tuple[int, bytes]:
        seq = self.seq
        nxt = seq + 1
        self.seq = nxt & _SEQ_MASK if nxt >> _SEQ_BITS else nxt
        n = len(fragment)
        if n < self._min or n > MAX_TLS12_CIPHERTEXT:
            raise TlsParseError(f"AEAD record of {n} bytes")
        if self._explicit:
            # bytes slices: compiled, native and cheaper than a memoryview and its slices for records
            # of this size (the copy is a memcpy)
            nonce = self._salt + fragment[:8]
            body = fragment[8:]
        else:
            nonce = (self._iv_int ^ seq).to_bytes(12, "big")
            body = fragment
        aad = _aad(seq, content_type, record_version, n - self._min)
        try:
            return content_type, self._open(nonce, body, aad)
        except InvalidTag:
            raise DecryptError("bad AEAD tag") from None


class _Tls13Aead(RecordDecryptor):
    __slots__ = ("_iv_int", "_min", "_open")

    def __init__(self, suite: CipherSuite, key: bytes, iv: bytes) -> None:
        self._open: _Open = _aead(suite.cipher, key, suite.tag_len).decrypt  # see _Tls12Aead
        self._iv_int = int.from_bytes(iv, "big")
        self._min = suite.tag_len + 1
        self.seq = 0

    def decrypt(self, content_type: int, record_version: int, fragment: bytes) -> tuple[int, bytes]:
        seq = self.seq
        nxt = seq + 1
        self.seq = nxt & _SEQ_MASK if nxt >> _SEQ_BITS else nxt
        n = len(fragment)
        if n < self._min or n > MAX_TLS13_CIPHERTEXT:
            raise TlsParseError(f"TLS 1.3 record of {n} bytes")
        nonce = (self._iv_int ^ seq).to_bytes(12, "big")
        aad = ((content_type << 32) | (record_version << 16) | n).to_bytes(5, "big")  # the record header
        try:
            plain = self._open(nonce, fragment, aad)
        except InvalidTag:
            raise DecryptError("bad AEAD tag") from None
        i = len(plain) - 1
        while i >= 0 and plain[i] == 0:  # padding (rare): zeros after the inner content type
            i -= 1
        if i < 0:
            raise DecryptError("TLS 1.3 record without inner content type")
        return plain[i], plain[:i]


# --------------------------------------------------------------------------- MACs


class _HmacMac:
    """TLS HMAC over seq || type || version || length || data."""

    __slots__ = ("_copy", "size")

    def __init__(self, algorithm: hashes.HashAlgorithm, key: bytes) -> None:
        # the keyed template's bound copy: each record's MAC starts from a copy of it
        self._copy: Callable[[], hmac.HMAC] = hmac.HMAC(key, algorithm).copy
        self.size = algorithm.digest_size

    def compute(self, seq: int, content_type: int, version: int, data: bytes) -> bytes:
        h = self._copy()
        h.update(_aad(seq, content_type, version, len(data)) + data)  # one call: the copy is a memcpy
        return h.finalize()


class _Ssl3Mac:
    """SSL 3.0 MAC: hash(key + pad2 + hash(key + pad1 + seq + type + length + data))."""

    __slots__ = ("_inner", "_outer", "size")

    def __init__(self, algorithm: hashes.HashAlgorithm, key: bytes) -> None:
        pad_len = 48 if algorithm.name == "md5" else 40
        self._inner = hashes.Hash(algorithm)
        self._inner.update(key + b"\x36" * pad_len)
        self._outer = hashes.Hash(algorithm)
        self._outer.update(key + b"\x5c" * pad_len)
        self.size = algorithm.digest_size

    def compute(self, seq: int, content_type: int, version: int, data: bytes) -> bytes:
        h = self._inner.copy()
        h.update(_SSL3_MAC_HDR.pack(seq, content_type, len(data)))
        h.update(data)
        o = self._outer.copy()
        o.update(h.finalize())
        return o.finalize()


_MAC_ALGS: dict[str, type[hashes.HashAlgorithm]] = {
    "MD5": hashes.MD5,
    "SHA": hashes.SHA1,
    "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384,
}


def _mac(version: int, suite: CipherSuite, mac_key: bytes) -> _HmacMac | _Ssl3Mac:
    alg_cls = _MAC_ALGS.get(suite.mac)
    if alg_cls is None:
        raise UnsupportedError(f"MAC {suite.mac}")
    if len(mac_key) != suite.mac_len:
        raise UnsupportedError(f"{suite.name}: MAC key of {len(mac_key)} bytes")
    if version == SSL3:
        if suite.mac not in ("MD5", "SHA"):
            raise UnsupportedError("SSL 3.0 MAC")
        return _Ssl3Mac(alg_cls(), mac_key)
    return _HmacMac(alg_cls(), mac_key)


# --------------------------------------------------------------------------- CBC and stream


# the valid CBC padding of each length (pad + 1 bytes of value pad), made once instead of per record
_PADS: Final = tuple(bytes((pad,)) * (pad + 1) for pad in range(256))


def _block_algorithm(cipher: str, key: bytes) -> BlockCipherAlgorithm:
    if cipher.startswith("AES_"):
        return modern.AES(key)
    # the old ciphers' module imported by the first connection that uses one, not at start-up
    from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit

    if cipher.startswith("CAMELLIA_"):
        return decrepit.Camellia(key)
    if cipher == "3DES_EDE_CBC":
        return decrepit.TripleDES(key)
    if cipher in ("DES_CBC", "DES40_CBC"):
        return decrepit.TripleDES(key * 3)  # K1 = K2 = K3 is single DES
    if cipher == "SEED_CBC":
        return decrepit.SEED(key)
    if cipher == "IDEA_CBC":
        return decrepit.IDEA(key)
    if cipher == "RC2_CBC_40":
        return decrepit.RC2(key)
    raise UnsupportedError(f"block cipher {cipher}")


class _Cbc(RecordDecryptor):
    __slots__ = ("_bs", "_etm", "_explicit", "_mac", "_min", "_ssl3", "_update")

    def __init__(
        self, version: int, suite: CipherSuite, key: bytes, mac_key: bytes, iv: bytes, etm: bool
    ) -> None:
        algorithm = _block_algorithm(suite.cipher, key)
        bs = algorithm.block_size // 8
        if len(iv) != bs:
            if version >= TLS11:
                iv = bytes(bs)  # unused: every record carries its own IV
            else:
                raise UnsupportedError(f"{suite.name}: IV of {len(iv)} bytes")
        # one CBC context for the direction's life, its bound update made once
        self._update: Callable[[bytes], bytes] = Cipher(algorithm, modes.CBC(iv)).decryptor().update
        self._bs = bs
        self._explicit = version >= TLS11
        self._mac = _mac(version, suite, mac_key)
        self._etm = etm
        self._ssl3 = version == SSL3
        mac_len = self._mac.size
        iv_part = bs if self._explicit else 0
        if etm:
            self._min = iv_part + bs + mac_len
        else:
            self._min = iv_part + (mac_len // bs + 1) * bs
        self.seq = 0

    def _unpad(self, plain: bytes, start: int, reserve: int) -> tuple[int, bool]:
        """(end of the data in ``plain``, which starts at ``start`` (after an explicit IV's block) and is
        followed by the MAC (``reserve`` bytes) and the padding, padding ok). Offsets into the one
        plaintext instead of a slice without the IV block: a copy of the record less per record."""
        n = len(plain)
        pad = plain[-1]
        end = n - pad - 1 - reserve
        if end < start:
            return max(start, n - 1 - reserve), False
        if self._ssl3:
            return end, pad < self._bs
        return end, plain[n - pad - 1 :] == _PADS[pad]

    def decrypt(self, content_type: int, record_version: int, fragment: bytes) -> tuple[int, bytes]:
        seq = self.seq
        nxt = seq + 1
        self.seq = nxt & _SEQ_MASK if nxt >> _SEQ_BITS else nxt
        n = len(fragment)
        bs = self._bs
        mac = self._mac
        mac_len = mac.size
        if n > MAX_TLS12_CIPHERTEXT or n < self._min:
            raise TlsParseError(f"CBC record of {n} bytes")
        start = bs if self._explicit else 0  # TLS 1.1+: the first block is the explicit IV's
        if self._etm:
            body_len = n - mac_len
            if body_len % bs:
                raise TlsParseError(f"CBC record of {n} bytes is not whole blocks")
            body = fragment[:body_len]
            plain = self._update(body)  # first: keeps the TLS 1.0 IV chain in step even on a bad MAC
            expected = mac.compute(seq, content_type, record_version, body)
            if not _compare_digest(expected, fragment[body_len:]):
                raise DecryptError("bad record MAC")
            end, pad_ok = self._unpad(plain, start, 0)
            if not pad_ok:
                raise DecryptError("bad CBC padding")
            return content_type, plain[start:end]
        if n % bs:
            raise TlsParseError(f"CBC record of {n} bytes is not whole blocks")
        plain = self._update(fragment)
        end, pad_ok = self._unpad(plain, start, mac_len)
        data = plain[start:end]  # the result, and what the MAC covers
        expected = mac.compute(seq, content_type, record_version, data)
        mac_ok = _compare_digest(expected, plain[end : end + mac_len])
        if not (pad_ok and mac_ok):
            raise DecryptError("bad record MAC or padding")
        return content_type, data


class _Stream(RecordDecryptor):
    """RC4 (state persists across records) or NULL: data || MAC."""

    __slots__ = ("_dec", "_mac")

    def __init__(self, version: int, suite: CipherSuite, key: bytes, mac_key: bytes) -> None:
        self._mac = _mac(version, suite, mac_key)
        if suite.cipher == "NULL":
            self._dec = None
        elif suite.cipher.startswith("RC4_"):
            from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit  # see _block_algorithm

            algorithm: CipherAlgorithm = decrepit.ARC4(key)
            self._dec = Cipher(algorithm, None).decryptor()
        else:
            raise UnsupportedError(f"stream cipher {suite.cipher}")
        self.seq = 0

    def decrypt(self, content_type: int, record_version: int, fragment: bytes) -> tuple[int, bytes]:
        seq = self.seq
        nxt = seq + 1
        self.seq = nxt & _SEQ_MASK if nxt >> _SEQ_BITS else nxt
        n = len(fragment)
        mac_len = self._mac.size
        if n > MAX_TLS12_CIPHERTEXT or n < mac_len:
            raise TlsParseError(f"record of {n} bytes")
        plain = fragment if self._dec is None else self._dec.update(fragment)
        end = n - mac_len
        data = plain[:end]  # the result, and what the MAC covers
        expected = self._mac.compute(seq, content_type, record_version, data)
        if not _compare_digest(expected, plain[end:]):
            raise DecryptError("bad record MAC")
        return content_type, data


# --------------------------------------------------------------------------- factories


def _expected_key_len(suite: CipherSuite) -> int:
    if suite.export:
        return {"RC4_40": 16, "RC2_CBC_40": 16, "DES40_CBC": 8}.get(suite.cipher, -1)
    return suite.key_len


def tls12_decryptor(
    version: int,
    suite: CipherSuite,
    key: bytes,
    mac_key: bytes,
    iv: bytes,
    encrypt_then_mac: bool = False,
) -> RecordDecryptor:
    """A decryptor for one direction of an SSL 3.0 - TLS 1.2 connection (keys from the key block)."""
    if not SSL3 <= version <= TLS12:
        raise UnsupportedError(f"record protection for version 0x{version:04X}")
    if suite.tls13 or not suite.supported:
        raise UnsupportedError(f"cipher suite {suite.name}")
    if len(key) != _expected_key_len(suite):
        raise UnsupportedError(f"{suite.name}: key of {len(key)} bytes")
    if suite.aead:
        if version < TLS12:
            raise UnsupportedError(f"{suite.name} before TLS 1.2")
        if len(iv) != suite.iv_len:
            raise UnsupportedError(f"{suite.name}: IV of {len(iv)} bytes")
        return _Tls12Aead(suite, key, iv)
    if suite.block_size:
        return _Cbc(version, suite, key, mac_key, iv, encrypt_then_mac)
    return _Stream(version, suite, key, mac_key)


def tls13_decryptor(suite: CipherSuite, traffic_secret: bytes) -> RecordDecryptor:
    """A decryptor for one direction of TLS 1.3 records protected with ``traffic_secret``."""
    if not suite.tls13 or not suite.supported:
        raise UnsupportedError(f"cipher suite {suite.name} for TLS 1.3")
    key, iv = tls13_key_iv(suite, traffic_secret)
    return _Tls13Aead(suite, key, iv)


def decryptor_from_key_block(
    version: int, suite: CipherSuite, kb: KeyBlock, direction_is_client: bool, encrypt_then_mac: bool
) -> RecordDecryptor:
    """The decryptor for records sent by the client (``direction_is_client``) or by the server."""
    if direction_is_client:
        return tls12_decryptor(version, suite, kb.client_key, kb.client_mac, kb.client_iv, encrypt_then_mac)
    return tls12_decryptor(version, suite, kb.server_key, kb.server_mac, kb.server_iv, encrypt_then_mac)
