"""Fixed-point encoding of float updates into integers modulo ``2**modulus_bits``.

A value ``v`` is clipped to ``[-clip, clip]`` and mapped to ``[0, L]`` with
``L = 2**bits - 1`` levels::

    q = (clip(v) + clip) * L / (2 * clip)        then stochastic rounding: floor(q + U[0, 1))

Stochastic rounding is unbiased (``E[round(q)] = q``) and off by less than one level, one
*step* = ``2 * clip / L``. The sum of ``n`` clients' integers lies in ``[0, n * L]``; it is
carried modulo ``2**modulus_bits``, so ``n * L < 2**modulus_bits`` is required for the sum never
to wrap around (:func:`check_capacity`). :func:`dequantize_sum` maps the exact integer sum back:
``sum * step - n * clip``, within ``n * step`` of the sum of the clipped inputs.

Values outside ``[-clip, clip]`` are clipped and *counted* (:class:`QuantizeReport`), never
silently saturated; non-finite values are an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_MODULUS_BITS",
    "QuantizeReport",
    "check_capacity",
    "dequantize_sum",
    "quantization_step",
    "quantize",
    "word_dtype",
]

MAX_MODULUS_BITS = 64


@dataclass(frozen=True)
class QuantizeReport:
    """How many of ``total`` values were outside ``[-clip, clip]`` and clipped."""

    clipped: int
    total: int

    @property
    def fraction(self) -> float:
        """``clipped / total`` (0.0 for an empty input)."""
        return self.clipped / self.total if self.total else 0.0

    def __add__(self, other: QuantizeReport) -> QuantizeReport:
        return QuantizeReport(self.clipped + other.clipped, self.total + other.total)


def word_dtype(modulus_bits: int) -> np.dtype:
    """The array dtype that carries values modulo ``2**modulus_bits``: uint32 up to 32 bits, else uint64."""
    _check_modulus(modulus_bits)
    return np.dtype(np.uint32) if modulus_bits <= 32 else np.dtype(np.uint64)


def _check_modulus(modulus_bits: int) -> None:
    if not isinstance(modulus_bits, int) or isinstance(modulus_bits, bool) or not 1 <= modulus_bits <= 64:
        raise ValueError(f"modulus_bits must be an integer in [1, {MAX_MODULUS_BITS}], received {modulus_bits!r}")


def _check_params(clip: float, bits: int, modulus_bits: int) -> None:
    _check_modulus(modulus_bits)
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= modulus_bits:
        raise ValueError(f"bits must be an integer in [1, modulus_bits={modulus_bits}], received {bits!r}")
    if not np.isfinite(clip) or clip <= 0:
        raise ValueError(f"clip must be a positive finite number, received {clip!r}")


def check_capacity(n_clients: int, *, bits: int, modulus_bits: int) -> None:
    """Raise ``ValueError`` unless the sum of ``n_clients`` values of ``bits`` bits fits modulo ``2**modulus_bits``.

    Requires ``n_clients * (2**bits - 1) < 2**modulus_bits``.
    """
    _check_modulus(modulus_bits)
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= modulus_bits:
        raise ValueError(f"bits must be an integer in [1, modulus_bits={modulus_bits}], received {bits!r}")
    if not isinstance(n_clients, int) or isinstance(n_clients, bool) or n_clients < 1:
        raise ValueError(f"n_clients must be a positive integer, received {n_clients!r}")
    largest = n_clients * ((1 << bits) - 1)
    if largest >= 1 << modulus_bits:
        raise ValueError(
            f"the sum of {n_clients} clients' {bits}-bit values can reach {n_clients} * (2**{bits} - 1) = {largest}, "
            f"which does not fit modulo 2**{modulus_bits} = {1 << modulus_bits}: use bits <= "
            f"{(((1 << modulus_bits) - 1) // n_clients + 1).bit_length() - 1} or a larger modulus_bits"
        )


def quantization_step(clip: float, bits: int) -> float:
    """The float value of one integer level: ``2 * clip / (2**bits - 1)``."""
    return 2.0 * float(clip) / ((1 << bits) - 1)


def quantize(
    values: np.ndarray, *, clip: float, bits: int, modulus_bits: int = 32, rng: np.random.Generator
) -> tuple[np.ndarray, QuantizeReport]:
    """Clip ``values`` to ``[-clip, clip]`` and round them stochastically to integers in ``[0, 2**bits - 1]``.

    Returns the integers (dtype :func:`word_dtype` of ``modulus_bits``, same shape as
    ``values``) and a :class:`QuantizeReport` counting the values that were clipped.
    ``rng`` draws the rounding noise. Raises ``ValueError`` for non-finite input.
    """
    _check_params(clip, bits, modulus_bits)
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        raise ValueError(f"cannot quantize {int(x.size - finite.sum())} non-finite value(s) (NaN or infinity)")
    outside = int(np.count_nonzero(np.abs(x) > clip))
    levels = (1 << bits) - 1
    q = (np.clip(x, -clip, clip) + clip) * (levels / (2.0 * clip))
    q += rng.random(q.shape)
    np.floor(q, out=q)
    np.clip(q, 0, levels, out=q)  # guards the top level against floating-point overshoot
    return q.astype(word_dtype(modulus_bits)), QuantizeReport(clipped=outside, total=int(x.size))


def dequantize_sum(
    sum_mod: np.ndarray, n_clients: int, *, clip: float, bits: int, modulus_bits: int = 32
) -> np.ndarray:
    """Map the modular sum of ``n_clients`` quantised vectors back to the float sum (float64).

    Raises ``ValueError`` if the parameters could let the sum wrap around, or if an entry
    exceeds ``n_clients * (2**bits - 1)`` (the inputs were not produced by :func:`quantize`
    with these parameters, or the aggregate is corrupt).
    """
    _check_params(clip, bits, modulus_bits)
    check_capacity(n_clients, bits=bits, modulus_bits=modulus_bits)
    s = np.asarray(sum_mod)
    if s.dtype.kind not in "ui":
        raise ValueError(f"sum_mod must be an integer array, received dtype {s.dtype}")
    largest = n_clients * ((1 << bits) - 1)
    if s.size and (int(s.min()) < 0 or int(s.max()) > largest):
        raise ValueError(
            f"sum entries must lie in [0, {largest}] = [0, n_clients * (2**bits - 1)] for {n_clients} clients, "
            f"received [{int(s.min())}, {int(s.max())}]"
        )
    return s.astype(np.float64) * quantization_step(clip, bits) - n_clients * float(clip)
