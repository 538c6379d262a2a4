"""Mironov's floating-point attack (CCS 2012), decided exactly, on one release of the cut.

For an observed release and a candidate input, decide whether the candidate could have
produced it.  The old float mechanism ``fl32(x + fl32(z * sigma))`` (reimplemented here as the
negative control) leaves gaps: many float32 outputs cannot come from a given input, so the
wrong one of two neighbouring candidates is excluded from a single release.  The integer
release (`DiscreteGaussianLDP`) never excludes either: every integer offset is a possible noise value.
"""

import numpy as np
import torch

from crypto.dgauss import cdt_sampler
from splitfed.privacy.calibrate import analytic_gaussian_sigma, discrete_gaussian_noise_multiplier
from splitfed.privacy.mechanisms import MAX_RELEASE_TV, DiscreteGaussianLDP, GaussianLDP, TorchNoise

SHAPE = (2, 64, 32)
RELEASES = 40
_F32 = np.float32


def _neighbours(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x, x2 = (torch.randn(SHAPE, generator=gen) for _ in range(2))
    return x, x2, torch.ones(SHAPE[:2], dtype=torch.long)


def _float_release(clipped: np.ndarray, sigma: np.float32, rng: np.random.Generator) -> np.ndarray:
    """The old release: z from float64 Box-Muller cast to float32, then fl32(x + fl32(z * sigma))."""
    z = rng.standard_normal(clipped.shape).astype(_F32)
    return (clipped + z * sigma).astype(_F32)


def _step(a: np.ndarray, k: int) -> np.ndarray:
    """`a` moved `k` float32 ulps (k may be negative)."""
    to = np.full_like(a, np.inf if k > 0 else -np.inf)
    for _ in range(abs(k)):
        a = np.nextafter(a, to)
    return a


def _float_possible(out: np.ndarray, cand: np.ndarray, sigma: np.float32, window: int = 8) -> np.ndarray:
    """Per coordinate: could some float32 noise n = fl32(z * sigma) (any float32 z) give fl32(cand + n) == out?

    Exact where decided: the noise values n with fl32(cand + n) == out are an interval around
    out - cand, searched `window` ulps each way; an interval reaching the window's edge is
    counted as possible (undecided, never excluded).  n is reachable iff some float32 z within
    4 ulps of n / sigma has fl32(z * sigma) == n (fl32(z * sigma) is monotone in z).
    """
    n0 = (out.astype(np.float64) - cand.astype(np.float64)).astype(_F32)
    possible = np.zeros(out.shape, dtype=bool)
    for j in range(-window, window + 1):
        n = _step(n0, j)
        maps = (cand + n).astype(_F32) == out
        if abs(j) == window:
            possible |= maps  # the interval may go on past the window: undecided
            continue
        z0 = (n.astype(np.float64) / np.float64(sigma)).astype(_F32)
        reach = np.zeros(out.shape, dtype=bool)
        for i in range(-4, 5):
            z = _step(z0, i)
            reach |= (z * sigma).astype(_F32) == n
        possible |= maps & reach
    return possible


def test_float_release_excludes_the_wrong_neighbour_and_never_the_true_one():
    nm = analytic_gaussian_sigma(1.0, 1e-5)
    mech = GaussianLDP(clip=1.0, noise_multiplier=nm)
    sigma = _F32(mech.sigma)
    rng = np.random.default_rng(0)
    excluded = 0
    for r in range(RELEASES):
        x, x2, mask = _neighbours(r)
        cx, cx2 = (mech.clip_only(v, mask).numpy().astype(_F32) for v in (x, x2))
        out = _float_release(cx, sigma, rng)
        assert _float_possible(out, cx, sigma).all()  # the truth is never excluded
        excluded += int(not _float_possible(out, cx2, sigma).all())
    assert excluded >= RELEASES - 1  # measured: 40 of 40


def _table_probability_positive(sigma2, offsets: np.ndarray) -> bool:
    """Every |offset| has probability > 0 in the CDT table: c_m > c_{m-1} (c_{-1} = 0, the last c = 2^128)."""
    sampler = cdt_sampler(sigma2)
    m = np.abs(offsets).astype(np.int64).ravel()
    if m.max() > sampler.support:
        return False
    hi, lo = (np.append(w, np.uint64(2**64 - 1)) for w in (sampler.hi, sampler.lo))  # stand-in for 2^128
    prev_hi = np.where(m > 0, hi[np.maximum(m - 1, 0)], 0)
    prev_lo = np.where(m > 0, lo[np.maximum(m - 1, 0)], 0)
    last = m == sampler.support  # 2^128 - c_{N-1} > 0 since every stored entry is < 2^128
    grows = (hi[m] > prev_hi) | ((hi[m] == prev_hi) & (lo[m] > prev_lo))
    return bool(np.all(grows | last))


def test_integer_release_never_excludes_either_neighbour():
    nm = discrete_gaussian_noise_multiplier(1.0, 1e-5, tv=MAX_RELEASE_TV)
    mech = DiscreteGaussianLDP(clip=1.0, noise_multiplier=nm, max_positions=SHAPE[1])
    gamma, delta, sigma2 = mech.grid(SHAPE[2])
    noise = TorchNoise(torch.Generator().manual_seed(0))
    for r in range(RELEASES):
        x, x2, mask = _neighbours(r)
        out = mech.apply(x, mask, noise).detach().double()
        k_out = out / gamma
        assert torch.equal(k_out, torch.round(k_out))  # the receiver recovers the integers exactly
        for cand in (x, x2):
            k = mech.quantize(mech.clip_only(cand, mask), gamma, delta).double()
            offsets = (k_out - k).numpy()  # the noise this candidate needs, coordinate by coordinate
            assert _table_probability_positive(sigma2, offsets)


def test_dpsgd_integer_release_never_excludes_the_dataset_without_one_example():
    """DP-SGD's release (the snapped per-example sum plus the draw): both D and D minus one
    example need only noise values the table can return, coordinate by coordinate."""
    from crypto.dgauss import KeystreamBytes
    from splitfed.privacy.dpsgd import DPSGDConfig
    from splitfed.privacy.grid import snap_rows

    d, rows = 300, 5
    grads = torch.randn((rows, d), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dp = DPSGDConfig(noise_multiplier=0.8, max_grad_norm=1.0, sample_rate=0.1)
    gamma, bound, sigma2 = dp.grid(d)
    k = snap_rows(grads * (1.0 / grads.norm(dim=1, keepdim=True).clamp(min=1.0)), gamma, bound)
    for r in range(RELEASES):
        z = torch.from_numpy(cdt_sampler(sigma2).sample(d, KeystreamBytes(r.to_bytes(32, "little"))))
        out = k.sum(dim=0) + z
        for cand in (k, k[1:]):
            assert _table_probability_positive(sigma2, (out - cand.sum(dim=0)).numpy())
