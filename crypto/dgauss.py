"""The discrete Gaussian N_Z(0, sigma^2), sampled without floating point.

P(x) is proportional to exp(-x^2 / (2 sigma^2)) on the integers; ``sigma2`` is given exactly
as a `fractions.Fraction` (a float is converted exactly).  Two samplers of it:

- `ExactSampler`: Canonne, Kamath & Steinke 2020 ("The Discrete Gaussian for Differential
  Privacy", Algorithms 1-3): Bernoulli(exp(-g)) from rational arithmetic, a discrete
  Laplace proposal, rejection.  Exact given uniform bytes; a few hundred microseconds a
  draw, so for small releases and as the test oracle.
- `CDTSampler`: inversion of a cumulative distribution table (as in lattice cryptography),
  vectorized.  The folded pmf is computed once per sigma in ``_PREC``-bit fixed point with
  Python integers, stored as 128-bit cumulative values (two uint64 words), truncated where
  the remaining mass is below 2^-128, and inverted with 128-bit uniforms from the ChaCha20
  keystream of `crypto.prg` (integer comparisons, ties resolved exactly), plus a random sign.
  `CDTSampler.tv` is an upper bound on the total-variation distance per draw between what
  it samples and the ideal distribution (rounding of the table plus the truncated tail).

Randomness is injected as ``randbytes(n) -> bytes`` (default `os.urandom`); `KeystreamBytes`
turns a 32-byte seed into such a source for reproducible tests.  numpy and stdlib only.
"""

from __future__ import annotations

import decimal
import functools
import math
import os
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from crypto.prg import expand

__all__ = ["MAX_TV_PER_DRAW", "CDTSampler", "ExactSampler", "KeystreamBytes", "as_sigma2", "cdt_sampler"]

RandBytes = Callable[[int], bytes]
_PREC = 256  # bits of the fixed-point weights the table is built from
_OUT = 128  # bits of the table entries and of the uniforms
_NARROW = 63  # guide buckets up to this many entries are searched in lock-step
MAX_TV_PER_DRAW = 2.0**-100  # every table's TV bound is below this (checked when it is built)
MAX_SIGMA2 = Fraction(10**14)  # ~1e7 standard deviations: tables beyond this are impractically large


def as_sigma2(sigma2: Fraction | int | float) -> Fraction:
    """``sigma2`` as an exact Fraction; ValueError unless it is finite, > 0 and <= MAX_SIGMA2."""
    if isinstance(sigma2, bool) or not isinstance(sigma2, Fraction | int | float):
        raise ValueError(f"sigma2 must be a Fraction, int or float, got {type(sigma2).__name__}")
    if isinstance(sigma2, float) and not math.isfinite(sigma2):
        raise ValueError(f"sigma2 must be finite, got {sigma2!r}")
    s2 = Fraction(sigma2)
    if not 0 < s2 <= MAX_SIGMA2:
        raise ValueError(f"sigma2 must be in (0, {MAX_SIGMA2}], got {float(s2)!r}")
    return s2


class KeystreamBytes:
    """A reproducible byte source: consecutive bytes of the ChaCha20 keystream of a 32-byte seed."""

    def __init__(self, seed: bytes, *, chunk: int = 1 << 16):
        self.seed, self.chunk, self._buf, self._blocks = bytes(seed), chunk, b"", 0
        expand(self.seed, 0, bits=64)  # validates the seed

    def __call__(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._blocks += 1  # each refill is the next slice of one long keystream
            words = expand(self.seed, self._blocks * self.chunk // 8, bits=64)
            self._buf += words[(self._blocks - 1) * self.chunk // 8 :].tobytes()
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


class ExactSampler:
    """Exact N_Z(0, sigma2) sampling by Canonne, Kamath & Steinke 2020 (rational arithmetic only)."""

    def __init__(self, randbytes: RandBytes = os.urandom):
        self.randbytes = randbytes

    def randbelow(self, n: int) -> int:
        """Uniform integer in [0, n) by rejection from random bytes."""
        if n < 1:
            raise ValueError(f"randbelow needs n >= 1, got {n}")
        k = (n - 1).bit_length()
        nbytes = (k + 7) // 8
        while True:
            r = int.from_bytes(self.randbytes(nbytes), "little") & ((1 << k) - 1)
            if r < n:
                return r

    def bernoulli(self, p: Fraction) -> bool:
        return self.randbelow(p.denominator) < p.numerator

    def bernoulli_exp(self, g: Fraction) -> bool:
        """Bernoulli(exp(-g)) for rational g >= 0 (CKS Algorithm 1)."""
        while g > 1:
            if not self._bernoulli_exp1(Fraction(1)):
                return False
            g -= 1
        return self._bernoulli_exp1(g)

    def _bernoulli_exp1(self, g: Fraction) -> bool:
        k = 1
        while self.bernoulli(g / k):
            k += 1
        return k % 2 == 1

    def _geometric_exp(self, x: Fraction) -> int:
        """Geometric with P(k) proportional to exp(-k x), x > 0 rational (CKS Algorithm 2's inner step)."""
        s, t = x.numerator, x.denominator
        while True:
            u = self.randbelow(t)
            if self.bernoulli_exp(Fraction(u, t)):
                break
        v = 0
        while self.bernoulli_exp(Fraction(1)):
            v += 1
        return (v * t + u) // s

    def discrete_laplace(self, t: int) -> int:
        """P(x) proportional to exp(-|x| / t) on the integers (CKS Algorithm 2)."""
        while True:
            negative = self.bernoulli(Fraction(1, 2))
            magnitude = self._geometric_exp(Fraction(1, t))
            if not (negative and magnitude == 0):
                return -magnitude if negative else magnitude

    def sample_one(self, sigma2: Fraction | int | float) -> int:
        """One exact draw of N_Z(0, sigma2) (CKS Algorithm 3)."""
        s2 = as_sigma2(sigma2)
        t = math.isqrt(s2.numerator // s2.denominator) + 1
        while True:
            y = self.discrete_laplace(t)
            if self.bernoulli_exp((abs(y) - s2 / t) ** 2 / (2 * s2)):
                return y

    def sample(self, sigma2: Fraction | int | float, n: int) -> np.ndarray:
        """``n`` independent draws as an int64 array."""
        s2 = as_sigma2(sigma2)
        return np.array([self.sample_one(s2) for _ in range(n)], dtype=np.int64)


class CDTSampler:
    """Vectorized N_Z(0, sigma2) by inversion of a 128-bit cumulative table of the folded pmf.

    Draw: u uniform in [0, 2^128); |x| = #{i : c_i <= u} with c_i the rounded cumulative
    probabilities of |x| = 0..i; then a uniform sign for |x| > 0.  ``tv`` bounds the total
    variation distance per draw to the ideal N_Z(0, sigma2) (see `_build`).
    """

    def __init__(self, sigma2: Fraction | int | float):
        self.sigma2 = as_sigma2(sigma2)
        self.hi, self.lo, self.tv = _build(self.sigma2)
        if not self.tv <= MAX_TV_PER_DRAW:
            raise ValueError(f"sigma2 {float(self.sigma2):g}: TV bound {self.tv:g} above {MAX_TV_PER_DRAW:g}")
        # guide table: the first entry of each bucket of the top `_bits` bits of hi
        self._bits = min(20, max(8, len(self.hi).bit_length() + 4))
        starts = np.arange((1 << self._bits) + 1, dtype=np.uint64)
        self._guide = np.searchsorted(self.hi, starts[:-1] << np.uint64(64 - self._bits), side="left")
        self._guide = np.append(self._guide, len(self.hi)).astype(np.int64)

    @property
    def support(self) -> int:
        """Largest |x| the table can return."""
        return len(self.hi)

    def sample(self, n: int, randbytes: RandBytes = os.urandom) -> np.ndarray:
        """``n`` draws as an int64 array, from one fresh 32-byte seed taken from ``randbytes``."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        n = int(n)
        words = expand(randbytes(32), 2 * n + (n + 63) // 64, bits=64)
        u_hi, u_lo = words[:n], words[n : 2 * n]
        signs = np.unpackbits(words[2 * n :].view(np.uint8), bitorder="little")[:n].astype(bool)
        mag = self.magnitudes(u_hi, u_lo)
        return np.where(signs & (mag > 0), -mag, mag)

    def magnitudes(self, u_hi: np.ndarray, u_lo: np.ndarray) -> np.ndarray:
        """|x| = #{i : c_i <= u} for the 128-bit uniforms u = u_hi 2^64 + u_lo (int64)."""
        mag = self._lower_bound(u_hi)  # first i with hi_i >= u_hi: every c_i before it is <= u
        tie = np.flatnonzero(self.hi[np.minimum(mag, len(self.hi) - 1)] == u_hi) if len(self.hi) else []
        for j in tie:  # hi_i == u_hi: the low words decide (probability ~ 2^-64 a draw)
            a = int(mag[j])
            b = int(np.searchsorted(self.hi, u_hi[j], side="right"))
            mag[j] = a + int(np.searchsorted(self.lo[a:b], u_lo[j], side="right"))
        return mag

    def _lower_bound(self, u: np.ndarray) -> np.ndarray:
        """For each u, the first index i with hi_i >= u (len(hi) if none), via the guide table."""
        bucket = (u >> np.uint64(64 - self._bits)).astype(np.int64)
        left, right = self._guide[bucket], self._guide[bucket + 1]  # the answer lies in [left, right]
        narrow = right - left <= _NARROW
        for _ in range(_NARROW.bit_length()):
            mid = (left + right) >> 1
            go = (mid < right) & (self.hi[np.minimum(mid, len(self.hi) - 1)] < u)
            left, right = np.where(go, mid + 1, left), np.where(go, right, mid)
        wide = np.flatnonzero(~narrow)  # buckets far in the tails: a plain binary search
        left[wide] = np.searchsorted(self.hi, u[wide], side="left")
        return left


@functools.lru_cache(maxsize=16)
def cdt_sampler(sigma2: Fraction) -> CDTSampler:
    """The CDT sampler of ``sigma2``, its table built once per value (cached)."""
    return CDTSampler(sigma2)


def _exp_neg_fixed(x: Fraction, prec: int) -> int:
    """floor-ish of 2^prec * exp(-x), with absolute error at most 2 (units of 2^-prec)."""
    ctx = decimal.Context(prec=prec * 30103 // 100000 + 30)
    val = ctx.exp(ctx.divide(-decimal.Decimal(x.numerator), decimal.Decimal(x.denominator)))
    return int(ctx.multiply(val, decimal.Decimal(1 << prec)).to_integral_value(rounding=decimal.ROUND_FLOOR))


def _build(s2: Fraction) -> tuple[np.ndarray, np.ndarray, float]:
    """The table (hi, lo words of c_0..c_{N-1}) and the TV bound.

    Weights W_x ~ 2^P exp(-x^2 / (2 s2)) for x = 0..N by the recurrence W_{x+1} = W_x R_x >> P,
    R_x ~ 2^P r^(2x+1), r = exp(-1 / (2 s2)), R_{x+1} = R_x r^2 >> P.  With e the error of r
    (<= 2 units) every product adds <= 1 unit, so err(R_x) <= e + x(2e + 2) and
    err(W_x) <= sum_{j<x} (err(R_j) + 1) <= 3 (x + 1)^2 units (values in [0, 1]).
    Folded pmf f_0 = W_0 / S, f_x = 2 W_x / S, S = W_0 + 2 sum W_x; c_i = round(2^128 F_i).
    TV <= (N + 1) 2^-129 (table rounding) + 2 sum err(W_x) / S (weights) + 2 T / S (tail),
    with T >= sum_{x > N} exp(-x^2 / (2 s2)) bounded geometrically by W_{N+1} / (1 - R_{N+1}).
    """
    p = _PREC
    one = 1 << p
    r = _exp_neg_fixed(1 / (2 * s2), p)
    r2 = (r * r) >> p
    weights = [one]
    big_r = r
    w = one
    # stop once the (geometric) tail bound of the next weights is below 2^-(OUT+2) of the total
    while True:
        w = (w * big_r) >> p
        big_r = (big_r * r2) >> p
        if (w << (_OUT + 3)) < one:  # only then can the tail bound below be small enough
            n = len(weights)
            tail = (w + 3 * (n + 1) ** 2 + 1) * one // max(one - big_r - 4 * n**2, 1) + 1
            if tail << (_OUT + 3) < one:  # S >= W_0 = 2^P, so 2 T / S < 2^-(OUT+2)
                break
        weights.append(w)
    n = len(weights)
    total = weights[0] + 2 * sum(weights[1:])
    # c_i ~ 2^OUT F_i through one reciprocal (nondecreasing; the TV bound uses the actual c_i)
    shift = p + _OUT + 64
    inv = (1 << shift) // total
    cum, cs, prev_c = 0, [], 0
    exact_round_err = 0  # sum over i of |q_i - f_i|, in units of 2^-OUT / total
    for x, wx in enumerate(weights):
        fw = wx if x == 0 else 2 * wx
        cum += fw
        c = (cum * inv) >> (shift - _OUT)
        cs.append(c)
        exact_round_err += abs((c - prev_c) * total - (fw << _OUT))
        prev_c = c
    exact_round_err += ((1 << _OUT) - prev_c) * total  # the last entry takes all u >= c_{N-1}
    cs = [c for c in cs[:-1] if c < 1 << _OUT]  # c_{N-1} := 2^128 (every remaining u); entries of 2^128 never count
    weight_err = n * (n + 1) * (2 * n + 1) // 2  # 2 * sum_{x<n} 3 (x + 1)^2
    bound = Fraction(exact_round_err, total << (_OUT + 1)) + Fraction(weight_err + 2 * tail, total)
    tv = math.nextafter(float(bound), math.inf)
    hi = np.array([c >> 64 for c in cs], dtype=np.uint64)
    lo = np.array([c & ((1 << 64) - 1) for c in cs], dtype=np.uint64)
    return hi, lo, tv
