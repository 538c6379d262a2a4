"""Calibration: how much Gaussian noise a stated (epsilon, delta) needs.

- `analytic_gaussian_sigma` / `analytic_gaussian_epsilon`: one Gaussian release, exactly
  (the analytic Gaussian mechanism of Balle & Wang, ICML 2018).
- `noise_multiplier_for`: `steps` Poisson-subsampled Gaussian steps (DP-SGD) through an
  accountant, like Opacus' `get_noise_multiplier` but to a relative precision of 1e-4.
- `ldp_release_sigma`: local DP, `releases` Gaussian releases of the same unit composed.
- `discrete_gaussian_noise_multiplier`: `releases` discrete Gaussian releases composed with
  RDP (how they are accounted), the sampler's TV slack taken out of delta.

A noise multiplier is the Gaussian standard deviation divided by the L2 sensitivity.
Imports scipy.special; no torch.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable

from scipy.special import log_ndtr

from splitfed.errors import SplitfedError
from splitfed.privacy.accountants import AccountingFallbackWarning, check_delta, make_accountant
from splitfed.privacy.events import DiscreteGaussianEvent, GaussianEvent, SampledGaussianEvent

MAX_NOISE_MULTIPLIER = 1e6  # above this, a target is called unreachable
_SEARCH_RTOL = 1e-4  # relative precision of the accountant-based search
_EXACT_RTOL = 1e-14  # relative precision of the analytic Gaussian searches


class CalibrationError(SplitfedError, ValueError):
    """A stated (epsilon, delta) that no noise multiplier up to `MAX_NOISE_MULTIPLIER` reaches."""


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest sigma for which adding N(0, sigma^2 I) to one release of L2 sensitivity
    `sensitivity` is (epsilon, delta)-DP (Balle & Wang 2018, Theorem 8 condition, by bisection)."""
    _check_positive("epsilon", epsilon)
    check_delta(delta)
    _check_positive("sensitivity", sensitivity)
    log_delta = math.log(delta)
    hi = 1.0
    while _log_gaussian_delta(hi, epsilon) > log_delta:
        hi *= 2.0
    lo = 0.0 if hi == 1.0 else hi / 2.0
    nm = _bisect(lambda s: _log_gaussian_delta(s, epsilon) <= log_delta, lo, hi, _EXACT_RTOL)
    return nm * float(sensitivity)


def analytic_gaussian_epsilon(sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest epsilon for which one Gaussian release with standard deviation `sigma` and
    L2 sensitivity `sensitivity` is (epsilon, delta)-DP: the inverse of `analytic_gaussian_sigma`."""
    _check_positive("sigma", sigma)
    check_delta(delta)
    _check_positive("sensitivity", sensitivity)
    nm = sigma / sensitivity
    log_delta = math.log(delta)
    if _log_gaussian_delta(nm, 0.0) <= log_delta:
        return 0.0
    hi = 1.0
    while _log_gaussian_delta(nm, hi) > log_delta:
        hi *= 2.0
    lo = 0.0 if hi == 1.0 else hi / 2.0
    return _bisect(lambda e: _log_gaussian_delta(nm, e) <= log_delta, lo, hi, _EXACT_RTOL)


def gaussian_delta(noise_multiplier: float, epsilon: float) -> float:
    """The exact delta(epsilon) of one Gaussian release at `noise_multiplier` (Balle & Wang 2018, Theorem 8):
    Phi(1/(2s) - epsilon s) - e^epsilon Phi(-1/(2s) - epsilon s) with s the noise multiplier."""
    _check_positive("noise_multiplier", noise_multiplier)
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not 0.0 <= epsilon < math.inf:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    return math.exp(_log_gaussian_delta(float(noise_multiplier), float(epsilon)))


def noise_multiplier_for(
    epsilon: float, delta: float, *, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier (to 1e-4 relative) whose `steps` sampled Gaussian steps at
    `sample_rate` reach at most `epsilon` at `delta` under `accountant` ("rdp" or "prv").

    With "prv", compositions where PRV is unreliable (epsilon > 10) are judged by the RDP bound.
    """
    _check_positive("epsilon", epsilon)
    check_delta(delta)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real) or not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    _check_count("steps", steps)
    make_accountant(accountant)  # an unknown name fails here, before any search

    def within_budget(nm: float) -> bool:
        acc = make_accountant(accountant)
        acc.compose(SampledGaussianEvent(nm, float(sample_rate), int(steps)))
        return acc.epsilon(delta) <= epsilon  # nan/inf: not within

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AccountingFallbackWarning)
        hi = 1.0
        while not within_budget(hi):
            hi *= 2.0
            if hi > MAX_NOISE_MULTIPLIER:
                raise CalibrationError(
                    f"epsilon {epsilon} at delta {delta} is out of reach: even noise multiplier "
                    f"{MAX_NOISE_MULTIPLIER:g} spends more over {steps} steps at sample rate {sample_rate}"
                )
        lo = 0.0 if hi == 1.0 else hi / 2.0
        return _bisect(within_budget, lo, hi, _SEARCH_RTOL)


def ldp_release_sigma(epsilon: float, delta: float, *, releases: int = 1) -> float:
    """Noise multiplier per release so that `releases` Gaussian releases of the same unit,
    composed, are (epsilon, delta)-DP.  Exact: k Gaussian releases at multiplier s compose into
    one at s / sqrt(k), whose epsilon the analytic Gaussian mechanism gives without slack."""
    _check_positive("epsilon", epsilon)
    check_delta(delta)
    _check_count("releases", releases)
    return analytic_gaussian_sigma(epsilon, delta) * math.sqrt(releases)


def discrete_gaussian_noise_multiplier(epsilon: float, delta: float, *, releases: int = 1, tv: float = 0.0) -> float:
    """The smallest noise multiplier (to 1e-4 relative, rounded up) at which `releases` discrete
    Gaussian releases, each with sampler slack `tv`, are (epsilon, delta)-DP as the RDP accountant
    states them (the accountant every `DiscreteGaussianEvent` is composed with)."""
    from splitfed.privacy.accountants import RDPAccountant

    _check_positive("epsilon", epsilon)
    check_delta(delta)
    _check_count("releases", releases)

    def within_budget(nm: float) -> bool:
        acc = RDPAccountant()
        acc.compose(DiscreteGaussianEvent(nm, int(releases), float(tv)))
        return acc.epsilon(delta) <= epsilon

    hi = 1.0
    while not within_budget(hi):
        hi *= 2.0
        if hi > MAX_NOISE_MULTIPLIER:
            raise CalibrationError(
                f"epsilon {epsilon} at delta {delta} is out of reach for {releases} discrete releases"
            )
    lo = 0.0 if hi == 1.0 else hi / 2.0
    return _bisect(within_budget, lo, hi, _SEARCH_RTOL)


def gaussian_composition_epsilon(events: Iterable[GaussianEvent], delta: float) -> float:
    """Exact epsilon of Gaussian releases (no subsampling) composed: a Gaussian mechanism whose
    multiplier is ``(sum count / s^2) ** -1/2`` (Dong, Roth & Su 2019), tight via Balle & Wang."""
    precision = 0.0
    for e in events:
        if not isinstance(e, GaussianEvent):
            raise ValueError(f"only GaussianEvent composes exactly, got {type(e).__name__}")
        precision += e.count / e.noise_multiplier**2
    if precision == 0.0:
        return 0.0
    return analytic_gaussian_epsilon(precision**-0.5, delta)


def _log_gaussian_delta(nm: float, epsilon: float) -> float:
    """log delta(epsilon) of one Gaussian release at noise multiplier `nm`, without cancellation."""
    log_p = float(log_ndtr(0.5 / nm - epsilon * nm))
    log_q = epsilon + float(log_ndtr(-0.5 / nm - epsilon * nm))
    if log_q >= log_p:
        return -math.inf
    return log_p + math.log(-math.expm1(log_q - log_p))


def _bisect(ok: Callable[[float], bool], lo: float, hi: float, rtol: float) -> float:
    """The smallest x in (lo, hi] with ok(x), to relative precision `rtol`; ok is monotone, ok(hi) holds."""
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
