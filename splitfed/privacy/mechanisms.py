"""Local DP on what crosses a cut: clip each unit, then add Gaussian noise.

The client applies `GaussianLDP` to the activations its Bottom sends (and, as a second
mechanism, to the gradient its Top returns) *before* they leave the process; compression,
if any, comes after the noise.  Padding positions are zeroed first: the server rebuilds the
mask and no real token attends to them, so they carry nothing the model needs, while their
values could depend on real tokens.

Units (the thing one release protects):

- ``sequence``: all valid positions of one example, flattened, clipped to L2 norm ``clip``.
- ``token``: each position's vector clipped to ``clip`` on its own.  The guarantee is per
  released vector; at a cut ``a >= 1`` one input token influences every later position, so
  for a whole example of ``T`` positions the vectors together have sensitivity
  ``2 * clip * sqrt(T)`` and the example-level noise multiplier is ``nm / sqrt(T)``.

Sensitivity is ``2 * clip`` (local DP, replace-one: any two clipped inputs are at most that
far apart); ``noise_multiplier`` is sigma over that sensitivity.  Noise comes from a
`NoiseSource`: `SecureNoise` (ChaCha20 keystream from `crypto.prg`, seeded from the OS) by
default, `TorchNoise` with an injected generator for reproducible tests.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from splitfed.privacy.events import GaussianEvent

Unit = Literal["sequence", "token"]
UNITS: tuple[str, ...] = ("sequence", "token")


class NoiseSource(Protocol):
    def gaussian(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal float32 samples."""
        ...


class TorchNoise:
    """Noise from an injected `torch.Generator` (reproducible; for tests and experiments)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def gaussian(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)


class SecureNoise:
    """Gaussian noise from a cryptographic keystream (ChaCha20, fresh 256-bit OS seed per draw).

    Box-Muller on 32-bit uniforms.  Floating-point sampling is not a perfect Gaussian
    (known attacks target the low-order bits of naive samplers); this removes the
    predictability of a seeded non-cryptographic generator, not that residual risk.
    """

    def __init__(self, randbytes=os.urandom):
        self.randbytes = randbytes

    def gaussian(self, shape: tuple[int, ...]) -> torch.Tensor:
        from crypto.prg import expand

        n = math.prod(shape)
        half = (n + 1) // 2
        words = expand(self.randbytes(32), 2 * half, bits=32, dtype=np.uint32).astype(np.float64)
        u1 = (words[:half] + 1.0) / 2.0**32  # (0, 1]: log is finite
        u2 = words[half:] / 2.0**32
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:n]
        return torch.from_numpy(z.astype(np.float32)).reshape(shape)


@dataclass(frozen=True)
class GaussianLDP:
    clip: float
    noise_multiplier: float
    unit: Unit = "sequence"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite number > 0, got {self.clip!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"noise_multiplier must be a finite number > 0, got {self.noise_multiplier!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")

    @property
    def sigma(self) -> float:
        """Standard deviation of the noise added to every coordinate."""
        return self.noise_multiplier * 2.0 * self.clip

    def clip_only(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) with padding zeroed and every unit scaled to L2 norm <= clip."""
        valid = mask.to(x.dtype).unsqueeze(-1)
        x = x * valid
        norms = x.flatten(1).norm(dim=1)[:, None, None] if self.unit == "sequence" else x.norm(dim=-1, keepdim=True)
        return x * (self.clip / norms.clamp(min=self.clip))

    def apply(self, x: torch.Tensor, mask: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
        """Clip, then add N(0, sigma^2) to every valid coordinate (padding stays zero)."""
        clipped = self.clip_only(x.float(), mask)  # on the graph: the Bottom learns through the clipping
        valid = mask.to(clipped.dtype).unsqueeze(-1)
        return clipped + noise.gaussian(tuple(clipped.shape)).to(clipped.device) * self.sigma * valid

    def event(self, releases: int, *, max_positions: int) -> GaussianEvent:
        """`releases` releases of one example, as an example-level event (see the module doc)."""
        nm = self.noise_multiplier if self.unit == "sequence" else self.noise_multiplier / math.sqrt(max_positions)
        return GaussianEvent(nm, count=releases)
