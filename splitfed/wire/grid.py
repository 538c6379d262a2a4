"""Grid integers on the wire: the discrete LDP release k * gamma sent as k itself.

``name`` carries the integers k (int16 when every |k| < 2^15, else int32) and ``name.step``
the grid step gamma (a float32 scalar, a power of two).  The receiver checks both like any
peer input and rebuilds k * gamma, exact in float32 because |k| < 2^24 and gamma is a power
of two small enough that no product overflows.
"""

from __future__ import annotations

import math

import torch

from splitfed.wire.messages import ErrorCode, WireError, short

EXACT = 2**24  # |k| below this: k * step is exact in float32
MAX_STEP = 2.0**103  # 2^24 * step stays below float32's largest finite value
_INT16 = 2**15


def step_name(name: str) -> str:
    return f"{name}.step"


def encode_grid(name: str, x: torch.Tensor, step: float) -> dict[str, torch.Tensor]:
    """Wire tensors for `x`, every entry an integer multiple k of `step` with |k| < 2^24."""
    if not (math.isfinite(step) and 0 < step <= MAX_STEP and math.frexp(step)[0] == 0.5):
        raise ValueError(f"{name}: step must be a power of two in (0, 2^103], got {step!r}")
    k = x.detach().double() / step  # exact: a float32 over a power of two, in float64
    if not bool(torch.isfinite(k).all()) or not torch.equal(k, torch.round(k)):
        raise ValueError(f"{name}: values are not integer multiples of the grid step {step!r}")
    peak = int(k.abs().max()) if k.numel() else 0
    if peak >= EXACT:
        raise ValueError(f"{name}: |k| up to {peak}, the wire allows below 2^24")
    ints = k.to(torch.int16 if peak < _INT16 else torch.int32)
    return {name: ints, step_name(name): torch.tensor(step, dtype=torch.float32)}


def decode_grid(name: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """float32 k * step from `encode_grid`'s tensors, every part checked as hostile input."""
    k, step = tensors.get(name), tensors.get(step_name(name))
    if k is None or step is None:
        raise WireError(
            ErrorCode.BAD_TENSOR, f"integer release {name!r}: expected tensors {name!r} and {step_name(name)!r}"
        )
    if k.dtype not in (torch.int16, torch.int32):
        raise WireError(
            ErrorCode.BAD_TENSOR, f"tensor {name!r}: expected int16 or int32 (the integer release), got {k.dtype}"
        )
    if step.dtype != torch.float32 or step.dim() != 0:
        raise WireError(
            ErrorCode.BAD_TENSOR,
            f"tensor {step_name(name)!r}: expected a float32 scalar, got {step.dtype}{list(step.shape)}",
        )
    gamma = float(step)
    if not (math.isfinite(gamma) and 0 < gamma <= MAX_STEP and math.frexp(gamma)[0] == 0.5):
        raise WireError(
            ErrorCode.BAD_TENSOR,
            f"tensor {step_name(name)!r}: expected a power of two in (0, 2^103], got {short(gamma)}",
        )
    low, high = (int(k.min()), int(k.max())) if k.numel() else (0, 0)  # Python ints: no int16/int32 wrap
    if not -EXACT < low <= high < EXACT:
        raise WireError(
            ErrorCode.BAD_TENSOR, f"tensor {name!r}: expected every |k| < 2^24, got values in [{low}, {high}]"
        )
    return k.float() * gamma
