"""Discrete Gaussian releases: composed with RDP, the sampler's TV slack taken out of delta."""

import math

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from splitfed.privacy.accountants import OPACUS_ORDERS, PRVAccountant, RDPAccountant
from splitfed.privacy.calibrate import analytic_gaussian_sigma, discrete_gaussian_noise_multiplier
from splitfed.privacy.events import DiscreteGaussianEvent, GaussianEvent
from splitfed.privacy.ledger import LedgerEntry, Party, compose


def _dp_accounting_epsilon(nm: float, count: int, delta: float) -> float:
    acc = RdpAccountant(orders=list(OPACUS_ORDERS))
    acc.compose(dp_accounting.GaussianDpEvent(nm), count)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize(("nm", "count"), [(0.7, 1), (2.0, 30), (5.0, 1000)])
def test_epsilon_matches_dp_accounting_rdp_without_slack(nm, count):
    acc = RDPAccountant()
    acc.compose(DiscreteGaussianEvent(nm, count))
    assert acc.epsilon(1e-5) == pytest.approx(_dp_accounting_epsilon(nm, count, 1e-5), rel=1e-9)


def test_tv_slack_is_taken_out_of_delta():
    nm, count, tv, delta = 5.0, 30, 1e-11, 1e-5
    acc = RDPAccountant()
    acc.compose(DiscreteGaussianEvent(nm, count, tv))
    eps = acc.epsilon(delta)
    # the fixed point: eps is the RDP epsilon at delta - (1 + e^eps) * count * tv, up to the verification margin
    reduced = delta - (1 + math.exp(eps)) * count * tv
    assert _dp_accounting_epsilon(nm, count, reduced) <= eps <= _dp_accounting_epsilon(nm, count, reduced) + 1e-9
    assert eps > _dp_accounting_epsilon(nm, count, delta)
    huge = RDPAccountant()
    huge.compose(DiscreteGaussianEvent(nm, count, 1e-6))  # slack above delta: no statement
    assert huge.epsilon(delta) == math.inf


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 4.0])
def test_calibration_reaches_the_target_and_is_tight(epsilon):
    nm = discrete_gaussian_noise_multiplier(epsilon, 1e-5, tv=1e-20)
    assert _dp_accounting_epsilon(nm, 1, 1e-5) <= epsilon
    assert _dp_accounting_epsilon(nm * (1 - 2e-4), 1, 1e-5) > epsilon
    assert nm > analytic_gaussian_sigma(epsilon, 1e-5)  # RDP is looser than the exact analytic Gaussian
    many = discrete_gaussian_noise_multiplier(epsilon, 1e-5, releases=20)
    assert _dp_accounting_epsilon(many, 20, 1e-5) <= epsilon


def test_prv_composes_discrete_releases_with_rdp_and_says_so():
    prv = PRVAccountant()
    prv.compose(DiscreteGaussianEvent(2.0, 10))
    prv.compose(GaussianEvent(3.0, 5))
    rdp = RDPAccountant()
    rdp.compose(DiscreteGaussianEvent(2.0, 10))
    rdp.compose(GaussianEvent(3.0, 5))
    assert prv.epsilon(1e-5) == rdp.epsilon(1e-5)
    assert "discrete" in prv.fallback_reason


def test_ledger_round_trips_and_composes_the_event():
    entry = LedgerEntry(3, "activation_ldp", Party.SERVER, DiscreteGaussianEvent(2.0, 4, 1e-22), "sequence", 1.0)
    assert LedgerEntry.from_json(entry.to_json()) == entry
    assert compose([entry.event], 1e-5) == pytest.approx(_dp_accounting_epsilon(2.0, 4, 1e-5), rel=1e-9)


@pytest.mark.parametrize("tv", [-1e-9, 1.0, float("nan"), True])
def test_bad_tv_is_refused(tv):
    with pytest.raises(ValueError, match="tv"):
        DiscreteGaussianEvent(1.0, 1, tv)
