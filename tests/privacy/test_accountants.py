"""Accountants: the contract every accountant keeps, fixed values, and Google's dp_accounting as
an independent oracle (its RDP accountant at the same orders, its PLD accountant and exact
Gaussian epsilon), with quadrature where the two RDP implementations differ."""

import itertools
import json
import math
import subprocess
import sys
import warnings

import dp_accounting
import numpy as np
import pytest
from dp_accounting import gaussian_mechanism, pld
from dp_accounting.rdp import RdpAccountant
from scipy import integrate
from scipy.stats import norm

import splitfed.privacy.accountants as accountants
from splitfed.privacy.accountants import (
    ACCOUNTANTS,
    OPACUS_ORDERS,
    AccountingFallbackWarning,
    PRVAccountant,
    RDPAccountant,
    epsilon_of,
    make_accountant,
)
from splitfed.privacy.events import GaussianEvent, NonPrivateEvent, SampledGaussianEvent

MNIST_Q = 256 / 60000  # the Opacus MNIST example: batch 256 of 60000
INTEGER_ORDERS = [a for a in OPACUS_ORDERS if float(a).is_integer()]
GRID = list(itertools.product((0.7, 1.1, 2.0), (0.01, 0.1, 1.0), (1, 100, 1000), (1e-5, 1e-7)))


def _event(sigma, q, steps):
    return GaussianEvent(sigma, steps) if q == 1.0 else SampledGaussianEvent(sigma, q, steps)


def _dp_event(sigma, q):
    gaussian = dp_accounting.GaussianDpEvent(sigma)
    return gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)


def _quiet_epsilon(acc, delta):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AccountingFallbackWarning)
        return acc.epsilon(delta)


# --- the contract, for every registered accountant ---------------------------------------


@pytest.fixture(params=ACCOUNTANTS)
def name(request):
    return request.param


def test_a_fresh_accountant_has_spent_nothing(name):
    acc = make_accountant(name)
    assert acc.name == name and len(acc) == 0 and acc.epsilon(1e-5) == 0.0 and acc.fallback_reason is None


def test_a_non_private_event_makes_epsilon_infinite(name):
    acc = make_accountant(name)
    acc.compose(SampledGaussianEvent(1.1, 0.01, 10))
    acc.compose(NonPrivateEvent())
    assert acc.epsilon(1e-5) == math.inf and len(acc) == 2


def test_an_unsupported_event_is_refused_before_state_changes(name):
    acc = make_accountant(name)
    acc.compose(SampledGaussianEvent(1.1, 0.01, 10))
    before = acc.epsilon(1e-5)
    with pytest.raises(ValueError, match=f"{name} accountant: unsupported event str"):
        acc.compose("gaussian")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="count must be an integer >= 1"):
            acc.compose(GaussianEvent(1.0), count=bad)
    assert len(acc) == 1 and acc.epsilon(1e-5) == before


def test_composition_equals_one_event_with_the_summed_count(name):
    parts = make_accountant(name)
    parts.compose(SampledGaussianEvent(1.1, 0.01, 30))
    parts.compose(SampledGaussianEvent(1.1, 0.01, 5), count=4)
    parts.compose(GaussianEvent(3.0))
    parts.compose(SampledGaussianEvent(1.1, 0.01, 50))
    whole = make_accountant(name)
    whole.compose(GaussianEvent(3.0))
    whole.compose(SampledGaussianEvent(1.1, 0.01, 100))
    assert len(parts) == 7 and len(whole) == 2
    assert parts.epsilon(1e-5) == pytest.approx(whole.epsilon(1e-5), rel=1e-12)


@pytest.mark.parametrize("delta", [0, 1, -1e-5, 1.5, math.nan, "1e-5", True])
def test_delta_outside_0_1_is_refused(name, delta):
    acc = make_accountant(name)
    acc.compose(GaussianEvent(1.0))
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\), got"):
        acc.epsilon(delta)


def test_an_unknown_accountant_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown accountant 'gdp'; known: rdp, prv"):
        make_accountant("gdp")


def test_epsilon_of_composes_a_fresh_accountant():
    events = [SampledGaussianEvent(1.1, MNIST_Q, 1000), SampledGaussianEvent(1.1, MNIST_Q, 1000)]
    assert epsilon_of(events, 1e-5) == epsilon_of([SampledGaussianEvent(1.1, MNIST_Q, 2000)], 1e-5, "rdp")
    assert epsilon_of([NonPrivateEvent()], 1e-5, accountant="prv") == math.inf


# --- fixed values -------------------------------------------------------------------------


def test_fixed_values_for_the_opacus_mnist_schedule():
    event = SampledGaussianEvent(1.1, MNIST_Q, 2000)
    assert round(epsilon_of([event], 1e-5, "rdp"), 3) == 1.045
    assert round(epsilon_of([event], 1e-5, "prv"), 3) == 0.857


def test_rdp_equals_opacus_own_rdp_accountant():
    """The RDP maths is loaded from Opacus' file without its package: it must be Opacus' maths."""
    from opacus.accountants import RDPAccountant as OpacusRDP

    opacus_rdp = OpacusRDP()
    opacus_rdp.history = [(1.1, MNIST_Q, 2000), (0.8, 1.0, 3)]
    ours = RDPAccountant()
    ours.compose(SampledGaussianEvent(1.1, MNIST_Q, 2000))
    ours.compose(GaussianEvent(0.8, 3))
    assert ours.epsilon(1e-5) == pytest.approx(opacus_rdp.get_epsilon(1e-5), rel=1e-12)


@pytest.mark.process
def test_importing_and_using_the_rdp_accountant_does_not_import_torch():
    code = (
        "import json, sys\n"
        "from splitfed.privacy.accountants import epsilon_of\n"
        "from splitfed.privacy.events import SampledGaussianEvent\n"
        "eps = epsilon_of([SampledGaussianEvent(1.1, 256 / 60000, 2000)], 1e-5)\n"
        "print(json.dumps([eps, sorted(m for m in ('torch', 'opacus') if m in sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    eps, heavy = json.loads(out.stdout)
    assert round(eps, 3) == 1.045 and heavy == []


# --- dp_accounting as the oracle ----------------------------------------------------------


@pytest.mark.parametrize("sigma,q,steps,delta", GRID)
def test_rdp_equals_dp_accounting_rdp_at_the_same_integer_orders(sigma, q, steps, delta):
    oracle = RdpAccountant(orders=INTEGER_ORDERS)
    oracle.compose(_dp_event(sigma, q), steps)
    ours = RDPAccountant(orders=INTEGER_ORDERS)
    ours.compose(_event(sigma, q, steps))
    assert ours.epsilon(delta) == pytest.approx(oracle.get_epsilon(delta), rel=1e-6)


@pytest.mark.parametrize("sigma,q,steps,delta", GRID)
def test_at_fractional_orders_dp_accounting_is_only_looser(sigma, q, steps, delta):
    """dp_accounting 0.6.0 adds the negative binomial terms of A_alpha at fractional alpha as
    positive ones (an upper bound); Opacus subtracts them (exact, see the quadrature test)."""
    oracle = RdpAccountant(orders=list(OPACUS_ORDERS))
    oracle.compose(_dp_event(sigma, q), steps)
    ours = epsilon_of([_event(sigma, q, steps)], delta, "rdp")
    assert 0.9 * oracle.get_epsilon(delta) <= ours <= oracle.get_epsilon(delta) * (1 + 1e-9)


@pytest.mark.parametrize("q,sigma,order", [(0.1, 1.1, 1.5), (0.1, 1.1, 4.5), (0.01, 0.7, 2.5), (0.01, 2.0, 7.3)])
def test_fractional_order_rdp_is_exact_by_quadrature(q, sigma, order):
    """RDP of the sampled Gaussian: log E_{z~N(0, s^2)}[((1-q) + q e^{(2z-1)/(2s^2)})^alpha] / (alpha-1)."""

    def integrand(z):
        return norm.pdf(z, 0, sigma) * ((1 - q) + q * np.exp((2 * z - 1) / (2 * sigma**2))) ** order

    a_alpha, _ = integrate.quad(integrand, -40 * sigma, 40 * sigma, epsabs=0, epsrel=1e-12, limit=1000, points=[0, 1])
    rdp = accountants._opacus_rdp().compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=[order])[0]
    assert rdp == pytest.approx(math.log(a_alpha) / (order - 1), rel=1e-8)


@pytest.mark.parametrize("sigma,q,steps,delta", GRID)
def test_prv_agrees_with_dp_accounting_pld_where_reliable(sigma, q, steps, delta):
    acc = PRVAccountant()
    acc.compose(_event(sigma, q, steps))
    ours = _quiet_epsilon(acc, delta)
    if acc.fallback_reason is not None:  # reported the RDP bound: check it is exactly that
        assert ours == epsilon_of([_event(sigma, q, steps)], delta, "rdp") and ours > 10
        return
    if q == 1.0:  # `steps` Gaussians compose exactly into one with sigma / sqrt(steps)
        oracle = gaussian_mechanism.get_epsilon_gaussian(sigma / math.sqrt(steps), delta)
    else:
        pld_acc = pld.PLDAccountant(value_discretization_interval=1e-3)
        pld_acc.compose(_dp_event(sigma, q), steps)
        oracle = pld_acc.get_epsilon(delta)
    # PRV returns an upper bound within eps_error (0.01) above its estimate.
    assert 0.99 * oracle <= ours <= 1.03 * oracle + acc.eps_error


# --- where PRV is unreliable it says so and reports RDP -----------------------------------


def _prv_with(event):
    acc = PRVAccountant()
    acc.compose(event)
    return acc


def test_prv_falls_back_to_rdp_above_epsilon_10():
    event = SampledGaussianEvent(0.7, 0.1, 100)  # PRV 14.6, RDP 16.4
    acc = _prv_with(event)
    with pytest.warns(AccountingFallbackWarning, match="PRV gave epsilon 14.6, above 10"):
        eps = acc.epsilon(1e-5)
    assert eps == epsilon_of([event], 1e-5, "rdp") and "opacus#604" in acc.fallback_reason


def test_prv_is_not_even_tried_far_above_epsilon_10(monkeypatch):
    monkeypatch.setattr(accountants, "_opacus_prv_epsilon", lambda *a: pytest.fail("PRV should be skipped"))
    acc = _prv_with(GaussianEvent(0.7, 1000))
    with pytest.warns(AccountingFallbackWarning, match="far above 10"):
        assert acc.epsilon(1e-5) == epsilon_of([GaussianEvent(0.7, 1000)], 1e-5, "rdp")


def test_prv_falls_back_for_a_very_small_delta():
    event = SampledGaussianEvent(1.1, MNIST_Q, 2000)
    acc = _prv_with(event)
    with pytest.warns(AccountingFallbackWarning, match="delta 1e-12 is below 1e-10"):
        assert acc.epsilon(1e-12) == epsilon_of([event], 1e-12, "rdp")
    assert _quiet_epsilon(acc, 1e-5) < 0.86 and acc.fallback_reason is None  # reset per call


def test_prv_falls_back_when_it_raises(monkeypatch):
    def boom(*args):
        raise FloatingPointError("overflow in convolution")

    monkeypatch.setattr(accountants, "_opacus_prv_epsilon", boom)
    acc = _prv_with(SampledGaussianEvent(1.1, MNIST_Q, 2000))
    with pytest.warns(AccountingFallbackWarning, match="PRV failed \\(FloatingPointError: overflow"):
        assert acc.epsilon(1e-5) == pytest.approx(1.045, abs=5e-4)
