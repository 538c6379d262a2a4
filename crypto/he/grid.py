r"""Integer scores on public power-of-two grids, and the discrete Gaussian noise a party adds to them.

A float score plus float Gaussian noise is not DP as bytes (Mironov 2012: the low-order bits
of ``fl(x + fl(z sigma))`` reveal ``x``). So a noising party scores integers instead:

- the querier quantises its unit query to ``q_int = round(2^bq q)`` and the party its unit
  document embeddings to ``e_int = round(2^be e)`` (each row first clipped to norm 1; every
  row is then checked, in integers, to ``||k|| <= 2^b + sqrt(d)/2``);
- CKKS computes ``s = <q_int, e_int>`` carried as the value ``s / 2^T``, ``T = bq + be``
  (both factors are exact dyadic floats), and the party adds the value ``z / 2^T`` with ``z``
  an integer discrete Gaussian draw (`crypto.dgauss.cdt_sampler`, randomness from
  ``os.urandom``);
- the querier decrypts, multiplies by ``2^T`` and rounds: exactly ``s + z`` whenever the CKKS
  error is below ``1/2`` grid step (it is about ``2^-22`` in value units at the default
  response scale ``2^40``, i.e. ``2^-5`` steps at ``T = 17``: :data:`PRECISION_BITS`).

Sensitivity (replace one document, honest unit query): ``|<q_int, e_int> - <q_int, e'_int>|
<= ||q_int|| (||e_int|| + ||e'_int||) <= 2 B_q B_e`` with ``B_b = 2^b + sqrt(d)/2``;
sigma in grid units is ``noise_multiplier * Delta``, an exact Fraction.
Imports numpy, the stdlib and `crypto.dgauss` only (no tenseal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from crypto.dgauss import CDTSampler, cdt_sampler

__all__ = [
    "MAX_GRID_BITS",
    "MAX_GRID_SIGMA",
    "PRECISION_BITS",
    "ScoreGrid",
    "ScoreNoise",
    "norm_bound",
    "quantize_unit",
]

PRECISION_BITS = 23
"""Decrypted scores are within ``2^(PRECISION_BITS - r)`` of the true value, ``r`` the response
scale's bits (``2 scale_bits - coeff_mod_bit_sizes[1]``). Measured, not proven: max error
``2.1e-7 = 2^-22.2`` over 7,526 rows at dim 384 with the default parameters (``r = 40``); the
querier checks every decryption (:meth:`ScoreGrid.round`), so a miss is an error, never silent."""
MAX_GRID_BITS = 17
"""``T = bq + be`` at most: ``2^(PRECISION_BITS - 40 + 17) = 2^-6`` steps of error by default."""
MAX_GRID_SIGMA = 2**17
"""Largest sigma (grid units) the automatic grid allows: the CDT table has ~13.3 sigma
entries (1.85 M, 30 MB, built in about 2 s at this sigma)."""
MAX_OFF_GRID = 0.25  # a decryption further than this from an integer means the CKKS error is too large


def _sqrt_upper(n: int) -> Fraction:
    """A dyadic Fraction >= sqrt(n), exact for perfect squares (as in `DiscreteGaussianLDP.grid`)."""
    root = math.isqrt(n)
    return Fraction(root) if root * root == n else Fraction(math.isqrt(n << 40) + 1, 1 << 20)


def norm_bound(bits: int, dim: int) -> Fraction:
    """``2^bits + sqrt(dim)/2``: bounds ``||round(2^bits u)||`` for every ``||u|| <= 1`` (triangle inequality)."""
    return Fraction(2**bits) + _sqrt_upper(dim) / 2


def quantize_unit(x: np.ndarray, bits: int) -> np.ndarray:
    """int64 rows ``round(2^bits u)``, ``u`` each row of ``x`` clipped to L2 norm <= 1.

    Every row is checked in integers to ``||k||^2 <= floor(norm_bound^2)``; a row a float clip
    left over it (it cannot happen by the triangle inequality, but the check is the guarantee)
    is shrunk until it passes.
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantise non-finite values")
    limit = math.floor(norm_bound(bits, x.shape[1]) ** 2)
    scaled = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0) * 2.0**bits
    shrink = np.ones((x.shape[0], 1))
    for j in range(30):
        k = np.round(scaled * shrink).astype(np.int64)
        over = (k * k).sum(axis=1) > limit
        if not over.any():
            return k
        shrink[over] *= 1.0 - 2.0 ** (j - 30)
    raise RuntimeError("could not bring a row within the norm bound")


@dataclass(frozen=True)
class ScoreGrid:
    """Public scales: query coordinates in steps of ``2^-query_bits``, documents in ``2^-doc_bits``."""

    dim: int
    query_bits: int
    doc_bits: int

    def __post_init__(self) -> None:
        for name in ("dim", "query_bits", "doc_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not (1 <= v <= (1 << 20 if name == "dim" else 26)):
                raise ValueError(f"{name} must be an integer in [1, {1 << 20 if name == 'dim' else 26}], got {v!r}")

    @classmethod
    def split(cls, dim: int, bits: int) -> ScoreGrid:
        """``bits`` shared as evenly as possible (query gets the odd bit): least rounding for that ``T``."""
        return cls(dim, (bits + 1) // 2, bits // 2)

    @property
    def bits(self) -> int:
        """``T = query_bits + doc_bits``: an integer score ``s`` stands for the cosine ``s / 2^T``."""
        return self.query_bits + self.doc_bits

    @property
    def sensitivity(self) -> Fraction:
        """``2 B_q B_e``: how far one document's integer score moves when the document is replaced."""
        return 2 * norm_bound(self.query_bits, self.dim) * norm_bound(self.doc_bits, self.dim)

    @property
    def max_score(self) -> int:
        """``floor(B_q B_e)``: the largest ``|<q_int, e_int>|`` (Cauchy-Schwarz)."""
        return math.floor(norm_bound(self.query_bits, self.dim) * norm_bound(self.doc_bits, self.dim))

    def quantize_query(self, vector: np.ndarray) -> np.ndarray:
        """int64 ``q_int`` of one query (clipped to unit norm)."""
        return quantize_unit(np.asarray(vector).reshape(1, -1), self.query_bits)[0]

    def quantize_docs(self, matrix: np.ndarray) -> np.ndarray:
        """int64 ``e_int`` rows (each clipped to unit norm)."""
        return quantize_unit(matrix, self.doc_bits)

    def round(self, values: np.ndarray) -> np.ndarray:
        """Decrypted values to the int64 scores ``round(v 2^T)``; ValueError if any is off the grid by > 1/4."""
        scaled = np.asarray(values, dtype=np.float64) * 2.0**self.bits
        k = np.round(scaled)
        off = float(np.abs(scaled - k).max(initial=0.0))
        if off > MAX_OFF_GRID:
            raise ValueError(f"decrypted scores are up to {off:.3g} off the integer grid (T = {self.bits})")
        return k.astype(np.int64)

    def to_meta(self) -> list[int]:
        """``[query_bits, doc_bits]`` for a JSON header."""
        return [self.query_bits, self.doc_bits]

    @classmethod
    def from_meta(cls, meta: Any, dim: int) -> ScoreGrid:
        """Inverse of :meth:`to_meta`; ValueError on anything else."""
        if not (isinstance(meta, list) and len(meta) == 2 and all(type(b) is int for b in meta)):
            raise ValueError(f"grid: expected [query_bits, doc_bits], got {meta!r}")
        return cls(dim, meta[0], meta[1])


@dataclass(frozen=True)
class ScoreNoise:
    """Discrete Gaussian noise on integer scores: sigma = ``noise_multiplier * grid.sensitivity`` grid steps."""

    grid: ScoreGrid
    noise_multiplier: Fraction

    def __post_init__(self) -> None:
        nm = self.noise_multiplier
        if not isinstance(nm, Fraction) or nm <= 0:
            raise ValueError(f"noise_multiplier must be a Fraction > 0, got {nm!r}")

    @classmethod
    def for_std(
        cls, noise_std: float, dim: int, *, max_bits: int = MAX_GRID_BITS, max_sigma: int = MAX_GRID_SIGMA
    ) -> ScoreNoise:
        """The noise a float Gaussian of ``noise_std`` (cosine units, sensitivity 2) was calibrated to.

        Same noise multiplier ``noise_std / 2``, hence the same epsilon; the finest grid with
        ``T <= max_bits`` whose sigma stays <= ``max_sigma`` steps. In cosine units the noise is
        ``noise_std * B_q B_e / 2^T``, a little above ``noise_std`` (the rounding's share).
        """
        if not (isinstance(noise_std, int | float) and math.isfinite(noise_std) and noise_std > 0):
            raise ValueError(f"noise_std must be a finite number > 0, got {noise_std!r}")
        nm = Fraction(noise_std) / 2
        for bits in range(max_bits, 1, -1):
            grid = ScoreGrid.split(dim, bits)
            if nm * grid.sensitivity <= max_sigma:
                return cls(grid, nm)
        raise ValueError(f"noise_std {noise_std:g} needs sigma above {max_sigma} steps even on a 2-bit grid")

    @property
    def sigma2(self) -> Fraction:
        """Variance in grid steps, exact."""
        return (self.noise_multiplier * self.grid.sensitivity) ** 2

    def prepare(self) -> None:
        """Build the noise table now (about 2 s at the largest sigma), not at the first answer."""
        cdt_sampler(self.sigma2)

    @property
    def sampler(self) -> CDTSampler:
        """The CDT sampler of :attr:`sigma2` (table built once, cached)."""
        return cdt_sampler(self.sigma2)

    @property
    def std(self) -> float:
        """The noise's standard deviation in cosine units (``sigma / 2^T``)."""
        return math.sqrt(self.sigma2) / 2.0**self.grid.bits

    def tv(self, rows: int) -> float:
        """Sampler TV slack of one answer of ``rows`` noised scores (``rows * sampler.tv``)."""
        return rows * self.sampler.tv

    @property
    def max_abs(self) -> int:
        """Largest ``|s + z|`` a noised score can reach: ``max_score`` plus the table's support."""
        return self.grid.max_score + self.sampler.support
