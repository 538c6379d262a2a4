"""The integer release on the cut: grid, integer clipping bound, exact float32 values, noise, gradient."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from crypto.dgauss import cdt_sampler
from splitfed.privacy.grid import GRID_ROUNDING_SHARE
from splitfed.privacy.mechanisms import MAX_RELEASE_TV, DiscreteGaussianLDP, TorchNoise


def _batch(b=3, t=5, d=8, scale=4.0):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, t, d, generator=gen) * scale
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 3:] = 0
    mask[2, :2] = 0
    return x, mask


@pytest.mark.parametrize("unit", ["sequence", "token"])
def test_release_is_integers_on_the_grid_exactly_and_padding_stays_zero(unit):
    x, mask = _batch()
    mech = DiscreteGaussianLDP(clip=1.5, noise_multiplier=1.0, unit=unit, max_positions=5)
    gamma, delta, _ = mech.grid(8)
    assert math.frexp(gamma)[0] == 0.5  # a power of two
    out = mech.apply(x, mask, TorchNoise(torch.Generator().manual_seed(1)))
    assert out.dtype == torch.float32
    k = out.double() / gamma
    assert torch.equal(k, torch.round(k)) and k.abs().max() < 2**24
    assert torch.all(out[mask == 0] == 0)


@pytest.mark.parametrize("unit", ["sequence", "token"])
def test_default_grid_keeps_rounding_within_one_percent_of_the_sensitivity(unit):
    mech = DiscreteGaussianLDP(clip=1.0, noise_multiplier=4.0, unit=unit, max_positions=128)
    gamma, delta, sigma2 = mech.grid(576)
    d = 576 if unit == "token" else 128 * 576
    root = math.isqrt(d)
    sqrt_d = Fraction(root) if root * root == d else Fraction(math.isqrt(d << 40) + 1, 1 << 20)
    assert delta == 2 * Fraction(1.0) / Fraction(gamma) + sqrt_d >= 2 / gamma + math.sqrt(d)
    assert math.sqrt(d) <= 2 * GRID_ROUNDING_SHARE * float(delta - math.sqrt(d))  # rounding share of Delta
    assert sigma2 == (Fraction(4.0) * delta) ** 2


@pytest.mark.parametrize("unit", ["sequence", "token"])
def test_integer_norm_bound_holds_even_where_float_clipping_overshoots(unit):
    mech = DiscreteGaussianLDP(clip=1.0, noise_multiplier=1.0, unit=unit, max_positions=4, grid_step=2.0**-3)
    gamma, delta, _ = mech.grid(16)
    # every coordinate at +gamma/2 (rounds away) and a norm just above the clip: the worst case for rounding
    x = torch.full((2, 4, 16), 0.5 * gamma, dtype=torch.float32)
    x = x * (
        1.0001 / x.flatten(1).norm(dim=1)[:, None, None]
        if unit == "sequence"
        else 1.0001 / x.norm(dim=-1, keepdim=True)
    )
    k = mech.quantize(x, gamma, delta)
    sq = (k * k).flatten(1).sum(dim=1) if unit == "sequence" else (k * k).sum(dim=-1)
    assert all(4 * int(v) <= delta**2 for v in sq.flatten())  # ||k|| <= Delta / 2, in integers


def test_gradient_flows_as_through_the_clipping_only():
    x, mask = _batch()
    mech = DiscreteGaussianLDP(clip=1.0, noise_multiplier=2.0, max_positions=5)
    a = x.clone().requires_grad_()
    w = torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    (mech.apply(a, mask, TorchNoise(torch.Generator().manual_seed(4))) * w).sum().backward()
    b = x.clone().requires_grad_()
    (mech.clip_only(b, mask) * w).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_noise_is_the_discrete_gaussian_of_the_grid():
    mech = DiscreteGaussianLDP(clip=1.0, noise_multiplier=0.05, unit="token", max_positions=1, grid_step=2.0**-4)
    gamma, delta, sigma2 = mech.grid(64)
    x = torch.zeros(400, 8, 64)
    mask = torch.ones(400, 8, dtype=torch.long)
    z = (mech.apply(x, mask, TorchNoise(torch.Generator().manual_seed(5))).double() / gamma).flatten().numpy()
    assert np.all(z == np.round(z))
    support = np.arange(-200, 201)
    w = np.exp(-(support**2) / (2 * float(sigma2)))
    var = float((support**2 * w).sum() / w.sum())
    assert abs(z.var() / var - 1) < 0.01 and abs(z.mean()) < 5 * math.sqrt(var / z.size)


def test_reproducible_with_an_injected_generator():
    x, mask = _batch()
    mech = DiscreteGaussianLDP(clip=1.0, noise_multiplier=1.0, max_positions=5)
    a, b = (mech.apply(x, mask, TorchNoise(torch.Generator().manual_seed(9))) for _ in range(2))
    assert torch.equal(a, b)


def test_event_states_the_noise_multiplier_and_the_tv_slack():
    seq = DiscreteGaussianLDP(1.0, 2.0, "sequence", 64).event(3, max_positions=64)
    tok = DiscreteGaussianLDP(1.0, 2.0, "token", 64).event(3, max_positions=64)
    assert (seq.noise_multiplier, seq.count, seq.tv) == (2.0, 3, MAX_RELEASE_TV)
    assert tok.noise_multiplier == pytest.approx(2.0 / 8)
    _, _, sigma2 = DiscreteGaussianLDP(1.0, 4.0, "sequence", 128).grid(576)
    assert 128 * 576 * cdt_sampler(sigma2).tv <= MAX_RELEASE_TV < 1e-21


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grid_step": 0.3}, "grid_step"),
        ({"grid_step": -1.0}, "grid_step"),
        ({"max_positions": 0}, "max_positions"),
        ({"clip": 0.0}, "clip"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    base = {"clip": 1.0, "noise_multiplier": 1.0}
    with pytest.raises(ValueError, match=match):
        DiscreteGaussianLDP(**{**base, **kwargs})


def test_a_grid_too_fine_for_float32_is_refused_or_coarsened():
    with pytest.raises(ValueError, match="2\\^24"):
        DiscreteGaussianLDP(1.0, 1000.0, "token", grid_step=2.0**-20).grid(64)
    gamma, delta, sigma2 = DiscreteGaussianLDP(1.0, 1000.0, "token").grid(64)
    assert float(delta) / 2 + 14 * math.sqrt(sigma2) < 2**24
