"""Local DP on the cut: the clipping bound per unit, padding, and the distribution of the noise."""

import math

import pytest
import torch
from scipy import stats

from splitfed.privacy.events import GaussianEvent
from splitfed.privacy.mechanisms import GaussianLDP, SecureNoise, TorchNoise


def _batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, generator=gen) * 4
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, 3:] = 0  # right padding
    mask[2, :2] = 0  # left padding
    return x, mask


@pytest.mark.parametrize("unit", ["sequence", "token"])
def test_clipping_bound_holds_per_unit_and_padding_is_zeroed(unit):
    x, mask = _batch()
    mech = GaussianLDP(clip=1.5, noise_multiplier=1.0, unit=unit)
    c = mech.clip_only(x, mask)
    assert torch.all(c[mask == 0] == 0)
    norms = c.flatten(1).norm(dim=1) if unit == "sequence" else c.norm(dim=-1)[mask.bool()]
    assert torch.all(norms <= 1.5 + 1e-5) and torch.allclose(norms.max(), torch.tensor(1.5))
    small = x * 1e-3  # inside the ball: unchanged
    torch.testing.assert_close(mech.clip_only(small, mask), small * mask.unsqueeze(-1))


@pytest.mark.parametrize("noise", [TorchNoise(torch.Generator().manual_seed(1)), SecureNoise()])
def test_noise_has_the_stated_distribution(noise):
    x = torch.randn(16, 64, 32)
    mask = torch.ones(16, 64, dtype=torch.long)
    mech = GaussianLDP(clip=2.0, noise_multiplier=0.7, unit="sequence")
    assert mech.sigma == pytest.approx(0.7 * 2 * 2.0)
    z = ((mech.apply(x, mask, noise) - mech.clip_only(x, mask)) / mech.sigma).flatten().double().numpy()
    assert abs(z.mean()) < 4 / math.sqrt(z.size)
    assert abs(z.std() - 1) < 0.01
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_padding_gets_no_noise_and_the_bottom_learns_through_the_clip():
    x, mask = _batch()
    x.requires_grad_(True)
    out = GaussianLDP(clip=1.0, noise_multiplier=0.5).apply(x, mask, TorchNoise(torch.Generator().manual_seed(2)))
    assert torch.all(out[mask == 0] == 0)
    out.sum().backward()
    assert x.grad is not None and torch.all(x.grad[mask == 0] == 0) and x.grad.abs().sum() > 0


def test_events_state_the_unit():
    seq = GaussianLDP(clip=1.0, noise_multiplier=2.0, unit="sequence").event(3, max_positions=64)
    tok = GaussianLDP(clip=1.0, noise_multiplier=2.0, unit="token").event(3, max_positions=64)
    assert seq == GaussianEvent(2.0, 3) and tok == GaussianEvent(2.0 / 8, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(clip=0, noise_multiplier=1), "clip"),
        (dict(clip=1, noise_multiplier=math.inf), "noise_multiplier"),
        (dict(clip=1, noise_multiplier=1, unit="word"), "unit"),
    ],
)
def test_refused_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianLDP(**kwargs)


def test_secure_noise_draws_differ():
    a, b = SecureNoise().gaussian((100,)), SecureNoise().gaussian((100,))
    assert not torch.equal(a, b) and a.dtype == torch.float32
