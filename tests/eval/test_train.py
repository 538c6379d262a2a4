"""A cell's client: its run config from the defense, and the wire's compression after the noise."""

from __future__ import annotations

import torch

from splitfed.config.tables import parse_table
from splitfed.eval.config import AttackConfig, DefenseSpec
from splitfed.eval.train import exact_channels, privacy_config, wire_round_trip


def _rc(tmp_path, **defense):
    cfg = parse_table(AttackConfig, {}, "")
    return privacy_config(cfg, DefenseSpec("d", **defense), {"activation": 2.0, "gradient": 0.5}, 120, tmp_path)


def test_the_run_config_takes_each_channels_noise_from_the_defense(tmp_path):
    p = _rc(tmp_path, activation_epsilon=8.0, activation_unit="token", gradient_noise_multiplier=0.3).privacy
    assert (p.activations.enabled, p.activations.epsilon, p.activations.unit, p.activations.clip) == (
        True, 8.0, "token", 2.0,
    )  # fmt: skip
    assert (p.gradients.noise_multiplier, p.gradients.unit, p.gradients.clip) == (0.3, "sequence", 0.5)
    assert not _rc(tmp_path).privacy.activations.enabled and not _rc(tmp_path).privacy.gradients.enabled


def test_compression_round_trips_every_channel_but_an_exact_integer_one(tmp_path):
    assert wire_round_trip("fp32") is None
    assert exact_channels(_rc(tmp_path)) == frozenset()
    assert exact_channels(_rc(tmp_path, activation_noise_multiplier=0.5)) == {"activation"}
    hook = wire_round_trip("int8", frozenset({"activation"}))
    y = torch.linspace(-3, 3, 24).reshape(2, 3, 4).requires_grad_(True)
    assert hook("activation", y) is y  # the discrete release goes as its integers, exactly
    z = hook("gradient", y)
    assert not torch.equal(z, y) and torch.allclose(z, y, atol=0.05)  # int8: close, not equal
    z.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))  # straight-through for autograd
