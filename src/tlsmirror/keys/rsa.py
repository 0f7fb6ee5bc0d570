"""Server RSA private keys for static-RSA key exchange.

cryptography's key loading and RSA modules are imported on first use: most runs have no RSA key, and
those imports are a measurable part of a short run's start-up.
"""

from __future__ import annotations

from tlsmirror.keys.errors import KeyLogError
from tlsmirror.keys.events import RsaKey

__all__ = ["load_rsa_key", "rsa_decrypt_premaster"]


def load_rsa_key(data: bytes, password: bytes | None = None) -> RsaKey:
    """Load an RSA private key: PEM (PKCS#1 or PKCS#8, possibly encrypted) or DER. KeyLogError if not."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    loaders = (
        (serialization.load_pem_private_key, b"-----BEGIN" in data),
        (serialization.load_der_private_key, b"-----BEGIN" not in data),
    )
    last = "not a PEM or DER private key"
    for loader, applies in loaders:
        if not applies:
            continue
        try:
            key = loader(data, password)
        except TypeError as e:  # password missing, or given for an unencrypted key
            last = "password required" if password is None else f"password not expected ({type(e).__name__})"
            continue
        except ValueError:
            last = "cannot load private key (bad encoding or wrong password)"
            continue
        except Exception as e:  # unsupported algorithm and friends: report the kind only
            last = f"cannot load private key ({type(e).__name__})"
            continue
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyLogError(f"not an RSA private key ({type(key).__name__})")
        return RsaKey(key)
    raise KeyLogError(last)


def rsa_decrypt_premaster(key: RsaKey, encrypted: bytes, client_version: int | None = None) -> bytes | None:
    """Decrypt a ClientKeyExchange with PKCS#1 v1.5; None when it is not this key's.

    Recent OpenSSL uses implicit rejection, so a wrong key usually yields garbage of the wrong length
    (-> None) but may, rarely, yield 48 wrong bytes. Pass ``client_version`` (from the ClientHello) to
    also require the pre-master's leading version bytes, which makes such a false match negligible.
    """
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    k = key.key
    if not isinstance(k, rsa.RSAPrivateKey):
        return None
    if len(encrypted) != (k.key_size + 7) // 8:
        return None
    try:
        pms = k.decrypt(encrypted, padding.PKCS1v15())
    except ValueError:
        return None
    if len(pms) != 48:
        return None
    if client_version is not None and int.from_bytes(pms[:2], "big") != client_version:
        return None
    return pms
