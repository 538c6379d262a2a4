"""Snapping a clipped vector to a power-of-two grid, with its integer sensitivity, exactly.

A vector x with ||x|| <= C, divided by a grid step gamma (a power of two) and rounded per
coordinate, gives integers k with ||k|| <= C / gamma + sqrt(d) / 2.  `snap_rows` checks that
bound in integers (a float clip can overshoot by an ulp) and shrinks the rare row that
exceeds it, so the bound the accountant uses holds for the integers actually released.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from crypto.dgauss import cdt_sampler
from splitfed.checks import is_number

GRID_ROUNDING_SHARE = 0.01  # the default grid's rounding adds at most this share of clip / gamma


def valid_step(g: object) -> bool:
    """Whether `g` is a grid step a config may name: 0 (automatic) or a finite power of two."""
    ok = is_number(g) and math.isfinite(g) and g >= 0
    return ok and (g == 0 or math.frexp(g)[0] == 0.5)


def noise_tv(sigma2: Fraction, coords: int) -> float:
    """The sampler's TV slack of one release of `coords` draws at grid variance `sigma2`, rounded up."""
    return math.nextafter(coords * cdt_sampler(sigma2).tv, math.inf)


def sqrt_upper(d: int) -> Fraction:
    """An exact rational upper bound of sqrt(d), tight to 2^-20."""
    root = math.isqrt(d)
    return Fraction(root) if root * root == d else Fraction(math.isqrt(d << 40) + 1, 1 << 20)


def default_step(clip: float, d: int) -> float:
    """The largest power of two gamma with sqrt(d) / 2 <= GRID_ROUNDING_SHARE * clip / gamma."""
    return 2.0 ** math.floor(math.log2(2 * GRID_ROUNDING_SHARE * clip / float(sqrt_upper(d))))


def row_bound(clip: float, gamma: float, d: int) -> Fraction:
    """Upper bound of ||round(x / gamma)|| for ||x|| <= clip in d coordinates."""
    return Fraction(clip) / Fraction(gamma) + sqrt_upper(d) / 2


def snap_rows(x: torch.Tensor, gamma: float, bound: Fraction) -> torch.Tensor:
    """(N, m) float rows -> int64 round(x / gamma), every row checked in integers to norm <= bound."""
    scaled = x.detach().double() / gamma  # exact: a float over a power of two, in float64
    limit = math.floor(bound**2)  # ||k||^2 is an integer: <= bound^2 iff <= its floor
    scale = torch.ones((scaled.shape[0], 1), dtype=torch.float64, device=scaled.device)
    for j in range(30):
        k = torch.round(scaled * scale).to(torch.int64)
        over = ((k * k).sum(dim=1) > limit).unsqueeze(1)
        if not bool(over.any()):
            return k
        scale = torch.where(over, scale * (1.0 - 2.0 ** (j - 30)), scale)  # a float clip overshot: shrink it
    raise RuntimeError("could not bring a row within the clipping bound")
