"""The IANA TLS cipher suite registry, as far as a passive decryptor cares.

Each suite is described by a :class:`CipherSuite` derived from its IANA name, so the table below is
just ``code -> name``; :func:`_describe` turns the name into key exchange, cipher and MAC parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["SUITES", "CipherSuite", "suite_by_name", "suite_for"]


class CipherSuite:
    """One cipher suite. Lengths are in bytes.

    ``iv_len`` is what the key block (TLS <= 1.2) or HKDF (TLS 1.3) produces: the full block for
    CBC, the 4-byte implicit salt for TLS 1.2 GCM/CCM, 12 bytes for ChaCha20 and all TLS 1.3 suites.
    ``key_len`` is the key block key length (5 for export suites, see ``export``).
    """

    __slots__ = ("auth", "block_size", "cipher", "code", "export", "iv_len", "kex", "key_len", "mac", "mac_len", "name",
                 "prf_hash", "supported", "tag_len")

    code: int
    name: str
    kex: str  # "RSA" (static RSA key transport), "DHE", "ECDHE", "DH", "ECDH", "PSK", "TLS13", ...
    cipher: str  # "AES_128_GCM", "3DES_EDE_CBC", "RC4_128", "NULL", ...
    mac: str  # "SHA", "SHA256", "SHA384", "MD5" or "AEAD"
    prf_hash: str  # "sha256" or "sha384"
    key_len: int
    iv_len: int
    mac_len: int
    block_size: int
    tag_len: int
    supported: bool
    auth: str  # "RSA", "DSS", "ECDSA", "anon", "PSK", ... ("" for TLS 1.3 and SCSVs)
    export: bool  # 40-bit export suite: final keys are expanded from key_len bytes

    def __init__(self, code: int, name: str, kex: str, cipher: str, mac: str, prf_hash: str, key_len: int, iv_len: int,
                 mac_len: int, block_size: int, tag_len: int, supported: bool, auth: str = "",
                 export: bool = False) -> None:
        self.code = code
        self.name = name
        self.kex = kex
        self.cipher = cipher
        self.mac = mac
        self.prf_hash = prf_hash
        self.key_len = key_len
        self.iv_len = iv_len
        self.mac_len = mac_len
        self.block_size = block_size
        self.tag_len = tag_len
        self.supported = supported
        self.auth = auth
        self.export = export

    @property
    def aead(self) -> bool:
        return self.mac == "AEAD"

    @property
    def tls13(self) -> bool:
        return self.kex == "TLS13"

    def __repr__(self) -> str:
        return (f"CipherSuite(code={self.code!r}, name={self.name!r}, kex={self.kex!r}, cipher={self.cipher!r}, "
                f"mac={self.mac!r}, prf_hash={self.prf_hash!r}, key_len={self.key_len!r}, iv_len={self.iv_len!r}, "
                f"mac_len={self.mac_len!r}, block_size={self.block_size!r}, tag_len={self.tag_len!r}, "
                f"supported={self.supported!r}, auth={self.auth!r}, export={self.export!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not CipherSuite:
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self) -> int:
        return hash(self.__reduce__()[1])

    def __reduce__(self) -> tuple[type[CipherSuite], tuple[Any, ...]]:
        return CipherSuite, (self.code, self.name, self.kex, self.cipher, self.mac, self.prf_hash, self.key_len,
                             self.iv_len, self.mac_len, self.block_size, self.tag_len, self.supported, self.auth,
                             self.export)


# cipher -> (key_len, iv_len for TLS 1.2 key block, block_size, tag_len, decryptable)
_CIPHERS: dict[str, tuple[int, int, int, int, bool]] = {
    "NULL": (0, 0, 0, 0, True),
    "RC4_128": (16, 0, 0, 0, True),
    "RC4_40": (5, 0, 0, 0, True),
    "RC4_56": (7, 0, 0, 0, False),
    "RC2_CBC_40": (5, 8, 8, 0, True),
    "RC2_CBC_56": (7, 8, 8, 0, False),
    "IDEA_CBC": (16, 8, 8, 0, True),
    "DES40_CBC": (5, 8, 8, 0, True),
    "DES_CBC_40": (5, 8, 8, 0, False),  # Kerberos export naming
    "DES_CBC": (8, 8, 8, 0, True),
    "3DES_EDE_CBC": (24, 8, 8, 0, True),
    "SEED_CBC": (16, 16, 16, 0, True),
    "AES_128_CBC": (16, 16, 16, 0, True),
    "AES_256_CBC": (32, 16, 16, 0, True),
    "CAMELLIA_128_CBC": (16, 16, 16, 0, True),
    "CAMELLIA_256_CBC": (32, 16, 16, 0, True),
    "ARIA_128_CBC": (16, 16, 16, 0, False),
    "ARIA_256_CBC": (32, 16, 16, 0, False),
    "AES_128_GCM": (16, 4, 0, 16, True),
    "AES_256_GCM": (32, 4, 0, 16, True),
    "AES_128_CCM": (16, 4, 0, 16, True),
    "AES_256_CCM": (32, 4, 0, 16, True),
    "AES_128_CCM_8": (16, 4, 0, 8, True),
    "AES_256_CCM_8": (32, 4, 0, 8, True),
    "CAMELLIA_128_GCM": (16, 4, 0, 16, False),
    "CAMELLIA_256_GCM": (32, 4, 0, 16, False),
    "ARIA_128_GCM": (16, 4, 0, 16, False),
    "ARIA_256_GCM": (32, 4, 0, 16, False),
    "CHACHA20_POLY1305": (32, 12, 0, 16, True),
}
_AEAD_CIPHERS = frozenset(c for c in _CIPHERS if c.endswith(("_GCM", "_CCM", "_CCM_8", "POLY1305")))
_MAC_LEN = {"NULL": 0, "MD5": 16, "SHA": 20, "SHA256": 32, "SHA384": 48, "AEAD": 0}

# key exchange part of a "TLS_<kx>_WITH_..." name -> (kex, auth, export)
_KX: dict[str, tuple[str, str, bool]] = {
    "NULL": ("NULL", "NULL", False),
    "RSA": ("RSA", "RSA", False),
    "RSA_EXPORT": ("RSA", "RSA", True),
    "RSA_EXPORT1024": ("RSA", "RSA", True),
    "DH_DSS": ("DH", "DSS", False),
    "DH_RSA": ("DH", "RSA", False),
    "DH_DSS_EXPORT": ("DH", "DSS", True),
    "DH_RSA_EXPORT": ("DH", "RSA", True),
    "DHE_DSS": ("DHE", "DSS", False),
    "DHE_RSA": ("DHE", "RSA", False),
    "DHE_DSS_EXPORT": ("DHE", "DSS", True),
    "DHE_DSS_EXPORT1024": ("DHE", "DSS", True),
    "DHE_RSA_EXPORT": ("DHE", "RSA", True),
    "DH_anon": ("DHE", "anon", False),
    "DH_anon_EXPORT": ("DHE", "anon", True),
    "KRB5": ("KRB5", "KRB5", False),
    "KRB5_EXPORT": ("KRB5", "KRB5", True),
    "PSK": ("PSK", "PSK", False),
    "DHE_PSK": ("DHE_PSK", "PSK", False),
    "PSK_DHE": ("DHE_PSK", "PSK", False),
    "RSA_PSK": ("RSA_PSK", "RSA", False),
    "ECDHE_PSK": ("ECDHE_PSK", "PSK", False),
    "ECDH_ECDSA": ("ECDH", "ECDSA", False),
    "ECDH_RSA": ("ECDH", "RSA", False),
    "ECDHE_ECDSA": ("ECDHE", "ECDSA", False),
    "ECDHE_RSA": ("ECDHE", "RSA", False),
    "ECDH_anon": ("ECDHE", "anon", False),
    "SRP_SHA": ("SRP", "SRP", False),
    "SRP_SHA_RSA": ("SRP", "RSA", False),
    "SRP_SHA_DSS": ("SRP", "DSS", False),
    "ECCPWD": ("ECCPWD", "ECCPWD", False),
    "GOSTR341112_256": ("GOST", "GOST", False),
}


def _names() -> dict[int, str]:
    t: dict[int, str] = {}

    def add(code: int, name: str) -> None:
        assert code not in t, hex(code)
        t[code] = name

    # 0x0000 - 0x0046 (RFC 5246, 4346, 2712, 4279, 4785, 5932)
    for code, name in enumerate(
        (
            "NULL_WITH_NULL_NULL", "RSA_WITH_NULL_MD5", "RSA_WITH_NULL_SHA", "RSA_EXPORT_WITH_RC4_40_MD5",
            "RSA_WITH_RC4_128_MD5", "RSA_WITH_RC4_128_SHA", "RSA_EXPORT_WITH_RC2_CBC_40_MD5",
            "RSA_WITH_IDEA_CBC_SHA", "RSA_EXPORT_WITH_DES40_CBC_SHA", "RSA_WITH_DES_CBC_SHA",
            "RSA_WITH_3DES_EDE_CBC_SHA", "DH_DSS_EXPORT_WITH_DES40_CBC_SHA", "DH_DSS_WITH_DES_CBC_SHA",
            "DH_DSS_WITH_3DES_EDE_CBC_SHA", "DH_RSA_EXPORT_WITH_DES40_CBC_SHA", "DH_RSA_WITH_DES_CBC_SHA",
            "DH_RSA_WITH_3DES_EDE_CBC_SHA", "DHE_DSS_EXPORT_WITH_DES40_CBC_SHA", "DHE_DSS_WITH_DES_CBC_SHA",
            "DHE_DSS_WITH_3DES_EDE_CBC_SHA", "DHE_RSA_EXPORT_WITH_DES40_CBC_SHA", "DHE_RSA_WITH_DES_CBC_SHA",
            "DHE_RSA_WITH_3DES_EDE_CBC_SHA", "DH_anon_EXPORT_WITH_RC4_40_MD5", "DH_anon_WITH_RC4_128_MD5",
            "DH_anon_EXPORT_WITH_DES40_CBC_SHA", "DH_anon_WITH_DES_CBC_SHA", "DH_anon_WITH_3DES_EDE_CBC_SHA",
        )
    ):
        add(code, name)
    for code, name in enumerate(
        (
            "KRB5_WITH_DES_CBC_SHA", "KRB5_WITH_3DES_EDE_CBC_SHA", "KRB5_WITH_RC4_128_SHA",
            "KRB5_WITH_IDEA_CBC_SHA", "KRB5_WITH_DES_CBC_MD5", "KRB5_WITH_3DES_EDE_CBC_MD5",
            "KRB5_WITH_RC4_128_MD5", "KRB5_WITH_IDEA_CBC_MD5", "KRB5_EXPORT_WITH_DES_CBC_40_SHA",
            "KRB5_EXPORT_WITH_RC2_CBC_40_SHA", "KRB5_EXPORT_WITH_RC4_40_SHA",
            "KRB5_EXPORT_WITH_DES_CBC_40_MD5", "KRB5_EXPORT_WITH_RC2_CBC_40_MD5",
            "KRB5_EXPORT_WITH_RC4_40_MD5", "PSK_WITH_NULL_SHA", "DHE_PSK_WITH_NULL_SHA",
            "RSA_PSK_WITH_NULL_SHA",
        ),
        start=0x1E,
    ):
        add(code, name)
    # AES CBC SHA (RFC 3268) 0x2F-0x3A: six key exchanges x two key sizes
    kx6 = ("RSA", "DH_DSS", "DH_RSA", "DHE_DSS", "DHE_RSA", "DH_anon")
    for i, kx in enumerate(kx6):
        add(0x2F + i, f"{kx}_WITH_AES_128_CBC_SHA")
        add(0x35 + i, f"{kx}_WITH_AES_256_CBC_SHA")
        add(0x41 + i, f"{kx}_WITH_CAMELLIA_128_CBC_SHA")
        add(0x84 + i, f"{kx}_WITH_CAMELLIA_256_CBC_SHA")
        add(0x96 + i, f"{kx}_WITH_SEED_CBC_SHA")
        add(0xBA + i, f"{kx}_WITH_CAMELLIA_128_CBC_SHA256")
        add(0xC0 + i, f"{kx}_WITH_CAMELLIA_256_CBC_SHA256")
    add(0x3B, "RSA_WITH_NULL_SHA256")
    add(0x3C, "RSA_WITH_AES_128_CBC_SHA256")
    add(0x3D, "RSA_WITH_AES_256_CBC_SHA256")
    add(0x3E, "DH_DSS_WITH_AES_128_CBC_SHA256")
    add(0x3F, "DH_RSA_WITH_AES_128_CBC_SHA256")
    add(0x40, "DHE_DSS_WITH_AES_128_CBC_SHA256")
    # pre-standard export1024 suites (draft-ietf-tls-56-bit-ciphersuites), widely deployed once
    add(0x60, "RSA_EXPORT1024_WITH_RC4_56_MD5")
    add(0x61, "RSA_EXPORT1024_WITH_RC2_CBC_56_MD5")
    add(0x62, "RSA_EXPORT1024_WITH_DES_CBC_SHA")
    add(0x63, "DHE_DSS_EXPORT1024_WITH_DES_CBC_SHA")
    add(0x64, "RSA_EXPORT1024_WITH_RC4_56_SHA")
    add(0x65, "DHE_DSS_EXPORT1024_WITH_RC4_56_SHA")
    add(0x66, "DHE_DSS_WITH_RC4_128_SHA")
    add(0x67, "DHE_RSA_WITH_AES_128_CBC_SHA256")
    add(0x68, "DH_DSS_WITH_AES_256_CBC_SHA256")
    add(0x69, "DH_RSA_WITH_AES_256_CBC_SHA256")
    add(0x6A, "DHE_DSS_WITH_AES_256_CBC_SHA256")
    add(0x6B, "DHE_RSA_WITH_AES_256_CBC_SHA256")
    add(0x6C, "DH_anon_WITH_AES_128_CBC_SHA256")
    add(0x6D, "DH_anon_WITH_AES_256_CBC_SHA256")
    # PSK (RFC 4279) 0x8A-0x95
    for i, kx in enumerate(("PSK", "DHE_PSK", "RSA_PSK")):
        base = 0x8A + 4 * i
        add(base, f"{kx}_WITH_RC4_128_SHA")
        add(base + 1, f"{kx}_WITH_3DES_EDE_CBC_SHA")
        add(base + 2, f"{kx}_WITH_AES_128_CBC_SHA")
        add(base + 3, f"{kx}_WITH_AES_256_CBC_SHA")
    # AES GCM (RFC 5288) 0x9C-0xA7
    for i, kx in enumerate(("RSA", "DHE_RSA", "DH_RSA", "DHE_DSS", "DH_DSS", "DH_anon")):
        add(0x9C + 2 * i, f"{kx}_WITH_AES_128_GCM_SHA256")
        add(0x9D + 2 * i, f"{kx}_WITH_AES_256_GCM_SHA384")
    # PSK GCM / CBC-SHA256 / NULL (RFC 5487) 0xA8-0xB9
    for i, kx in enumerate(("PSK", "DHE_PSK", "RSA_PSK")):
        add(0xA8 + 2 * i, f"{kx}_WITH_AES_128_GCM_SHA256")
        add(0xA9 + 2 * i, f"{kx}_WITH_AES_256_GCM_SHA384")
        base = 0xAE + 4 * i
        add(base, f"{kx}_WITH_AES_128_CBC_SHA256")
        add(base + 1, f"{kx}_WITH_AES_256_CBC_SHA384")
        add(base + 2, f"{kx}_WITH_NULL_SHA256")
        add(base + 3, f"{kx}_WITH_NULL_SHA384")
    add(0xFF, "EMPTY_RENEGOTIATION_INFO_SCSV")
    add(0x5600, "FALLBACK_SCSV")
    # ECC (RFC 8422 / 4492) 0xC001-0xC019
    for i, kx in enumerate(("ECDH_ECDSA", "ECDHE_ECDSA", "ECDH_RSA", "ECDHE_RSA", "ECDH_anon")):
        base = 0xC001 + 5 * i
        add(base, f"{kx}_WITH_NULL_SHA")
        add(base + 1, f"{kx}_WITH_RC4_128_SHA")
        add(base + 2, f"{kx}_WITH_3DES_EDE_CBC_SHA")
        add(base + 3, f"{kx}_WITH_AES_128_CBC_SHA")
        add(base + 4, f"{kx}_WITH_AES_256_CBC_SHA")
    # SRP (RFC 5054) 0xC01A-0xC022
    for i, cipher in enumerate(("3DES_EDE_CBC", "AES_128_CBC", "AES_256_CBC")):
        for j, kx in enumerate(("SRP_SHA", "SRP_SHA_RSA", "SRP_SHA_DSS")):
            add(0xC01A + 3 * i + j, f"{kx}_WITH_{cipher}_SHA")
    # ECC SHA256/384 (RFC 5289) 0xC023-0xC032
    for i, kx in enumerate(("ECDHE_ECDSA", "ECDH_ECDSA", "ECDHE_RSA", "ECDH_RSA")):
        add(0xC023 + 2 * i, f"{kx}_WITH_AES_128_CBC_SHA256")
        add(0xC024 + 2 * i, f"{kx}_WITH_AES_256_CBC_SHA384")
        add(0xC02B + 2 * i, f"{kx}_WITH_AES_128_GCM_SHA256")
        add(0xC02C + 2 * i, f"{kx}_WITH_AES_256_GCM_SHA384")
    # ECDHE_PSK (RFC 5489) 0xC033-0xC03B
    for i, tail in enumerate(
        ("RC4_128_SHA", "3DES_EDE_CBC_SHA", "AES_128_CBC_SHA", "AES_256_CBC_SHA", "AES_128_CBC_SHA256",
         "AES_256_CBC_SHA384", "NULL_SHA", "NULL_SHA256", "NULL_SHA384")
    ):
        add(0xC033 + i, f"ECDHE_PSK_WITH_{tail}")
    # ARIA (RFC 6209) 0xC03C-0xC071
    aria_cbc = ("RSA", "DH_DSS", "DH_RSA", "DHE_DSS", "DHE_RSA", "DH_anon", "ECDHE_ECDSA", "ECDH_ECDSA",
                "ECDHE_RSA", "ECDH_RSA")
    for i, kx in enumerate(aria_cbc):
        add(0xC03C + 2 * i, f"{kx}_WITH_ARIA_128_CBC_SHA256")
        add(0xC03D + 2 * i, f"{kx}_WITH_ARIA_256_CBC_SHA384")
    aria_gcm = ("RSA", "DHE_RSA", "DH_RSA", "DHE_DSS", "DH_DSS", "DH_anon", "ECDHE_ECDSA", "ECDH_ECDSA",
                "ECDHE_RSA", "ECDH_RSA")
    for i, kx in enumerate(aria_gcm):
        add(0xC050 + 2 * i, f"{kx}_WITH_ARIA_128_GCM_SHA256")
        add(0xC051 + 2 * i, f"{kx}_WITH_ARIA_256_GCM_SHA384")
    for i, (kx, mode) in enumerate(
        (("PSK", "CBC"), ("DHE_PSK", "CBC"), ("RSA_PSK", "CBC"), ("PSK", "GCM"), ("DHE_PSK", "GCM"),
         ("RSA_PSK", "GCM"), ("ECDHE_PSK", "CBC"))
    ):
        add(0xC064 + 2 * i, f"{kx}_WITH_ARIA_128_{mode}_SHA256")
        add(0xC065 + 2 * i, f"{kx}_WITH_ARIA_256_{mode}_SHA384")
    # Camellia (RFC 6367) 0xC072-0xC09B
    for i, kx in enumerate(("ECDHE_ECDSA", "ECDH_ECDSA", "ECDHE_RSA", "ECDH_RSA")):
        add(0xC072 + 2 * i, f"{kx}_WITH_CAMELLIA_128_CBC_SHA256")
        add(0xC073 + 2 * i, f"{kx}_WITH_CAMELLIA_256_CBC_SHA384")
    for i, kx in enumerate((*aria_gcm, "PSK", "DHE_PSK", "RSA_PSK")):
        add(0xC07A + 2 * i, f"{kx}_WITH_CAMELLIA_128_GCM_SHA256")
        add(0xC07B + 2 * i, f"{kx}_WITH_CAMELLIA_256_GCM_SHA384")
    for i, kx in enumerate(("PSK", "DHE_PSK", "RSA_PSK", "ECDHE_PSK")):
        add(0xC094 + 2 * i, f"{kx}_WITH_CAMELLIA_128_CBC_SHA256")
        add(0xC095 + 2 * i, f"{kx}_WITH_CAMELLIA_256_CBC_SHA384")
    # AES CCM (RFC 6655, 7251) 0xC09C-0xC0AF
    for i, name in enumerate(
        ("RSA_WITH_AES_128_CCM", "RSA_WITH_AES_256_CCM", "DHE_RSA_WITH_AES_128_CCM",
         "DHE_RSA_WITH_AES_256_CCM", "RSA_WITH_AES_128_CCM_8", "RSA_WITH_AES_256_CCM_8",
         "DHE_RSA_WITH_AES_128_CCM_8", "DHE_RSA_WITH_AES_256_CCM_8", "PSK_WITH_AES_128_CCM",
         "PSK_WITH_AES_256_CCM", "DHE_PSK_WITH_AES_128_CCM", "DHE_PSK_WITH_AES_256_CCM",
         "PSK_WITH_AES_128_CCM_8", "PSK_WITH_AES_256_CCM_8", "PSK_DHE_WITH_AES_128_CCM_8",
         "PSK_DHE_WITH_AES_256_CCM_8", "ECDHE_ECDSA_WITH_AES_128_CCM", "ECDHE_ECDSA_WITH_AES_256_CCM",
         "ECDHE_ECDSA_WITH_AES_128_CCM_8", "ECDHE_ECDSA_WITH_AES_256_CCM_8")
    ):
        add(0xC09C + i, name)
    # ECCPWD (RFC 8492)
    add(0xC0B0, "ECCPWD_WITH_AES_128_GCM_SHA256")
    add(0xC0B1, "ECCPWD_WITH_AES_256_GCM_SHA384")
    add(0xC0B2, "ECCPWD_WITH_AES_128_CCM_SHA256")
    add(0xC0B3, "ECCPWD_WITH_AES_256_CCM_SHA384")
    # GOST (RFC 9189)
    add(0xC100, "GOSTR341112_256_WITH_KUZNYECHIK_CTR_OMAC")
    add(0xC101, "GOSTR341112_256_WITH_MAGMA_CTR_OMAC")
    add(0xC102, "GOSTR341112_256_WITH_28147_CNT_IMIT")
    # ChaCha20-Poly1305 (RFC 7905)
    for i, kx in enumerate(("ECDHE_RSA", "ECDHE_ECDSA", "DHE_RSA", "PSK", "ECDHE_PSK", "DHE_PSK", "RSA_PSK")):
        add(0xCCA8 + i, f"{kx}_WITH_CHACHA20_POLY1305_SHA256")
    # ECDHE_PSK AEAD (RFC 8442)
    add(0xD001, "ECDHE_PSK_WITH_AES_128_GCM_SHA256")
    add(0xD002, "ECDHE_PSK_WITH_AES_256_GCM_SHA384")
    add(0xD003, "ECDHE_PSK_WITH_AES_128_CCM_8_SHA256")
    add(0xD005, "ECDHE_PSK_WITH_AES_128_CCM_SHA256")
    # TLS 1.3 (RFC 8446, 8998, 9150, draft AEGIS)
    for code, name in (
        (0x1301, "AES_128_GCM_SHA256"), (0x1302, "AES_256_GCM_SHA384"), (0x1303, "CHACHA20_POLY1305_SHA256"),
        (0x1304, "AES_128_CCM_SHA256"), (0x1305, "AES_128_CCM_8_SHA256"), (0x1306, "AEGIS_256_SHA512"),
        (0x1307, "AEGIS_128L_SHA256"), (0x00C6, "SM4_GCM_SM3"), (0x00C7, "SM4_CCM_SM3"),
        (0xC0B4, "SHA256_SHA256"), (0xC0B5, "SHA384_SHA384"),
    ):
        add(code, name)
    return {code: "TLS_" + name for code, name in t.items()}


_TLS13: dict[int, tuple[str, str, int, int, bool]] = {
    # code -> (cipher, hash, key_len, tag_len, supported)
    0x1301: ("AES_128_GCM", "sha256", 16, 16, True),
    0x1302: ("AES_256_GCM", "sha384", 32, 16, True),
    0x1303: ("CHACHA20_POLY1305", "sha256", 32, 16, True),
    0x1304: ("AES_128_CCM", "sha256", 16, 16, True),
    0x1305: ("AES_128_CCM_8", "sha256", 16, 8, True),
    0x1306: ("AEGIS_256", "sha512", 32, 32, False),
    0x1307: ("AEGIS_128L", "sha256", 16, 32, False),
    0x00C6: ("SM4_GCM", "sm3", 16, 16, False),
    0x00C7: ("SM4_CCM", "sm3", 16, 16, False),
    0xC0B4: ("NULL", "sha256", 0, 32, False),
    0xC0B5: ("NULL", "sha384", 0, 48, False),
}


def _unknown(code: int, name: str | None = None) -> CipherSuite:
    return CipherSuite(code, name or f"0x{code:04X}", "UNKNOWN", "UNKNOWN", "UNKNOWN", "sha256",
                       0, 0, 0, 0, 0, False)


def _describe(code: int, name: str) -> CipherSuite:
    if code in _TLS13:
        cipher, h, key_len, tag_len, ok = _TLS13[code]
        return CipherSuite(code, name, "TLS13", cipher, "AEAD", h, key_len, 12, 0, 0, tag_len, ok)
    body = name[4:]
    if "_WITH_" not in body:  # SCSVs
        return CipherSuite(code, name, "SCSV", "NULL", "NULL", "sha256", 0, 0, 0, 0, 0, False)
    kx_name, rest = body.split("_WITH_", 1)
    kex, auth, export = _KX.get(kx_name, ("UNKNOWN", "UNKNOWN", False))
    cipher, mac = rest, ""
    for suffix in ("SHA384", "SHA256", "SHA", "MD5", "NULL", "OMAC", "IMIT"):
        if rest.endswith("_" + suffix) and rest[: -len(suffix) - 1]:
            cipher, mac = rest[: -len(suffix) - 1], suffix
            break
    if cipher.endswith("_CNT"):
        cipher = cipher[:-4]
    params = _CIPHERS.get(cipher)
    if params is None or kex == "UNKNOWN":
        return CipherSuite(
            code, name, kex, cipher, mac or "UNKNOWN", "sha256", 0, 0, 0, 0, 0, False, auth, export
        )
    key_len, iv_len, block_size, tag_len, ok = params
    prf_hash = "sha384" if mac == "SHA384" else "sha256"
    if cipher in _AEAD_CIPHERS:
        mac = "AEAD"
    mac_len = _MAC_LEN.get(mac)
    if mac_len is None:
        return _unknown(code, name)
    if kex in ("KRB5", "GOST") or (cipher == "NULL" and kex == "NULL"):
        ok = False  # Kerberos key exchange is not in any key log; NULL_WITH_NULL_NULL carries nothing
    return CipherSuite(code, name, kex, cipher, mac, prf_hash, key_len, iv_len, mac_len, block_size, tag_len,
                       ok, auth, export)


# Suites are described when first asked for: a run meets a handful of the registry's ~350 codes, and
# describing them all at import was most of this module's start-up cost. ``SUITES`` (every suite) and
# the name index are built on first use.
_NAMES: dict[int, str] = _names()
_DESCRIBED: dict[int, CipherSuite] = {}
_ALL: dict[int, CipherSuite] = {}
_BY_NAME: dict[str, CipherSuite] = {}

if TYPE_CHECKING:
    SUITES: dict[int, CipherSuite]
else:
    def __getattr__(name: str) -> object:
        if name == "SUITES":
            return _all_suites()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _all_suites() -> dict[int, CipherSuite]:
    if not _ALL:
        _ALL.update((code, suite_for(code)) for code in _NAMES)
    return _ALL


def suite_for(code: int) -> CipherSuite:
    """The suite for a wire code; an unsupported placeholder named ``0x%04X`` when unknown."""
    s = _DESCRIBED.get(code)
    if s is None:
        name = _NAMES.get(code)
        if name is None:
            return _unknown(code)
        s = _DESCRIBED[code] = _describe(code, name)
    return s


def suite_by_name(name: str) -> CipherSuite | None:
    """Look a suite up by its IANA name (``TLS_...``)."""
    if not _BY_NAME:
        _BY_NAME.update((s.name, s) for s in _all_suites().values())
    return _BY_NAME.get(name)
