"""Calibration: the analytic Gaussian mechanism (exact, checked against dp_accounting and the
textbook bound), accountant-based noise search, local-DP noise per release, validation."""

import math

import dp_accounting
import pytest
from dp_accounting import gaussian_mechanism, pld
from scipy.stats import norm

from splitfed.privacy.accountants import epsilon_of
from splitfed.privacy.calibrate import (
    analytic_gaussian_epsilon,
    analytic_gaussian_sigma,
    gaussian_composition_epsilon,
    gaussian_delta,
    ldp_release_sigma,
    noise_multiplier_for,
)
from splitfed.privacy.events import GaussianEvent, SampledGaussianEvent

CASES = [(0.1, 1e-5), (0.5, 1e-10), (1.0, 1e-5), (3.0, 1e-7), (8.0, 1e-5), (50.0, 1e-3)]


def _delta_of(sigma, epsilon):
    """Balle & Wang Theorem 8, written out independently with scipy.stats (sensitivity 1)."""
    return norm.cdf(0.5 / sigma - epsilon * sigma) - math.exp(epsilon) * norm.cdf(-0.5 / sigma - epsilon * sigma)


@pytest.mark.parametrize("epsilon,delta", CASES)
def test_analytic_sigma_is_tight(epsilon, delta):
    sigma = analytic_gaussian_sigma(epsilon, delta)
    assert _delta_of(sigma, epsilon) == pytest.approx(delta, rel=1e-9)
    assert gaussian_delta(sigma, epsilon) == pytest.approx(delta, rel=1e-9)
    assert _delta_of(sigma * (1 - 1e-6), epsilon) > delta  # a little less noise is not enough


@pytest.mark.parametrize("epsilon,delta", CASES)
def test_analytic_round_trips(epsilon, delta):
    sigma = analytic_gaussian_sigma(epsilon, delta)
    assert analytic_gaussian_epsilon(sigma, delta) == pytest.approx(epsilon, rel=1e-9)
    assert analytic_gaussian_sigma(analytic_gaussian_epsilon(2.5, delta), delta) == pytest.approx(2.5, rel=1e-9)


@pytest.mark.parametrize("epsilon,delta", CASES)
def test_analytic_agrees_with_dp_accounting_gaussian(epsilon, delta):
    sigma = analytic_gaussian_sigma(epsilon, delta)
    assert sigma == pytest.approx(gaussian_mechanism.get_sigma_gaussian(epsilon, delta), rel=1e-9)


@pytest.mark.parametrize("epsilon,delta", CASES[:-1])  # epsilon 50 takes PLD seconds
def test_analytic_agrees_with_dp_accounting_pld(epsilon, delta):
    sigma = analytic_gaussian_sigma(epsilon, delta)
    acc = pld.PLDAccountant()  # the PLD of one Gaussian is exact up to its discretisation
    acc.compose(dp_accounting.GaussianDpEvent(sigma))
    assert acc.get_epsilon(delta) == pytest.approx(epsilon, rel=1e-6)


@pytest.mark.parametrize("epsilon,delta", [(0.1, 1e-5), (0.5, 1e-10), (0.9, 1e-3)])
def test_analytic_beats_the_classical_bound_below_epsilon_1(epsilon, delta):
    assert analytic_gaussian_sigma(epsilon, delta) < math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def test_sigma_scales_with_sensitivity_and_tiny_noise_is_epsilon_0():
    assert analytic_gaussian_sigma(1.0, 1e-5, sensitivity=2.0) == pytest.approx(2 * analytic_gaussian_sigma(1.0, 1e-5))
    assert analytic_gaussian_epsilon(8.0, 1e-5, sensitivity=2.0) == analytic_gaussian_epsilon(4.0, 1e-5)
    assert analytic_gaussian_epsilon(1e6, 0.5) == 0.0  # delta covers the whole effect


@pytest.mark.parametrize("accountant,q,steps", [("rdp", 256 / 60000, 2000), ("rdp", 1.0, 5), ("prv", 0.01, 100)])
def test_noise_multiplier_for_is_the_smallest_within_budget(accountant, q, steps):
    nm = noise_multiplier_for(1.0, 1e-5, sample_rate=q, steps=steps, accountant=accountant)
    assert epsilon_of([SampledGaussianEvent(nm, q, steps)], 1e-5, accountant) <= 1.0
    assert epsilon_of([SampledGaussianEvent(nm * (1 - 1e-3), q, steps)], 1e-5, accountant) > 1.0


def test_ldp_release_sigma():
    assert ldp_release_sigma(8.0, 1e-5) == analytic_gaussian_sigma(8.0, 1e-5)
    nm = ldp_release_sigma(8.0, 1e-5, releases=3)
    assert gaussian_composition_epsilon([GaussianEvent(nm, 3)], 1e-5) == pytest.approx(8.0, rel=1e-9)
    assert epsilon_of([GaussianEvent(nm, 3)], 1e-5, "rdp") > 8.0  # RDP is an upper bound, loose here


def test_exact_gaussian_composition():
    one = analytic_gaussian_sigma(3.0, 1e-6)
    events = [GaussianEvent(one * 2, 2), GaussianEvent(one * 2, 1), GaussianEvent(one * 2)]  # 4 releases at 2s
    assert gaussian_composition_epsilon(events, 1e-6) == pytest.approx(3.0, rel=1e-9)
    assert gaussian_composition_epsilon([], 1e-6) == 0.0
    with pytest.raises(ValueError, match="only GaussianEvent composes exactly"):
        gaussian_composition_epsilon([SampledGaussianEvent(1.0, 0.1)], 1e-6)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: analytic_gaussian_sigma(0, 1e-5), r"epsilon must be a finite number > 0, got 0"),
        (lambda: analytic_gaussian_sigma(math.inf, 1e-5), r"epsilon must be a finite number > 0, got inf"),
        (lambda: analytic_gaussian_sigma(True, 1e-5), r"epsilon must be a finite number > 0, got True"),
        (lambda: analytic_gaussian_sigma(1.0, 1.0), r"delta must be in \(0, 1\), got 1.0"),
        (lambda: analytic_gaussian_sigma(1.0, 1e-5, sensitivity=-2), r"sensitivity must be a finite number > 0"),
        (lambda: analytic_gaussian_epsilon(0.0, 1e-5), r"sigma must be a finite number > 0, got 0.0"),
        (lambda: analytic_gaussian_epsilon(1.0, math.nan), r"delta must be in \(0, 1\), got nan"),
        (lambda: gaussian_delta(1.0, -1), r"epsilon must be a finite number >= 0, got -1"),
        (lambda: noise_multiplier_for(-1, 1e-5, sample_rate=0.1, steps=10), r"epsilon must be .* got -1"),
        (lambda: noise_multiplier_for(1, 1e-5, sample_rate=0, steps=10), r"sample_rate must be in \(0, 1\], got 0"),
        (lambda: noise_multiplier_for(1, 1e-5, sample_rate=1.5, steps=10), r"sample_rate must be in \(0, 1\]"),
        (lambda: noise_multiplier_for(1, 1e-5, sample_rate=0.1, steps=0), r"steps must be an integer >= 1, got 0"),
        (lambda: noise_multiplier_for(1, 1e-5, sample_rate=0.1, steps=2.5), r"steps must be an integer >= 1, got 2.5"),
        (lambda: noise_multiplier_for(1, 1e-5, sample_rate=0.1, steps=9, accountant="gdp"), r"unknown accountant"),
        (lambda: noise_multiplier_for(1e-9, 1e-5, sample_rate=1.0, steps=10**6), r"out of reach"),
        (lambda: ldp_release_sigma(1.0, 1e-5, releases=0), r"releases must be an integer >= 1, got 0"),
    ],
)
def test_bad_inputs_are_refused_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()
