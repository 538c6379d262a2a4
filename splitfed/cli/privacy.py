"""`splitfed privacy`: accounting and noise calibration from the command line.

epsilon: what a DP-SGD schedule spends; noise: the noise multiplier a target needs;
ldp: the noise for local DP on what a client sends.  The maths (numpy, scipy, opacus) is
imported inside the commands so `--help` stays fast.  Bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable
from typing import NoReturn

from splitfed.cli.privacy_report import add_report
from splitfed.errors import SplitfedError, UsageError
from splitfed.privacy.accountants import ACCOUNTANTS

PROG = "splitfed privacy"


class _OneLineErrorParser(argparse.ArgumentParser):
    """Refuses bad input with one line on stderr and exit status 2: no usage block, no traceback."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


def register(subparsers) -> None:
    """Add the `privacy` command group to the `splitfed` subparsers."""
    group = subparsers.add_parser(
        "privacy",
        help="privacy accounting and noise calibration: epsilon, noise, ldp, report",
        description="Differential privacy accounting (RDP, PRV) and Gaussian noise calibration.",
        epilog="Examples:\n"
        "  splitfed privacy epsilon --noise-multiplier 1.1 --sample-rate 0.004267 --steps 2000 --delta 1e-5\n"
        "  splitfed privacy noise --epsilon 1 --delta 1e-5 --sample-rate 0.004267 --steps 2000\n"
        "  splitfed privacy ldp --epsilon 8 --delta 1e-5 --releases 3 --unit sequence --clip 1\n"
        "  splitfed privacy report runs/private",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    psub = group.add_subparsers(
        dest="privacy_command", metavar="ACTION", required=True, parser_class=_OneLineErrorParser
    )
    _add_epsilon(psub)
    _add_noise(psub)
    _add_ldp(psub)
    add_report(psub, delta_type=_delta, run=_run)


def _add_epsilon(psub) -> None:
    p = psub.add_parser("epsilon", help="epsilon spent by N steps of the sampled Gaussian (DP-SGD)")
    p.add_argument(
        "--noise-multiplier",
        type=_noise_multiplier,
        required=True,
        help=f"noise std / L2 sensitivity, in [{MIN_NOISE_MULTIPLIER:g}, {MAX_NOISE_MULTIPLIER:g}]",
    )
    p.add_argument("--sample-rate", type=_rate, required=True, help=_RATE_HELP)
    p.add_argument("--steps", type=_count, required=True, help=f"steps, an integer in [1, {MAX_COUNT:g}]")
    p.add_argument("--delta", type=_delta, required=True, help=f"delta in [{MIN_DELTA:g}, 1)")
    _add_accountant(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=lambda args: _run(args, _epsilon, _epsilon_text))


def _add_noise(psub) -> None:
    p = psub.add_parser("noise", help="smallest noise multiplier for a target (epsilon, delta) over N steps")
    p.add_argument(
        "--epsilon", type=_epsilon_target, required=True, help=f"target epsilon in [{MIN_EPSILON:g}, {MAX_EPSILON:g}]"
    )
    p.add_argument("--delta", type=_delta, required=True, help=f"delta in [{MIN_DELTA:g}, 1)")
    p.add_argument("--sample-rate", type=_rate, required=True, help=_RATE_HELP)
    p.add_argument("--steps", type=_count, required=True, help=f"steps, an integer in [1, {MAX_COUNT:g}]")
    _add_accountant(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=lambda args: _run(args, _noise, _noise_text))


def _add_ldp(psub) -> None:
    p = psub.add_parser("ldp", help="local DP: Gaussian noise per release of clipped activations")
    p.add_argument(
        "--epsilon",
        type=_epsilon_target,
        required=True,
        help=f"target epsilon per unit, in [{MIN_EPSILON:g}, {MAX_EPSILON:g}]",
    )
    p.add_argument("--delta", type=_delta, required=True, help=f"delta in [{MIN_DELTA:g}, 1)")
    p.add_argument("--releases", type=_count, default=1, help="releases of the same unit, composed (default 1)")
    p.add_argument(
        "--unit",
        choices=("sequence", "token"),
        default="sequence",
        help="what is clipped to C: a whole example's activations, or each position's vector (default sequence)",
    )
    p.add_argument(
        "--clip", type=_clip, default=1.0, help=f"L2 clipping norm C in [{MIN_CLIP:g}, {MAX_CLIP:g}] (default 1)"
    )
    p.add_argument("--max-length", type=_count, default=None, help="T, the most positions per example (--unit token)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=lambda args: _run(args, _ldp, _ldp_text))


def _add_accountant(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp", help="default rdp; prv is tighter")


def _run(args, compute: Callable[[argparse.Namespace], dict], render: Callable[[dict], list[str]]) -> int:
    """Compute, then print text or one JSON object (finite numbers only); a `SplitfedError` is one
    line and exit 2 (anything else is a bug and keeps its traceback)."""
    try:
        result = compute(args)
        text = _finite_json(result) if args.json else "\n".join(render(result))
    except SplitfedError as exc:  # a LedgerError too: a damaged ledger is refused, never undercounted
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


def _spend(accountant: str, nm: float, sample_rate: float, steps: int, delta: float) -> tuple[float, str | None]:
    """Epsilon of `steps` sampled Gaussian steps, and why the accountant fell back (None if it did not)."""
    from splitfed.privacy.accountants import AccountingFallbackWarning, make_accountant
    from splitfed.privacy.events import SampledGaussianEvent

    acc = make_accountant(accountant)
    acc.compose(SampledGaussianEvent(nm, sample_rate, steps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AccountingFallbackWarning)  # stated in the output instead
        eps = acc.epsilon(delta)
    return eps, acc.fallback_reason


def _epsilon(args) -> dict:
    eps, fallback = _spend(args.accountant, args.noise_multiplier, args.sample_rate, args.steps, args.delta)
    return {
        "epsilon": eps,
        "delta": args.delta,
        "noise_multiplier": args.noise_multiplier,
        "sample_rate": args.sample_rate,
        "steps": args.steps,
        "accountant": args.accountant,
        "fallback_reason": fallback,
        "relation": "add/remove",  # Opacus' relation; amplification assumes the sample stays secret
    }


def _epsilon_text(r: dict) -> list[str]:
    return [
        f"epsilon {r['epsilon']:.4g} at delta {r['delta']:g} ({_method(r)})",
        f"  {r['steps']} steps of the sampled Gaussian: noise multiplier {r['noise_multiplier']:g}, "
        f"sample rate {r['sample_rate']:g}; add/remove neighbours, amplified by secret Poisson sampling "
        "(a run's ledger claims no amplification: its aggregator sees the sampling)",
    ]


def _noise(args) -> dict:
    from splitfed.privacy.calibrate import noise_multiplier_for

    nm = noise_multiplier_for(
        args.epsilon, args.delta, sample_rate=args.sample_rate, steps=args.steps, accountant=args.accountant
    )
    spent, fallback = _spend(args.accountant, nm, args.sample_rate, args.steps, args.delta)
    return {
        "noise_multiplier": nm,
        "epsilon": args.epsilon,
        "delta": args.delta,
        "sample_rate": args.sample_rate,
        "steps": args.steps,
        "accountant": args.accountant,
        "epsilon_spent": spent,
        "fallback_reason": fallback,
        "relation": "add/remove",
    }


def _noise_text(r: dict) -> list[str]:
    return [
        f"noise multiplier {r['noise_multiplier']:.6g} for epsilon {r['epsilon']:g} at delta {r['delta']:g} "
        f"over {r['steps']} steps at sample rate {r['sample_rate']:g} (add/remove neighbours)",
        f"  check: it spends epsilon {r['epsilon_spent']:.6g} ({_method(r)})",
    ]


def _ldp(args) -> dict:
    from splitfed.privacy.calibrate import ldp_release_sigma

    if args.unit == "token" and args.max_length is None:
        raise UsageError("--unit token needs --max-length T (the most positions one example has)")
    nm = ldp_release_sigma(args.epsilon, args.delta, releases=args.releases)
    sensitivity = 2.0 * args.clip  # replace-one: two vectors clipped to C are at most 2C apart
    result = {
        "unit": args.unit,
        "guarantee": "per example" if args.unit == "sequence" else "per activation vector (position)",
        "epsilon": args.epsilon,
        "delta": args.delta,
        "releases": args.releases,
        "calibration": "analytic",  # exact: k releases at s are one release at s / sqrt(k)
        "clip": args.clip,
        "sensitivity": sensitivity,
        "noise_multiplier": nm,
        "sigma": nm * sensitivity,
    }
    if args.unit == "token":
        from splitfed.privacy.calibrate import gaussian_composition_epsilon
        from splitfed.privacy.events import GaussianEvent

        # The T clipped vectors of one example, concatenated, are at most 2C sqrt(T) apart.
        per_example = nm / math.sqrt(args.max_length)
        result["per_example"] = {
            "max_length": args.max_length,
            "sensitivity": sensitivity * math.sqrt(args.max_length),
            "noise_multiplier": per_example,
            "epsilon": gaussian_composition_epsilon([GaussianEvent(per_example, args.releases)], args.delta),
            "delta": args.delta,
            "accountant": "exact",
        }
    return result


def _ldp_text(r: dict) -> list[str]:
    how = "exact: analytic Gaussian, k releases at s = one at s / sqrt(k)"
    if r["unit"] == "sequence":
        lines = [
            f"unit: sequence (one example's activations, all positions together, clipped to L2 norm C = {r['clip']:g})",
            f"guarantee: ({r['epsilon']:g}, {r['delta']:g})-DP per example, replace-one, "
            f"over {r['releases']} release(s) ({how})",
        ]
    else:
        lines = [
            f"unit: token (each position's activation vector clipped to L2 norm C = {r['clip']:g} on its own)",
            f"guarantee: ({r['epsilon']:g}, {r['delta']:g})-DP per activation vector (one position), NOT per "
            f"example, replace-one, over {r['releases']} release(s) ({how})",
        ]
    lines += [
        f"noise multiplier per release: {r['noise_multiplier']:.6g}",
        f"Gaussian sigma per coordinate: {r['sigma']:.6g} (= multiplier x sensitivity 2C = {r['sensitivity']:g})",
    ]
    if "per_example" in r:
        pe = r["per_example"]
        lines.append(
            f"per example of up to T = {pe['max_length']} positions: epsilon {pe['epsilon']:.4g} at delta "
            f"{pe['delta']:g} (sensitivity 2C sqrt(T) = {pe['sensitivity']:.4g}, noise multiplier "
            f"{pe['noise_multiplier']:.4g}, exact over {r['releases']} release(s))"
        )
    return lines


def _method(r: dict) -> str:
    if r["fallback_reason"]:
        return f"RDP bound: the {r['accountant']} accountant fell back because {r['fallback_reason']}"
    return f"{r['accountant']} accountant"


# argparse `type=` functions: each refuses with a message that names the accepted range.
# The ranges keep every computation finite: a noise multiplier of 1e-300 or a sample rate of
# 1e-320 would divide by zero inside the accountant, a clip of 1e308 overflow sigma.

MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER = 1e-2, 1e6
MIN_EPSILON, MAX_EPSILON = 1e-6, 1e3
MIN_DELTA = 1e-100
MIN_SAMPLE_RATE = 1e-9
_RATE_HELP = f"Poisson sampling rate q in [{MIN_SAMPLE_RATE:g}, 1]"
MIN_CLIP, MAX_CLIP = 1e-12, 1e12
MAX_COUNT = 10**9


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _in_range(lo: float, hi: float, *, hi_open: bool = False) -> Callable[[str], float]:
    """A `type=` for a number in [lo, hi] (or [lo, hi) with `hi_open`)."""
    shown = f"[{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        value = _number(text)
        if not (lo <= value < hi if hi_open else lo <= value <= hi):
            raise argparse.ArgumentTypeError(f"must be a number in {shown}, got {text}")
        return value

    return parse


_noise_multiplier = _in_range(MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER)
_epsilon_target = _in_range(MIN_EPSILON, MAX_EPSILON)
_delta = _in_range(MIN_DELTA, 1.0, hi_open=True)
_rate = _in_range(MIN_SAMPLE_RATE, 1.0)
_clip = _in_range(MIN_CLIP, MAX_CLIP)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, {MAX_COUNT:g}], got {text!r}") from None
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {MAX_COUNT:g}], got {text}")
    return value


def _finite_json(result: dict) -> str:
    """One JSON line; UsageError naming the key when a number is not finite (never `Infinity`)."""

    def check(obj: object, key: str) -> None:
        if isinstance(obj, float) and not math.isfinite(obj):
            raise UsageError(f"{key} came out as {obj} for these inputs; no finite answer to state")
        if isinstance(obj, dict):
            for k, v in obj.items():
                check(v, k)
        elif isinstance(obj, list):
            for v in obj:
                check(v, key)

    check(result, "result")
    return json.dumps(result, allow_nan=False)
