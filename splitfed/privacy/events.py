"""Privacy events: what one mechanism released, as frozen values an accountant composes.

In the style of Google's dp_accounting: a mechanism emits events, an accountant composes
them and turns the composition into (epsilon, delta).  Noise is always stated as a noise
multiplier: the Gaussian standard deviation divided by the L2 sensitivity of the release.
Only the standard library is imported here.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from splitfed.checks import is_int, is_number


class Party(enum.Enum):
    """Against whom a release is made (who sees it)."""

    SERVER = "server"  # cut-layer activations and the gradients the Top returns
    AGGREGATOR = "aggregator"  # the client's adapter update each round
    QUERIER = "querier"  # a RAG party's (noised) scores


@dataclass(frozen=True)
class GaussianEvent:
    """The Gaussian mechanism applied `count` times to the same unit, without subsampling."""

    noise_multiplier: float
    count: int = 1

    def __post_init__(self) -> None:
        _check_nm(self.noise_multiplier)
        _check_count(self.count)


@dataclass(frozen=True)
class DiscreteGaussianEvent:
    """The discrete Gaussian mechanism on an integer release, applied `count` times to the same unit.

    ``noise_multiplier`` is sigma over the integer L2 sensitivity: rho-zCDP with
    rho = 1 / (2 nm^2) per release (Canonne, Kamath & Steinke 2020, Theorem 14), the Renyi
    curve of the continuous Gaussian, so it composes with RDP.  ``tv`` bounds the total
    variation distance between one sampled release (all its coordinates) and the ideal one;
    the accountant adds ``(1 + e^epsilon) * count * tv`` to delta.
    """

    noise_multiplier: float
    count: int = 1
    tv: float = 0.0

    def __post_init__(self) -> None:
        _check_nm(self.noise_multiplier)
        _check_count(self.count)
        if not is_number(self.tv) or not 0.0 <= self.tv < 1.0:
            raise ValueError(f"tv must be a number in [0, 1), got {self.tv!r}")


@dataclass(frozen=True)
class SampledGaussianEvent:
    """`count` steps of the Poisson-subsampled Gaussian mechanism (DP-SGD) at `sample_rate`."""

    noise_multiplier: float
    sample_rate: float
    count: int = 1

    def __post_init__(self) -> None:
        _check_nm(self.noise_multiplier)
        if not (isinstance(self.sample_rate, int | float) and 0.0 < self.sample_rate <= 1.0):
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        _check_count(self.count)


@dataclass(frozen=True)
class NonPrivateEvent:
    """A release without noise: epsilon is infinite from here on."""

    count: int = 1

    def __post_init__(self) -> None:
        _check_count(self.count)


PrivacyEvent = GaussianEvent | DiscreteGaussianEvent | SampledGaussianEvent | NonPrivateEvent


def _check_nm(nm: float) -> None:
    if not is_number(nm) or not math.isfinite(nm) or nm <= 0:
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {nm!r}")


def _check_count(count: int) -> None:
    if not is_int(count) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
