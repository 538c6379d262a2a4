"""Mask generator: expand a 256-bit seed into ``n`` pseudo-random integers modulo ``2**bits``.

The whole 32-byte seed is the key of the ChaCha20 stream cipher (RFC 7539, via
``cryptography``/OpenSSL); the keystream, read as little-endian words, is the output. Nothing
is folded into a smaller generator, so the masks are as unpredictable as the seed.

The nonce is fixed (all zeros). That is safe because a seed is never used for two different
streams: the secure-aggregation protocol draws a fresh random seed for each self mask and
derives each pairwise seed from fresh per-round X25519 keys and the round id. Re-expanding
the same seed (as the two ends of a pairwise mask and the server do) gives the same
stream by design.

``bits`` may be anything from 1 to 64. Words are 32 bits when ``dtype`` is ``uint32``
(``bits <= 32``, half the keystream) and 64 bits otherwise; the low ``bits`` bits of each
uniform word are kept, which is exactly uniform modulo ``2**bits``. The output for a seed
depends on ``(n, bits, dtype)`` only through truncation: a longer expansion starts with the
shorter one.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["MAX_BITS", "SEED_SIZE", "expand"]

SEED_SIZE = 32
MAX_BITS = 64
_NONCE = bytes(16)  # 32-bit block counter (starting at 0) + 96-bit nonce, all zero: see the module docstring


def _keystream(seed: bytes, nbytes: int) -> bytearray:
    """Return ``nbytes`` of the ChaCha20 keystream for key ``seed`` and the fixed nonce."""
    out = bytearray(nbytes)
    if nbytes:
        Cipher(algorithms.ChaCha20(bytes(seed), _NONCE), mode=None).encryptor().update_into(bytes(nbytes), out)
    return out


def expand(seed: bytes, n: int, *, bits: int, dtype: type[np.unsignedinteger] | np.dtype = np.uint64) -> np.ndarray:
    """Return ``n`` integers in ``[0, 2**bits)`` derived from the 32-byte ``seed``, as a ``dtype`` array.

    ``dtype`` is ``numpy.uint64`` (any ``bits`` up to 64) or ``numpy.uint32`` (``bits <= 32``).
    Deterministic: the same ``(seed, n, bits, dtype)`` always gives the same array.
    """
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_SIZE:
        got = f"{len(seed)} bytes" if isinstance(seed, bytes | bytearray) else type(seed).__name__
        raise ValueError(f"PRG seed must be {SEED_SIZE} bytes (256 bits), received {got}")
    if not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative integer, received {n!r}")
    if not isinstance(bits, int | np.integer) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [1, {MAX_BITS}], received {bits!r}")
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise ValueError(f"dtype must be uint32 or uint64, received {dt}")
    width = dt.itemsize * 8
    if bits > width:
        raise ValueError(f"bits={bits} does not fit dtype {dt} ({width} bits)")
    words = np.frombuffer(_keystream(seed, int(n) * dt.itemsize), dtype=dt.newbyteorder("<"))
    words = words.astype(dt, copy=False)  # a no-op on little-endian machines
    if bits < width:
        words &= dt.type((1 << bits) - 1)
    return words
