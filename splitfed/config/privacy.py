"""[privacy]: local DP on what crosses the cuts, DP-SGD on the client adapters, the budget.

Noise is given either as a per-release target ``epsilon`` (calibrated at ``privacy.delta``:
with RDP for the default discrete mechanism, with the analytic Gaussian for the float one)
or directly as ``noise_multiplier`` (sigma over the L2 sensitivity); exactly one of the two
is set when a mechanism is enabled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from splitfed.config.fields import Section, key_error, opt, sub

PrivacyUnit = Literal["sequence", "token"]
CutMechanism = Literal["discrete", "float"]
AccountantName = Literal["rdp", "prv"]


def _grid_step():
    return opt(0.0, "discrete: the grid step, a power of two; 0 = automatic (rounding <= 1% of the sensitivity).", ge=0)


def _check_grid_step(section) -> None:
    if section.grid_step and math.frexp(section.grid_step)[0] != 0.5:
        raise key_error(f"{section._key}.grid_step", f"must be 0 or a power of two, got {section.grid_step!r}")


@dataclass(frozen=True)
class CutNoise(Section):
    """[privacy.activations] or [privacy.gradients]: clip each unit, add Gaussian noise, before sending."""

    _key: ClassVar[str] = "privacy.<channel>"

    enabled: bool = opt(False, "Clip and noise this channel before it leaves the client.")
    unit: PrivacyUnit = opt(
        "sequence", "sequence: one example's valid positions clipped as one vector; token: each position on its own."
    )
    clip: float = opt(1.0, "L2 bound of one unit (sensitivity is 2 * clip: local DP, replace-one).", gt=0)
    epsilon: float = opt(0.0, "Target epsilon per release at privacy.delta; 0 = not used.", ge=0)
    noise_multiplier: float = opt(0.0, "Noise sigma / sensitivity, given directly; 0 = not used.", ge=0)
    mechanism: CutMechanism = opt(
        "discrete",
        "discrete: integers on a power-of-two grid plus discrete Gaussian noise (exact sampling); "
        "float: float32 Gaussian noise (not covered by the stated epsilon; for comparison only).",
    )
    grid_step: float = _grid_step()

    def _check(self) -> None:
        _check_grid_step(self)
        if self.enabled and (self.epsilon > 0) == (self.noise_multiplier > 0):
            raise key_error(
                f"{self._key}.epsilon",
                "set exactly one of epsilon (calibrated) and noise_multiplier (direct) to a number > 0, "
                f"got epsilon = {self.epsilon!r}, noise_multiplier = {self.noise_multiplier!r}",
            )


@dataclass(frozen=True)
class DPSGDSection(Section):
    """[privacy.dpsgd]: DP-SGD (Opacus) on the client's bottom and top LoRA adapters."""

    _key: ClassVar[str] = "privacy.dpsgd"

    enabled: bool = opt(False, "Per-example clipping and Gaussian noise on the client adapter updates.")
    noise_multiplier: float = opt(1.0, "Noise sigma / max_grad_norm.", gt=0)
    max_grad_norm: float = opt(1.0, "Per-example gradient L2 bound over all client LoRA parameters.", gt=0)
    sample_rate: float = opt(0.0, "Poisson sampling rate; 0 = data.batch_size / the client's examples.", ge=0, le=1)
    mechanism: CutMechanism = opt(
        "discrete",
        "discrete: clipped per-example gradients snapped to a power-of-two grid, summed as integers, "
        "discrete Gaussian noise (exact sampling); float: Opacus' float32 Gaussian noise (not covered by "
        "the stated epsilon; for comparison only).",
    )
    grid_step: float = _grid_step()

    def _check(self) -> None:
        _check_grid_step(self)


@dataclass(frozen=True)
class PrivacySection(Section):
    """[privacy]: differential privacy, stated per client in its ledger."""

    _key: ClassVar[str] = "privacy"

    enabled: bool = opt(False, "Write a privacy ledger per client and apply the mechanisms enabled below.")
    delta: float = opt(1e-5, "delta of every (epsilon, delta) statement.", gt=0, lt=1)
    accountant: AccountantName = opt("rdp", "Accountant: rdp (Renyi DP) or prv (privacy random variables).")
    max_epsilon: float = opt(
        0.0, "Budget: a client whose next round would exceed this epsilon stops (0 = no budget).", ge=0
    )
    secure_noise: bool = opt(
        True,
        "Noise from a ChaCha20 keystream seeded by the OS.  false (kept for old configs): noise seeded from "
        "run.seed, which the server holds and can replay; every noised channel is then recorded as "
        "non-private (epsilon = inf).",
    )
    activations: CutNoise = sub(CutNoise, "[privacy.activations]: the Bottom's activations sent to the server.")
    gradients: CutNoise = sub(CutNoise, "[privacy.gradients]: the gradient the Top returns to the server.")
    dpsgd: DPSGDSection = sub(DPSGDSection, "[privacy.dpsgd]: DP-SGD on the client adapters.")

    def releases_integers(self, channel: CutNoise) -> bool:
        """Whether `channel` (``self.activations`` or ``self.gradients``) sends its training release as the
        discrete mechanism's integers (`wire.INTEGERS`) instead of through ``transport.compression``."""
        return self.enabled and channel.enabled and channel.mechanism == "discrete"

    def _check(self) -> None:
        if self.max_epsilon > 0 and not self.enabled:
            raise key_error("privacy.max_epsilon", "a budget needs privacy.enabled = true")
