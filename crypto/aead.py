"""Authenticated encryption: AES-256-GCM with a random 96-bit nonce prepended.

``encrypt`` returns ``nonce (12 bytes) || ciphertext || tag (16 bytes)``; ``decrypt`` checks
the tag over the ciphertext and ``associated_data`` and raises :class:`AuthenticationError`
when anything was modified. Random nonces are safe for up to about 2**32 messages per key;
the protocols here encrypt a handful of messages per key.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_SIZE", "NONCE_SIZE", "OVERHEAD", "TAG_SIZE", "AuthenticationError", "decrypt", "encrypt"]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
"""Bytes that ``encrypt`` adds to the plaintext."""


class AuthenticationError(ValueError):
    """A ciphertext failed authentication: it, its nonce or its associated data was changed, or the key is wrong."""


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        got = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ValueError(f"AES-256-GCM key must be {KEY_SIZE} bytes, received {got}")


def encrypt(
    key: bytes, plaintext: bytes, *, associated_data: bytes, randbytes: Callable[[int], bytes] = os.urandom
) -> bytes:
    """Encrypt and authenticate ``plaintext``; ``associated_data`` is authenticated but not encrypted."""
    _check_key(key)
    nonce = bytes(randbytes(NONCE_SIZE))
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"randbytes returned {len(nonce)} bytes for the nonce, expected {NONCE_SIZE}")
    return nonce + AESGCM(bytes(key)).encrypt(nonce, bytes(plaintext), bytes(associated_data))


def decrypt(key: bytes, ciphertext: bytes, *, associated_data: bytes) -> bytes:
    """Return the plaintext of ``encrypt``'s output, or raise :class:`AuthenticationError`."""
    _check_key(key)
    if len(ciphertext) < OVERHEAD:
        raise AuthenticationError(
            f"ciphertext is {len(ciphertext)} bytes, expected at least {OVERHEAD} "
            f"({NONCE_SIZE}-byte nonce + {TAG_SIZE}-byte tag)"
        )
    nonce, body = bytes(ciphertext[:NONCE_SIZE]), bytes(ciphertext[NONCE_SIZE:])
    try:
        return AESGCM(bytes(key)).decrypt(nonce, body, bytes(associated_data))
    except InvalidTag:
        raise AuthenticationError(
            "AES-GCM authentication failed: the ciphertext, nonce or associated data was modified, or the key is wrong"
        ) from None
