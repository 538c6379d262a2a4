"""Local DP on what crosses a cut: clip each unit, then add Gaussian noise.

The client applies `GaussianLDP` to the activations its Bottom sends (and, as a second
mechanism, to the gradient its Top returns) *before* they leave the process; compression,
if any, comes after the noise (none for the discrete release, which goes as its integers).
Padding positions are zeroed first: the server rebuilds the mask and no real token attends
to them, so they carry nothing the model needs, while their values could depend on real
tokens.

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

`DiscreteGaussianLDP` (the default) releases integers: the clipped unit divided by a grid
step gamma (a power of two), rounded, plus discrete Gaussian noise sampled without floating
point (`crypto.dgauss`); the value returned is k * gamma, exact in float32, and the link
sends k itself with gamma (``grid(hidden)[0]``; `splitfed.wire.grid`).  `GaussianLDP` (float
noise, ``fl32(x + fl32(z sigma))``) is kept for comparison only: its low-order bits reveal
the input (Mironov 2012), so no epsilon it states covers the bytes it sends.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Protocol

import numpy as np
import torch

from crypto.dgauss import MAX_TV_PER_DRAW, cdt_sampler
from splitfed.checks import is_int
from splitfed.privacy.events import DiscreteGaussianEvent, GaussianEvent
from splitfed.privacy.grid import default_step, noise_tv, snap_rows, sqrt_upper, valid_step

Unit = Literal["sequence", "token"]
UNITS: tuple[str, ...] = ("sequence", "token")


class NoiseSource(Protocol):
    def gaussian(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal float32 samples."""
        ...

    def randbytes(self, n: int) -> bytes:
        """Uniform random bytes (the discrete sampler's seed)."""
        ...


class TorchNoise:
    """Noise from an injected `torch.Generator` (reproducible; for tests and experiments)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def gaussian(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)

    def randbytes(self, n: int) -> bytes:
        return bytes(torch.randint(0, 256, (n,), generator=self.generator, dtype=torch.uint8).tolist())


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


MAX_UNIT_COORDS = 2**28  # coordinates of one example's release (positions x hidden) at most
MAX_RELEASE_TV = MAX_UNIT_COORDS * MAX_TV_PER_DRAW  # sampler TV slack of one release, all coordinates
_EXACT_F32 = 2**24  # integers below this times a power of two are exact in float32


class _SendInsteadOf(torch.autograd.Function):
    """Forward: the released tensor, bit for bit; backward: the gradient goes to the clipped input as is."""

    @staticmethod
    def forward(ctx, clipped: torch.Tensor, released: torch.Tensor) -> torch.Tensor:
        return released.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


@dataclass(frozen=True)
class DiscreteGaussianLDP:
    """Clip each unit, snap it to the grid gamma Z, add discrete Gaussian noise in grid units.

    One unit of ``d`` coordinates (``hidden`` for a token, ``max_positions * hidden`` for a
    sequence) is rounded to k = round(x / gamma) with ||k|| <= clip / gamma + sqrt(d) / 2, so
    the integer sensitivity (replace-one) is Delta = 2 (clip / gamma + sqrt(d) / 2) and sigma
    = noise_multiplier * Delta grid units.  The default gamma is the largest power of two with
    sqrt(d) / 2 <= GRID_ROUNDING_SHARE * clip / gamma (rounding costs at most 1% of Delta),
    made coarser only if the released integers could reach 2^24 (not exact in float32).
    """

    clip: float
    noise_multiplier: float
    unit: Unit = "sequence"
    max_positions: int = 1
    grid_step: float = 0.0  # gamma, a power of two; 0 = the default above

    def __post_init__(self) -> None:
        GaussianLDP(self.clip, self.noise_multiplier, self.unit)  # the same checks
        if not is_int(self.max_positions) or self.max_positions < 1:
            raise ValueError(f"max_positions must be an integer >= 1, got {self.max_positions!r}")
        g = self.grid_step
        if not valid_step(g):
            raise ValueError(f"grid_step must be 0 (automatic) or a power of two, got {g!r}")

    def clip_only(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return GaussianLDP.clip_only(self, x, mask)  # type: ignore[arg-type]

    def grid(self, hidden: int) -> tuple[float, Fraction, Fraction]:
        """(gamma, Delta, sigma^2 in grid units) for a model of width `hidden`; all exact."""
        d = hidden if self.unit == "token" else self.max_positions * hidden
        if d > MAX_UNIT_COORDS:
            raise ValueError(f"a unit of {d} coordinates is above the supported {MAX_UNIT_COORDS}")
        sqrt_d = sqrt_upper(d)
        gamma = self.grid_step or default_step(self.clip, d)
        while True:
            delta = 2 * Fraction(self.clip) / Fraction(gamma) + sqrt_d
            sigma2 = (Fraction(self.noise_multiplier) * delta) ** 2
            reach = delta / 2 + 14 * math.sqrt(sigma2) + 2  # the CDT table stops near 13.3 sigma
            if reach < _EXACT_F32:
                return gamma, delta, sigma2
            if self.grid_step:
                raise ValueError(f"grid_step {gamma:g}: releases could reach 2^24 grid steps, not exact in float32")
            gamma *= 2.0

    def prepare(self, hidden: int) -> None:
        """Build the noise table for width `hidden` now (seconds for a large sigma), not at the first release."""
        cdt_sampler(self.grid(hidden)[2])

    def quantize(self, clipped: torch.Tensor, gamma: float, delta: Fraction) -> torch.Tensor:
        """int64 k = round(clipped / gamma), every unit checked in integers to ||k|| <= Delta / 2."""
        rows = (
            clipped.reshape(clipped.shape[0], -1) if self.unit == "sequence" else clipped.reshape(-1, clipped.shape[-1])
        )
        return snap_rows(rows, gamma, delta / 2).reshape(clipped.shape)

    def apply(self, x: torch.Tensor, mask: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
        """The released tensor k * gamma (float32, exact); gradients flow as through the clipping."""
        clipped = self.clip_only(x.float(), mask)
        if self.unit == "sequence" and clipped.shape[1] > self.max_positions:
            raise ValueError(f"{clipped.shape[1]} positions, above max_positions = {self.max_positions}")
        gamma, delta, sigma2 = self.grid(clipped.shape[-1])
        k = self.quantize(clipped, gamma, delta)
        z = cdt_sampler(sigma2).sample(k.numel(), noise.randbytes)
        valid = mask.to(torch.int64).unsqueeze(-1).to(k.device)
        out = k + torch.from_numpy(z).reshape(k.shape).to(k.device) * valid
        if out.numel() and int(out.abs().max()) >= _EXACT_F32:
            raise RuntimeError("released integer reached 2^24")  # excluded by `grid`; never silently inexact
        released = out.to(torch.float32) * gamma
        return _SendInsteadOf.apply(clipped, released)

    def event(self, releases: int, *, max_positions: int, hidden: int | None = None) -> DiscreteGaussianEvent:
        """`releases` releases of one example (token units: all its positions together, nm / sqrt(T)).

        The sampler's slack is the table's own bound for the example's `max_positions * hidden`
        coordinates when the width is known, else the bound for any release (`MAX_RELEASE_TV`).
        """
        nm = self.noise_multiplier if self.unit == "sequence" else self.noise_multiplier / math.sqrt(max_positions)
        tv = MAX_RELEASE_TV if hidden is None else noise_tv(self.grid(hidden)[2], max_positions * hidden)
        return DiscreteGaussianEvent(nm, count=releases, tv=tv)
