"""DP-SGD on the client's adapters (Bottom and Top LoRA together) with Opacus, for split training.

This module holds the settings, the Poisson sampling and the per-example loss, and loads no
model stack; the step itself is `splitfed.training.ClientStep` with the DP-SGD strategy of
`splitfed.privacy.dpsgd_step` (`DPSGDStrategy`).

One step, over every trainable parameter the client holds (the LoRA tensors of Bottom and Top):

    per-example gradients (Opacus `GradSampleModule`, "hooks")  ->  one flat L2 norm per example
    over all of them  ->  clip to `max_grad_norm` (C)  ->  snap to the grid gamma Z (integers k_i,
    ||k_i|| <= C / gamma + sqrt(d) / 2 = Delta, checked in integers)  ->  sum the integers  ->
    + discrete Gaussian noise of sigma = nm * Delta grid units, drawn without floating point
    (`crypto.dgauss`, a ChaCha20 keystream seeded from the OS)  ->  * gamma / expected batch
    size (q * n)  ->  AdamW (`make_optimizer`), via `DiscreteDPOptimizer` (Opacus' `DPOptimizer`).

The noised integer sum is the release: everything after it (the float gradient, AdamW, the
adapter update the aggregator sees) is post-processing, so floating-point rounding cannot
leak the input as it does for a float Gaussian sum (Mironov 2012).  ``mechanism = "float"``
keeps Opacus' own float Gaussian noise, for comparison only.

Objective.  The loss of one example is its mean next-token loss (labels -100 ignored; 0 for an
example without targets), the batch loss the mean over the examples.  Plain `ClientStep` instead
pools all target tokens of the batch (Hugging Face's token mean); the two agree when every
example has as many targets as the others.  The per-example mean is what DP-SGD needs: each
example's gradient is that of its own loss, independent of the other examples in the batch.

Scaling.  The server returns d(batch loss)/d(activation): already divided by the batch size B.
The part wrappers therefore use ``loss_reduction="mean"``: Opacus multiplies what flows back by
B, so each per-example gradient is that of the example's own loss; `DPOptimizer` ("mean")
divides the noised sum by q * n, not by the realised (secret) B.

Poisson batches may be empty.  Then no forward runs and the link is not called (the model
blocks fail on zero rows), but the noise is still added and the optimizer steps, as in Opacus:
every step the accountant counts is a step taken.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from crypto.dgauss import MAX_TV_PER_DRAW
from splitfed.checks import is_int, is_number
from splitfed.privacy.events import DiscreteGaussianEvent, NonPrivateEvent, PrivacyEvent, SampledGaussianEvent
from splitfed.privacy.grid import default_step, noise_tv, row_bound, valid_step

IGNORE_INDEX = -100
MAX_COORDS = 2**28  # trainable client parameters at most: the events' TV slack is charged for this many
STEP_TV = MAX_COORDS * MAX_TV_PER_DRAW  # sampler TV slack of one discrete DP-SGD step, all coordinates


def _number(x: object) -> bool:
    return is_number(x) and math.isfinite(x)


@dataclass(frozen=True)
class DPSGDConfig:
    """DP-SGD knobs; `noise_multiplier` 0 is allowed and gives no privacy (a `NonPrivateEvent`).

    ``mechanism``: "discrete" (integer release, the default) or "float" (Opacus' float noise, for
    comparison only: no epsilon holds for its bytes).  ``grid_step``: the discrete grid, a power
    of two; 0 = the largest at which rounding adds at most 1% to the sensitivity.
    """

    noise_multiplier: float  # noise std / sensitivity (max_grad_norm, or Delta grid units)
    max_grad_norm: float  # C: L2 bound of one example's gradient over all client adapters
    sample_rate: float  # q: probability that an example joins a (Poisson) batch
    mechanism: str = "discrete"
    grid_step: float = 0.0

    def __post_init__(self) -> None:
        if not _number(self.noise_multiplier) or self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if not _number(self.max_grad_norm) or self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be a finite number > 0, got {self.max_grad_norm!r}")
        if not _number(self.sample_rate) or not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if self.mechanism not in ("discrete", "float"):
            raise ValueError(f"mechanism must be 'discrete' or 'float', got {self.mechanism!r}")
        g = self.grid_step
        if not valid_step(g):
            raise ValueError(f"grid_step must be 0 (automatic) or a power of two, got {g!r}")

    def grid(self, coords: int) -> tuple[float, Fraction, Fraction]:
        """(gamma, Delta, sigma^2 in grid units) of the discrete mechanism over `coords` parameters."""
        if not is_int(coords) or not 1 <= coords <= MAX_COORDS:
            raise ValueError(f"DP-SGD over {coords!r} parameters: expected 1 to {MAX_COORDS}")
        gamma = self.grid_step or default_step(self.max_grad_norm, coords)
        delta = row_bound(self.max_grad_norm, gamma, coords)
        return gamma, delta, (Fraction(self.noise_multiplier) * delta) ** 2

    def events(self, steps: int, *, coords: int | None = None) -> tuple[PrivacyEvent, ...]:
        """What `steps` DP-SGD steps release: () for none.  `coords` (the trainable parameters,
        when known) charges the sampler's own slack for that many draws, else `STEP_TV`."""
        if not is_int(steps) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        if steps == 0:
            return ()
        if self.noise_multiplier == 0:
            return (NonPrivateEvent(count=steps),)
        if self.mechanism == "float":
            return (SampledGaussianEvent(self.noise_multiplier, self.sample_rate, count=steps),)
        # no sample rate: no amplification is claimed (the server, as aggregator, sees the sampling)
        tv = STEP_TV if coords is None else noise_tv(self.grid(coords)[2], coords)
        return (DiscreteGaussianEvent(self.noise_multiplier, count=steps, tv=tv),)


def secure_generator() -> torch.Generator:
    """A `torch.Generator` seeded from `os.urandom`: nobody can predict or replay its noise.

    The stream itself is Mersenne Twister, not a cryptographic generator; the seed is.
    """
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))


def poisson_batches(
    examples: Sequence[object], *, sample_rate: float, steps: int, generator: torch.Generator | np.random.Generator
) -> list[list[int]]:
    """Indices of each step's Poisson batch: every example joins independently with probability q.

    Batches vary in size and may be empty (returned as ``[]``); indices are sorted.
    """
    if not _number(sample_rate) or not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if not is_int(steps) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    n = len(examples)
    if isinstance(generator, np.random.Generator):
        joins = generator.random((steps, n)) < sample_rate  # (steps, n) bool
    elif isinstance(generator, torch.Generator):
        joins = (torch.rand((steps, n), generator=generator, dtype=torch.float64) < sample_rate).numpy()
    else:
        raise TypeError(f"generator must be a torch.Generator or numpy Generator, got {type(generator).__name__}")
    return [np.flatnonzero(row).tolist() for row in joins]


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits, (B, T) labels -> (B,) mean next-token loss of each example."""
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # (B, T): token t predicts t + 1
    # (B*T, V) rows: cross_entropy on a (B, V, T) transpose is ~2x slower for a large V
    flat = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return flat.view_as(targets).sum(1) / (targets != IGNORE_INDEX).sum(1).clamp(min=1)  # (B,)
