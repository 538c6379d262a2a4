"""The discrete Gaussian samplers of `crypto.dgauss` against the exact pmf."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from crypto.dgauss import CDTSampler, ExactSampler, KeystreamBytes, as_sigma2, cdt_sampler


def _pmf(sigma2: float, lo: int, hi: int) -> np.ndarray:
    support = np.arange(-int(40 * math.sqrt(sigma2)) - 40, int(40 * math.sqrt(sigma2)) + 41)
    w = np.exp(-(support.astype(float) ** 2) / (2 * sigma2))
    p = w / w.sum()
    inner = p[(support >= lo) & (support <= hi)]
    return np.concatenate([[p[support < lo].sum()], inner, [p[support > hi].sum()]])


def _chi2_pvalue(samples: np.ndarray, sigma2: float, width: float) -> float:
    k = int(width * math.sqrt(sigma2))
    expected = _pmf(sigma2, -k, k) * len(samples)
    observed = np.concatenate(
        [[np.sum(samples < -k)], np.bincount(np.clip(samples, -k, k) + k, minlength=2 * k + 1), [np.sum(samples > k)]]
    )
    observed[1] -= np.sum(samples < -k)  # clip moved the tails into the edge bins: take them back
    observed[-2] -= np.sum(samples > k)
    keep = expected > 5  # tail bins with enough expected mass to test
    return float(stats.chisquare(observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum()).pvalue)


@pytest.mark.parametrize("sigma2", [Fraction(1, 4), Fraction(9), Fraction(2000)])
def test_cdt_sampler_matches_the_pmf_including_the_tails(sigma2):
    x = CDTSampler(sigma2).sample(400_000, KeystreamBytes(bytes(range(32))))
    assert _chi2_pvalue(x, float(sigma2), 3.5) > 1e-3
    assert abs(x.mean()) < 5 * math.sqrt(float(sigma2) / len(x))
    exact_var = sum(v * v * p for v, p in _support_pmf(float(sigma2)))
    assert abs(x.var() / exact_var - 1) < 0.02


def _support_pmf(sigma2: float):
    support = range(-int(40 * math.sqrt(sigma2)) - 40, int(40 * math.sqrt(sigma2)) + 41)
    w = [math.exp(-v * v / (2 * sigma2)) for v in support]
    z = sum(w)
    return [(v, wv / z) for v, wv in zip(support, w, strict=True)]


@pytest.mark.parametrize("sigma2", [Fraction(1, 4), Fraction(9)])
def test_exact_sampler_matches_the_pmf(sigma2):
    x = ExactSampler(KeystreamBytes(bytes(range(1, 33)))).sample(sigma2, 6000)
    assert _chi2_pvalue(x, float(sigma2), 3.0) > 1e-3
    exact_var = sum(v * v * p for v, p in _support_pmf(float(sigma2)))
    assert abs(x.var() / exact_var - 1) < 0.08


def test_both_samplers_agree_in_a_two_sample_test():
    fast = CDTSampler(Fraction(25)).sample(20_000, KeystreamBytes(bytes(32)))
    exact = ExactSampler(KeystreamBytes(bytes([7]) * 32)).sample(Fraction(25), 4000)
    bins = np.arange(-30, 32)
    table = np.array([np.histogram(fast, bins)[0], np.histogram(exact, bins)[0]])
    table = table[:, table.sum(axis=0) >= 10]
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_tv_bound_is_tiny_for_typical_sigmas():
    for sigma in (3, 300, 15_000):
        assert CDTSampler(Fraction(sigma) ** 2).tv < 1e-30


def test_determinism_under_an_injected_seed_and_fresh_noise_by_default():
    c = cdt_sampler(Fraction(100))
    a = c.sample(1000, KeystreamBytes(bytes(32)))
    assert np.array_equal(a, c.sample(1000, KeystreamBytes(bytes(32))))
    assert not np.array_equal(a, c.sample(1000, KeystreamBytes(bytes([1]) * 32)))
    assert not np.array_equal(c.sample(1000), c.sample(1000))
    e = [ExactSampler(KeystreamBytes(bytes(32))).sample(Fraction(100), 50) for _ in range(2)]
    assert np.array_equal(*e)
    assert cdt_sampler(Fraction(100)) is c  # tables cached per sigma


def test_inversion_resolves_ties_in_the_low_word_exactly():
    c = CDTSampler(Fraction(4))
    table = [int(h) << 64 | int(lw) for h, lw in zip(c.hi, c.lo, strict=True)]
    us = [v + d for v in table for d in (-1, 0, 1)] + [0, (1 << 128) - 1]
    u_hi = np.array([u >> 64 for u in us], dtype=np.uint64)
    u_lo = np.array([u & (2**64 - 1) for u in us], dtype=np.uint64)
    expected = [sum(1 for v in table if v <= u) for u in us]  # c_i <= u counts, with Python integers
    assert c.magnitudes(u_hi, u_lo).tolist() == expected


@pytest.mark.parametrize("bad", [0, -1, Fraction(0), float("nan"), float("inf"), 1e20, "4", True])
def test_sigma_edges_are_refused_with_a_clear_message(bad):
    with pytest.raises(ValueError, match="sigma2"):
        as_sigma2(bad)
    with pytest.raises(ValueError, match="sigma2"):
        CDTSampler(bad)


def test_float_sigma2_is_taken_exactly():
    assert as_sigma2(0.1) == Fraction(0.1) != Fraction(1, 10)
