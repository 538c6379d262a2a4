"""Shamir's t-of-n secret sharing over the prime field of ``p = 2**521 - 1``.

``split`` hides a secret of up to 64 bytes as ``f(0)`` of a random polynomial ``f`` of degree
``threshold - 1`` and hands out the points ``(x, f(x))`` for ``x = 1..n``. Any ``threshold``
shares determine ``f`` and so the secret (``combine``); any ``threshold - 1`` shares are
consistent with every secret, so they reveal nothing about it.

The secret is encoded as the integer with big-endian bytes ``0x01 || secret``; the leading
``0x01`` keeps leading zero bytes and lets ``combine`` reject a reconstruction that is not a
valid encoding (which is what inconsistent shares almost always produce).

A share serialises to :data:`SHARE_SIZE` = 68 bytes: ``x`` as 2 big-endian bytes, then
``y`` as 66 big-endian bytes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["MAX_SECRET_SIZE", "MAX_SHARES", "PRIME", "SHARE_SIZE", "Share", "combine", "split"]

PRIME = 2**521 - 1
"""The field modulus, a Mersenne prime: room for 64-byte secrets plus the encoding byte."""
MAX_SECRET_SIZE = 64
MAX_SHARES = 0xFFFF
_X_SIZE = 2
_Y_SIZE = (PRIME.bit_length() + 7) // 8  # 66
SHARE_SIZE = _X_SIZE + _Y_SIZE


@dataclass(frozen=True, repr=False)
class Share:
    """One point ``(x, y)`` of the sharing polynomial; ``1 <= x <= 65535`` and ``0 <= y < PRIME``."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not isinstance(self.x, int) or not 1 <= self.x <= MAX_SHARES:
            raise ValueError(f"share x must be an integer in [1, {MAX_SHARES}], received {self.x!r}")
        if not isinstance(self.y, int) or not 0 <= self.y < PRIME:
            raise ValueError("share y must be an integer in [0, 2**521 - 1)")

    def __repr__(self) -> str:  # a share is secret material: show only its x
        return f"Share(x={self.x}, y=...)"

    def to_bytes(self) -> bytes:
        """Serialise to :data:`SHARE_SIZE` bytes."""
        return self.x.to_bytes(_X_SIZE, "big") + self.y.to_bytes(_Y_SIZE, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Parse :meth:`to_bytes` output; raises ``ValueError`` for a wrong size or out-of-range values."""
        if len(data) != SHARE_SIZE:
            raise ValueError(f"a serialised share is {SHARE_SIZE} bytes, received {len(data)}")
        return cls(int.from_bytes(data[:_X_SIZE], "big"), int.from_bytes(data[_X_SIZE:], "big"))


def _check_threshold(threshold: int, n: int | None = None) -> None:
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise ValueError(f"threshold must be an integer >= 1, received {threshold!r}")
    if n is not None and threshold > n:
        raise ValueError(f"threshold must be in [1, n] = [1, {n}], received {threshold}")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """Horner evaluation of the polynomial with ``coefficients`` (constant first) at ``x``, mod PRIME."""
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % PRIME
    return acc


def _lagrange_at(points: Sequence[Share], x: int) -> int:
    """Value at ``x`` of the unique polynomial of degree < len(points) through ``points``, mod PRIME."""
    total = 0
    for i, pi in enumerate(points):
        num, den = 1, 1
        for j, pj in enumerate(points):
            if i != j:
                num = num * (x - pj.x) % PRIME
                den = den * (pi.x - pj.x) % PRIME
        total = (total + pi.y * num * pow(den, -1, PRIME)) % PRIME
    return total


def _encode(secret: bytes) -> int:
    return int.from_bytes(b"\x01" + bytes(secret), "big")


def _decode(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    if not raw or raw[0] != 1 or len(raw) - 1 > MAX_SECRET_SIZE:
        raise ValueError(
            "reconstructed value is not a valid secret encoding: the shares are inconsistent "
            "(modified, from different secrets, or fewer than the threshold the secret was split with)"
        )
    return raw[1:]


def split(secret: bytes, *, threshold: int, n: int, rng: Callable[[int], int] | None = None) -> list[Share]:
    """Split ``secret`` into ``n`` shares (``x = 1..n``) of which any ``threshold`` recover it.

    ``rng(upper)`` must return a uniform integer in ``[0, upper)``; it defaults to
    :func:`secrets.randbelow` and is injectable for tests.
    """
    if not isinstance(secret, bytes | bytearray):
        raise ValueError(f"secret must be bytes, received {type(secret).__name__}")
    if len(secret) > MAX_SECRET_SIZE:
        raise ValueError(f"secret must be at most {MAX_SECRET_SIZE} bytes, received {len(secret)}")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SHARES:
        raise ValueError(f"n must be an integer in [1, {MAX_SHARES}], received {n!r}")
    _check_threshold(threshold, n)
    draw = rng if rng is not None else secrets.randbelow
    coefficients = [_encode(secret)]
    for _ in range(threshold - 1):
        c = draw(PRIME)
        if not isinstance(c, int) or not 0 <= c < PRIME:
            raise ValueError("rng(upper) must return an integer in [0, upper)")
        coefficients.append(c)
    return [Share(x, _evaluate(coefficients, x)) for x in range(1, n + 1)]


def combine(shares: Sequence[Share], *, threshold: int) -> bytes:
    """Recover the secret from at least ``threshold`` shares with distinct ``x``.

    The first ``threshold`` shares determine the polynomial; any further share must lie on
    it, otherwise ``ValueError`` names the inconsistent share. Raises ``ValueError`` too for
    fewer than ``threshold`` shares, duplicate ``x`` values, or a reconstruction that is not
    a valid secret encoding.
    """
    _check_threshold(threshold)
    shares = list(shares)
    for s in shares:
        if not isinstance(s, Share):
            raise ValueError(f"shares must be Share objects, received {type(s).__name__}")
    if len(shares) < threshold:
        raise ValueError(f"need at least threshold={threshold} shares, received {len(shares)}")
    seen: set[int] = set()
    for s in shares:
        if s.x in seen:
            raise ValueError(f"duplicate share x={s.x}: every share must have a distinct x")
        seen.add(s.x)
    basis = shares[:threshold]
    for extra in shares[threshold:]:
        if _lagrange_at(basis, extra.x) != extra.y:
            raise ValueError(f"share x={extra.x} is inconsistent with the first {threshold} shares")
    return _decode(_lagrange_at(basis, 0))
