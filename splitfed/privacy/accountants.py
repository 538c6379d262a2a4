"""Accountants: compose privacy events and turn the composition into (epsilon, delta).

One small interface (`Accountant`) and a registry (`make_accountant`), in the style of
Opacus and Google's dp_accounting, over Opacus 1.6's maths:

- "rdp": Renyi DP of the Poisson-subsampled Gaussian (Mironov et al. 2019), converted to
  (epsilon, delta) with Balle et al. 2020 (Theorem 21).  Equals Opacus' `RDPAccountant` and
  dp_accounting's `RdpAccountant` at the same orders.
- "prv": numerical composition of privacy random variables (Gopi et al. 2021), tighter
  than RDP.  Opacus' PRV is known to misbehave for epsilon > 10 and very small delta
  (opacus#604); there this accountant reports the RDP bound instead, sets
  `fallback_reason` and warns with `AccountingFallbackWarning`.

A `GaussianEvent` is the sampled Gaussian at sample rate 1; after a `NonPrivateEvent`
epsilon is infinite.  A `DiscreteGaussianEvent` has the Renyi curve of the Gaussian at its
noise multiplier and is always composed with RDP (its privacy-loss distribution is not the
continuous one PRV would assume); its sampler's total-variation slack T is added to delta:
the stated epsilon solves epsilon = eps_RDP(delta - (1 + e^epsilon) T).

Importing this module imports neither torch nor opacus: the RDP maths
(numpy and scipy only) is loaded from Opacus' file on first use, and the PRV accountant
imports opacus (and with it torch, ~3 s) only when it computes.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Protocol

from splitfed.checks import is_int
from splitfed.errors import MissingPackageError
from splitfed.privacy.events import (
    DiscreteGaussianEvent,
    GaussianEvent,
    NonPrivateEvent,
    PrivacyEvent,
    SampledGaussianEvent,
)

# Opacus' RDPAccountant.DEFAULT_ALPHAS, so that our RDP epsilon is the one Opacus reports.
OPACUS_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


class AccountingFallbackWarning(UserWarning):
    """An accountant could not use its own method here and reported a looser valid bound."""


class Accountant(Protocol):
    """Composes privacy events; answers epsilon for a delta.  `compose` refuses before changing state."""

    name: str
    fallback_reason: str | None  # why the last `epsilon` used another method; None if it did not

    def compose(self, event: PrivacyEvent, count: int = 1) -> None: ...

    def epsilon(self, delta: float) -> float: ...

    def __len__(self) -> int: ...


def check_delta(delta: float) -> None:
    """Raise ValueError unless 0 < delta < 1."""
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


class RDPAccountant:
    """Renyi DP accountant over Opacus' `compute_rdp` / `get_privacy_spent`."""

    name = "rdp"

    def __init__(self, *, orders: Sequence[float] = OPACUS_ORDERS) -> None:
        if not orders or any(not isinstance(a, numbers.Real) or not a > 1.0 for a in orders):
            raise ValueError(f"orders must be a non-empty sequence of numbers > 1, got {orders!r}")
        self.orders = tuple(float(a) for a in orders)
        self.fallback_reason: str | None = None
        # Composition is commutative: steps summed per (noise multiplier, sample rate).
        self.steps: dict[tuple[float, float], int] = {}
        self.discrete: dict[float, int] = {}  # discrete Gaussian releases per noise multiplier
        self.tv = 0.0  # total-variation slack of the discrete samplers, summed over releases
        self.non_private = False
        self._events = 0

    def compose(self, event: PrivacyEvent, count: int = 1) -> None:
        """Compose `event` `count` times.  ValueError for an unsupported event or a bad count, before any change."""
        key, steps = _gaussian_steps(self.name, event, count)
        if key is None:
            self.non_private = True
        elif isinstance(event, DiscreteGaussianEvent):
            self.discrete[key[0]] = self.discrete.get(key[0], 0) + steps
            self.tv += event.tv * steps
        else:
            self.steps[key] = self.steps.get(key, 0) + steps
        self._events += count

    def epsilon(self, delta: float) -> float:
        """Epsilon at `delta`, the discrete samplers' slack ``(1 + e^epsilon) * tv`` taken out of delta."""
        check_delta(delta)
        if self.non_private:
            return math.inf
        if not self.steps and not self.discrete:
            return 0.0
        if self.tv == 0.0:
            return self._rdp_epsilon(delta)
        eps = self._rdp_epsilon_within(delta - 2.0 * self.tv)  # a lower bound: e^eps >= 1
        for _ in range(8):  # the fixed point, verified: eps' = eps_RDP(delta - (1 + e^eps') tv) <= eps'
            eps = eps * (1 + 1e-12) + 1e-12
            if self._rdp_epsilon_within(delta - (1.0 + _exp(eps)) * self.tv) <= eps:
                return eps
            eps = self._rdp_epsilon_within(delta - (1.0 + _exp(eps)) * self.tv)
        return math.inf

    def _rdp_epsilon_within(self, delta: float) -> float:
        return self._rdp_epsilon(delta) if 0.0 < delta < 1.0 and math.isfinite(delta) else math.inf

    def _rdp_epsilon(self, delta: float) -> float:
        analysis = _opacus_rdp()
        orders = list(self.orders)
        steps = dict(self.steps)
        for nm, n in self.discrete.items():  # rho-zCDP: the Gaussian's Renyi curve at sample rate 1
            steps[(nm, 1.0)] = steps.get((nm, 1.0), 0) + n
        rdp = sum(
            analysis.compute_rdp(q=q, noise_multiplier=nm, steps=n, orders=orders) for (nm, q), n in steps.items()
        )
        with warnings.catch_warnings():
            # "Optimal order is the smallest/largest alpha": the bound holds, it is only looser.
            warnings.filterwarnings("ignore", message="Optimal order is the")
            eps, _ = analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
        return max(0.0, float(eps))

    def __len__(self) -> int:
        """Events composed (an event composed with count=k counts k times)."""
        return self._events


class PRVAccountant:
    """PRV accountant (Opacus' `PRVAccountant`) that falls back to RDP where PRV is unreliable."""

    name = "prv"
    MAX_RELIABLE_EPSILON = 10.0  # opacus#604: PRV answers above this are not trusted
    MIN_RELIABLE_DELTA = 1e-10  # nor below this delta

    def __init__(self, *, eps_error: float = 0.01) -> None:
        if not (isinstance(eps_error, numbers.Real) and 0.0 < eps_error < 1.0):
            raise ValueError(f"eps_error must be in (0, 1), got {eps_error!r}")
        self.eps_error = float(eps_error)
        self.fallback_reason: str | None = None
        self._rdp = RDPAccountant()  # holds the composition, and is the fallback

    def compose(self, event: PrivacyEvent, count: int = 1) -> None:
        """Compose `event` `count` times.  ValueError for an unsupported event or a bad count, before any change."""
        _gaussian_steps(self.name, event, count)  # name this accountant in the refusal
        self._rdp.compose(event, count)

    def epsilon(self, delta: float) -> float:
        """PRV's upper bound on epsilon, or the RDP bound (with `fallback_reason` set) where PRV is unreliable."""
        check_delta(delta)
        self.fallback_reason = None
        bound = self._rdp.epsilon(delta)
        if self._rdp.discrete and not self._rdp.non_private:  # no PRV for the discrete Gaussian, by design
            self.fallback_reason = "discrete Gaussian releases are composed with RDP"
            return bound
        if self._rdp.non_private or not self._rdp.steps:
            return bound
        reason = self._unreliable(delta, bound)
        if reason is None:
            try:
                eps = _opacus_prv_epsilon(self._rdp.steps, delta, self.eps_error)
            except (ArithmeticError, ValueError, RuntimeError) as exc:
                reason = f"PRV failed ({type(exc).__name__}: {exc})"
            else:
                if math.isfinite(eps) and eps <= self.MAX_RELIABLE_EPSILON:
                    return eps
                reason = f"PRV gave epsilon {eps:.4g}, above {self.MAX_RELIABLE_EPSILON:g}, where it is unreliable"
        self.fallback_reason = f"{reason} (opacus#604)"
        warnings.warn(
            f"prv accountant: {self.fallback_reason}; reporting the RDP bound instead",
            AccountingFallbackWarning,
            stacklevel=2,
        )
        return bound

    def _unreliable(self, delta: float, rdp_bound: float) -> str | None:
        """Why PRV should not even be tried here, or None."""
        if delta < self.MIN_RELIABLE_DELTA:
            return f"delta {delta:g} is below {self.MIN_RELIABLE_DELTA:g}"
        # PRV never exceeds RDP by much and is close to it at large epsilon: an RDP bound of
        # twice the reliable range means PRV lands outside it too (and takes seconds to say so).
        if rdp_bound > 2 * self.MAX_RELIABLE_EPSILON:
            return f"the RDP bound {rdp_bound:.4g} is far above {self.MAX_RELIABLE_EPSILON:g}, where PRV is unreliable"
        return None

    def __len__(self) -> int:
        """Events composed (an event composed with count=k counts k times)."""
        return len(self._rdp)


_REGISTRY: dict[str, Callable[[], Accountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}
ACCOUNTANTS: tuple[str, ...] = tuple(_REGISTRY)


def make_accountant(name: str) -> Accountant:
    """A fresh accountant by name: "rdp" or "prv"."""
    factory = _REGISTRY.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ValueError(f"unknown accountant {name!r}; known: {', '.join(ACCOUNTANTS)}")
    return factory()


def epsilon_of(events: Iterable[PrivacyEvent], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of all `events` composed by a fresh accountant named `accountant`."""
    acc = make_accountant(accountant)
    for event in events:
        acc.compose(event)
    return acc.epsilon(delta)


def _gaussian_steps(name: str, event: object, count: int) -> tuple[tuple[float, float] | None, int]:
    """((noise multiplier, sample rate), steps) of `count` x `event`; key None for a non-private event."""
    if not is_int(count) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    if isinstance(event, SampledGaussianEvent):
        return (float(event.noise_multiplier), float(event.sample_rate)), event.count * count
    if isinstance(event, GaussianEvent | DiscreteGaussianEvent):
        return (float(event.noise_multiplier), 1.0), event.count * count
    if isinstance(event, NonPrivateEvent):
        return None, event.count * count
    raise ValueError(
        f"{name} accountant: unsupported event {type(event).__name__}; "
        "supported: GaussianEvent, DiscreteGaussianEvent, SampledGaussianEvent, NonPrivateEvent"
    )


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


@functools.cache
def _opacus_rdp() -> ModuleType:
    """Opacus' `accountants/analysis/rdp.py`, loaded from its file.

    That module needs only numpy and scipy, but importing it by its package name first runs
    `opacus/__init__.py`, which imports torch (~3 s instead of ~0.2 s).
    """
    spec = importlib.util.find_spec("opacus")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError("privacy accounting needs opacus: pip install opacus==1.6.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "accountants" / "analysis" / "rdp.py"
    file_spec = importlib.util.spec_from_file_location("splitfed.privacy._opacus_rdp_analysis", path)
    if file_spec is None or file_spec.loader is None or not path.is_file():
        raise MissingPackageError(f"opacus' RDP analysis not found at {path}: pip install opacus==1.6.0")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def _opacus_prv_epsilon(steps: dict[tuple[float, float], int], delta: float, eps_error: float) -> float:
    """Opacus' PRV upper bound on epsilon for the composition `steps` (imports opacus, hence torch)."""
    import numpy as np
    from opacus.accountants import PRVAccountant as OpacusPRV

    prv = OpacusPRV()
    prv.history = [(nm, q, n) for (nm, q), n in steps.items()]  # as opacus' get_noise_multiplier does
    # q = 1 takes log(0) inside Opacus (harmless); diverging cases end in inf/nan, handled by the caller.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(prv.get_epsilon(delta, eps_error=eps_error))
