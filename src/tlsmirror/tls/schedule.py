"""Key schedules: the SSL 3.0 / TLS 1.0-1.2 PRF, master secret and key block, and TLS 1.3 HKDF labels.

Every primitive (HMAC, hashes, HKDF-Expand) comes from ``cryptography``; this module only composes them.
Versions are wire integers: 0x0300 SSL 3.0, 0x0301 TLS 1.0, 0x0302 TLS 1.1, 0x0303 TLS 1.2, 0x0304 TLS 1.3.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from tlsmirror.tls.errors import UnsupportedError
from tlsmirror.tls.suites import CipherSuite

__all__ = [
    "KeyBlock",
    "hash_algorithm",
    "hkdf_expand_label",
    "key_block",
    "master_secret",
    "prf",
    "tls13_key_iv",
    "tls13_next_secret",
]

SSL3 = 0x0300
TLS10 = 0x0301
TLS11 = 0x0302
TLS12 = 0x0303
TLS13 = 0x0304

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    """A ``cryptography`` hash instance for a lower-case name ("sha256", "sha384", "md5", "sha1")."""
    cls = _HASHES.get(name)
    if cls is None:
        raise UnsupportedError(f"hash {name}")
    return cls()


def _p_hash(algorithm: hashes.HashAlgorithm, secret: bytes, seed: bytes, length: int) -> bytes:
    """P_<hash>(secret, seed) from RFC 5246 section 5, truncated to ``length``."""
    base = hmac.HMAC(secret, algorithm)
    out = bytearray()
    a = seed
    while len(out) < length:
        h = base.copy()
        h.update(a)
        a = h.finalize()
        h = base.copy()
        h.update(a)
        h.update(seed)
        out += h.finalize()
    return bytes(out[:length])


def prf(version: int, suite: CipherSuite, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """The TLS PRF: MD5 xor SHA-1 halves for TLS 1.0/1.1, P_<suite.prf_hash> for TLS 1.2."""
    if version in (TLS10, TLS11):
        half = (len(secret) + 1) // 2
        md5 = _p_hash(hashes.MD5(), secret[:half], label + seed, length)
        sha = _p_hash(hashes.SHA1(), secret[len(secret) - half :], label + seed, length)
        return (int.from_bytes(md5, "big") ^ int.from_bytes(sha, "big")).to_bytes(length, "big")
    if version == TLS12:
        return _p_hash(hash_algorithm(suite.prf_hash), secret, label + seed, length)
    raise UnsupportedError(f"PRF for version 0x{version:04X}")


def _digest(algorithm: hashes.HashAlgorithm, *parts: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    for p in parts:
        h.update(p)
    return h.finalize()


def _ssl3_expand(secret: bytes, seed: bytes, length: int) -> bytes:
    """SSL 3.0 key derivation: MD5(secret + SHA1('A' + secret + seed)) + MD5(... 'BB' ...) + ..."""
    out = bytearray()
    i = 0
    while len(out) < length:
        if i >= 26:
            raise UnsupportedError("SSL 3.0 key block too long")
        salt = bytes([0x41 + i]) * (i + 1)
        out += _digest(hashes.MD5(), secret, _digest(hashes.SHA1(), salt, secret, seed))
        i += 1
    return bytes(out[:length])


def master_secret(
    version: int,
    suite: CipherSuite,
    pre_master: bytes,
    client_random: bytes,
    server_random: bytes,
    session_hash: bytes | None = None,
) -> bytes:
    """The 48-byte master secret; ``session_hash`` selects the RFC 7627 extended master secret."""
    if version == SSL3:
        if session_hash is not None:
            raise UnsupportedError("extended master secret with SSL 3.0")
        return _ssl3_expand(pre_master, client_random + server_random, 48)
    if session_hash is not None:
        return prf(version, suite, pre_master, b"extended master secret", session_hash, 48)
    return prf(version, suite, pre_master, b"master secret", client_random + server_random, 48)


class KeyBlock:
    """Per-direction keys for TLS <= 1.2. Export suites already hold the final (expanded) keys."""

    __slots__ = ("client_iv", "client_key", "client_mac", "server_iv", "server_key", "server_mac")

    client_mac: bytes
    server_mac: bytes
    client_key: bytes
    server_key: bytes
    client_iv: bytes
    server_iv: bytes

    def __init__(self, client_mac: bytes, server_mac: bytes, client_key: bytes, server_key: bytes, client_iv: bytes,
                 server_iv: bytes) -> None:
        self.client_mac = client_mac
        self.server_mac = server_mac
        self.client_key = client_key
        self.server_key = server_key
        self.client_iv = client_iv
        self.server_iv = server_iv

    def __repr__(self) -> str:
        return (
            f"KeyBlock(mac={len(self.client_mac)}B, key={len(self.client_key)}B, iv={len(self.client_iv)}B)"
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not KeyBlock:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[KeyBlock], tuple[Any, ...]]:
        return KeyBlock, (self.client_mac, self.server_mac, self.client_key, self.server_key, self.client_iv,
                          self.server_iv)


# export suites: expanded key length per cipher (RFC 2246 section 6.3 and appendix C)
_EXPORT_KEY_LEN = {"RC4_40": 16, "RC2_CBC_40": 16, "DES40_CBC": 8}


def key_block(
    version: int, suite: CipherSuite, master: bytes, client_random: bytes, server_random: bytes
) -> KeyBlock:
    """Split the key block into MAC keys, cipher keys and IVs (IVs are always derived; TLS 1.1+ CBC
    ignores them since every record carries its IV)."""
    if suite.tls13 or suite.kex in ("UNKNOWN", "SCSV"):
        raise UnsupportedError(f"key block for {suite.name}")
    mac_len, key_len = suite.mac_len, suite.key_len
    iv_len = 0 if suite.export else suite.iv_len
    total = 2 * (mac_len + key_len + iv_len)
    if version == SSL3:
        block = _ssl3_expand(master, server_random + client_random, total)
    else:
        block = prf(version, suite, master, b"key expansion", server_random + client_random, total)
    parts = []
    pos = 0
    for n in (mac_len, mac_len, key_len, key_len, iv_len, iv_len):
        parts.append(block[pos : pos + n])
        pos += n
    cmac, smac, ckey, skey, civ, siv = parts
    if suite.export:
        ckey, skey, civ, siv = _export_keys(version, suite, ckey, skey, client_random, server_random)
    return KeyBlock(cmac, smac, ckey, skey, civ, siv)


def _export_keys(
    version: int, suite: CipherSuite, ckey: bytes, skey: bytes, client_random: bytes, server_random: bytes
) -> tuple[bytes, bytes, bytes, bytes]:
    full = _EXPORT_KEY_LEN.get(suite.cipher)
    if full is None:
        raise UnsupportedError(f"export cipher {suite.cipher}")
    iv_len = suite.iv_len
    crsr, srcr = client_random + server_random, server_random + client_random
    if version == SSL3:
        md5 = hashes.MD5
        return (
            _digest(md5(), ckey, crsr)[:full],
            _digest(md5(), skey, srcr)[:full],
            _digest(md5(), crsr)[:iv_len],
            _digest(md5(), srcr)[:iv_len],
        )
    # TLS 1.0 defines export keys; older stacks also negotiated export suites in TLS 1.1/1.2 and
    # expanded them the same way with that version's PRF (the IV block is then unused: explicit IVs)
    ivs = prf(version, suite, b"", b"IV block", crsr, 2 * iv_len)
    return (
        prf(version, suite, ckey, b"client write key", crsr, full),
        prf(version, suite, skey, b"server write key", crsr, full),
        ivs[:iv_len],
        ivs[iv_len:],
    )


def hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label (RFC 8446 section 7.1); ``label`` without the "tls13 " prefix."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    return HKDFExpand(hash_algorithm(hash_name), length, info).derive(secret)


def tls13_key_iv(suite: CipherSuite, traffic_secret: bytes) -> tuple[bytes, bytes]:
    """(write_key, write_iv) from a TLS 1.3 traffic secret."""
    key = hkdf_expand_label(suite.prf_hash, traffic_secret, b"key", b"", suite.key_len)
    iv = hkdf_expand_label(suite.prf_hash, traffic_secret, b"iv", b"", 12)
    return key, iv


def tls13_next_secret(suite: CipherSuite, traffic_secret: bytes) -> bytes:
    """The application traffic secret after a KeyUpdate (RFC 8446 section 7.2)."""
    return hkdf_expand_label(suite.prf_hash, traffic_secret, b"traffic upd", b"", len(traffic_secret))
