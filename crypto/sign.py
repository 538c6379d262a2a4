"""Signatures: Ed25519 with raw 32-byte keys and 64-byte signatures.

::

    me = generate_signing_key_pair()
    sig = sign(me.private, b"message")
    verify(me.public, b"message", sig)          # returns None
    verify(me.public, b"other message", sig)    # raises SignatureError
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "PRIVATE_KEY_SIZE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "SignatureError",
    "SigningKeyPair",
    "generate_signing_key_pair",
    "public_key",
    "sign",
    "verify",
]

PRIVATE_KEY_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


class SignatureError(ValueError):
    """A signature does not verify under the given public key and message, or is malformed."""


@dataclass(frozen=True, repr=False)
class SigningKeyPair:
    """An Ed25519 key pair as raw bytes (32-byte private seed, 32-byte public key)."""

    private: bytes
    public: bytes

    def __repr__(self) -> str:  # never print the private key
        return f"SigningKeyPair(public={self.public.hex()})"


def _check(name: str, value: bytes, size: int, error: type[ValueError] = ValueError) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != size:
        got = f"{len(value)} bytes" if isinstance(value, bytes | bytearray) else type(value).__name__
        raise error(f"Ed25519 {name} must be {size} bytes, received {got}")


def public_key(private: bytes) -> bytes:
    """Return the raw public key of the raw Ed25519 private key ``private``."""
    _check("private key", private, PRIVATE_KEY_SIZE)
    return Ed25519PrivateKey.from_private_bytes(bytes(private)).public_key().public_bytes_raw()


def generate_signing_key_pair(randbytes: Callable[[int], bytes] = os.urandom) -> SigningKeyPair:
    """Create a key pair from 32 bytes of ``randbytes`` (``os.urandom`` unless injected for tests)."""
    private = bytes(randbytes(PRIVATE_KEY_SIZE))
    return SigningKeyPair(private=private, public=public_key(private))


def sign(private: bytes, message: bytes) -> bytes:
    """Sign ``message``; returns a 64-byte signature."""
    _check("private key", private, PRIVATE_KEY_SIZE)
    return Ed25519PrivateKey.from_private_bytes(bytes(private)).sign(bytes(message))


def verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Return if ``signature`` is ``public``'s signature of ``message``; raise :class:`SignatureError` otherwise."""
    _check("public key", public, PUBLIC_KEY_SIZE, SignatureError)
    _check("signature", signature, SIGNATURE_SIZE, SignatureError)
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public)).verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError):
        raise SignatureError("Ed25519 signature does not verify for this public key and message") from None
