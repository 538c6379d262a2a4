"""Key agreement: X25519 Diffie-Hellman followed by HKDF-SHA256.

Two parties that exchange their public keys derive the same 32-byte symmetric key::

    alice, bob = generate_key_pair(), generate_key_pair()
    k1 = shared_key(alice.private, bob.public, info=b"my-protocol/v1")
    k2 = shared_key(bob.private, alice.public, info=b"my-protocol/v1")
    assert k1 == k2

Keys are raw 32-byte values (RFC 7748), so they can be stored, sent and secret-shared as
plain bytes. ``info`` separates uses: the same key pair gives independent keys for
different ``info`` values.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["KEY_SIZE", "KeyAgreementError", "KeyPair", "generate_key_pair", "public_key", "shared_key"]

KEY_SIZE = 32
"""Size in bytes of an X25519 private key, a public key, and a derived shared key."""


class KeyAgreementError(ValueError):
    """A key has the wrong size, or the peer's public key is a low-order point."""


@dataclass(frozen=True, repr=False)
class KeyPair:
    """An X25519 key pair as raw 32-byte values."""

    private: bytes
    public: bytes

    def __repr__(self) -> str:  # never print the private key
        return f"KeyPair(public={self.public.hex()})"


def _check_size(name: str, value: bytes) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != KEY_SIZE:
        got = f"{len(value)} bytes" if isinstance(value, bytes | bytearray) else type(value).__name__
        raise KeyAgreementError(f"{name} must be {KEY_SIZE} bytes, received {got}")


def public_key(private: bytes) -> bytes:
    """Return the raw public key that belongs to the raw X25519 private key ``private``."""
    _check_size("private key", private)
    return X25519PrivateKey.from_private_bytes(bytes(private)).public_key().public_bytes_raw()


def generate_key_pair(randbytes: Callable[[int], bytes] = os.urandom) -> KeyPair:
    """Create a key pair from 32 bytes of ``randbytes`` (``os.urandom`` unless injected for tests)."""
    private = bytes(randbytes(KEY_SIZE))
    return KeyPair(private=private, public=public_key(private))


def shared_key(my_private: bytes, their_public: bytes, *, info: bytes) -> bytes:
    """Derive a 32-byte key from X25519(my_private, their_public) with HKDF-SHA256.

    Symmetric: ``shared_key(a.private, b.public, info=i) == shared_key(b.private, a.public, info=i)``.
    Raises :class:`KeyAgreementError` for wrong sizes or a low-order peer key (all-zero secret).
    """
    _check_size("private key", my_private)
    _check_size("peer public key", their_public)
    try:
        raw = X25519PrivateKey.from_private_bytes(bytes(my_private)).exchange(
            X25519PublicKey.from_public_bytes(bytes(their_public))
        )
    except ValueError as exc:  # cryptography rejects an all-zero shared secret
        raise KeyAgreementError(f"X25519 key agreement failed: {exc}") from exc
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=bytes(info)).derive(raw)
