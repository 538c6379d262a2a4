"""Quantisation of float updates to integers modulo 2**k: error bounds, clipping reports, no wrap-around."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crypto.secagg.quantize import (
    QuantizeReport,
    check_capacity,
    dequantize_sum,
    quantization_step,
    quantize,
)

floats = st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, allow_subnormal=False, width=64)


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(1, 50), elements=floats),
    st.sampled_from([0.01, 0.5, 1.0, 3.0]),
    st.integers(1, 24),
    st.integers(0, 2**32 - 1),
)
def test_round_trip_error_is_below_one_step(values, clip, bits, seed):
    ints, report = quantize(values, clip=clip, bits=bits, modulus_bits=32, rng=np.random.default_rng(seed))
    assert ints.dtype == np.uint32 and ints.shape == values.shape
    assert int(ints.max()) <= 2**bits - 1
    assert report == QuantizeReport(clipped=int(np.sum(np.abs(values) > clip)), total=values.size)
    back = dequantize_sum(ints, 1, clip=clip, bits=bits, modulus_bits=32)
    step = quantization_step(clip, bits)
    assert np.all(np.abs(back - np.clip(values, -clip, clip)) <= step * (1 + 1e-9))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_sum_of_clients_does_not_wrap_and_dequantises_within_n_steps(n, bits, seed):
    # the smallest modulus that check_capacity accepts for n clients
    modulus_bits = (n * (2**bits - 1)).bit_length()
    check_capacity(n, bits=bits, modulus_bits=modulus_bits)
    rng = np.random.default_rng(seed)
    values = rng.uniform(-1.2, 1.2, size=(n, 16))
    ints = [quantize(v, clip=1.0, bits=bits, modulus_bits=modulus_bits, rng=rng)[0] for v in values]
    exact = sum(i.astype(object) for i in ints)
    sum_mod = np.array([int(x) % 2**modulus_bits for x in exact], dtype=np.uint64)
    assert [int(x) for x in sum_mod] == [int(x) for x in exact]  # nothing wrapped
    back = dequantize_sum(sum_mod, n, clip=1.0, bits=bits, modulus_bits=modulus_bits)
    assert np.all(np.abs(back - np.clip(values, -1.0, 1.0).sum(0)) <= n * quantization_step(1.0, bits) * (1 + 1e-9))


def test_stochastic_rounding_is_unbiased():
    value = np.full(200_000, 0.3)
    ints, _ = quantize(value, clip=1.0, bits=3, rng=np.random.default_rng(0))
    assert abs(dequantize_sum(ints, 1, clip=1.0, bits=3).mean() - 0.3) < 2e-3


def test_clipping_is_reported():
    ints, report = quantize(np.array([-5.0, -1.0, 0.0, 1.0, 2.0]), clip=1.0, bits=8, rng=np.random.default_rng(0))
    assert report == QuantizeReport(clipped=2, total=5) and report.fraction == 0.4
    assert list(ints[[0, 4]]) == [0, 255]
    assert (report + report).clipped == 4


def test_capacity_validation_names_the_numbers():
    check_capacity(255, bits=24, modulus_bits=32)  # 255 * (2**24 - 1) < 2**32
    with pytest.raises(ValueError, match=r"257 \* \(2\*\*24 - 1\) = 4311744255.*2\*\*32 = 4294967296.*bits <= 23"):
        check_capacity(257, bits=24, modulus_bits=32)
    with pytest.raises(ValueError, match="bits must be an integer in \\[1, modulus_bits=16\\], received 17"):
        check_capacity(2, bits=17, modulus_bits=16)
    with pytest.raises(ValueError, match="modulus_bits must be an integer in \\[1, 64\\], received 65"):
        check_capacity(2, bits=8, modulus_bits=65)
    with pytest.raises(ValueError, match="does not fit modulo"):
        dequantize_sum(np.zeros(3, np.uint64), 3, clip=1.0, bits=32, modulus_bits=32)


def test_invalid_inputs_are_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="cannot quantize 2 non-finite value"):
        quantize(np.array([np.nan, np.inf, 0.0]), clip=1.0, bits=8, rng=rng)
    with pytest.raises(ValueError, match="clip must be a positive finite number"):
        quantize(np.zeros(2), clip=0.0, bits=8, rng=rng)
    with pytest.raises(ValueError, match=r"sum entries must lie in \[0, 510\].*received \[0, 511\]"):
        dequantize_sum(np.array([0, 511], np.uint64), 2, clip=1.0, bits=8)


def test_large_modulus_uses_uint64():
    ints, _ = quantize(np.linspace(-1, 1, 5), clip=1.0, bits=40, modulus_bits=48, rng=np.random.default_rng(0))
    assert ints.dtype == np.uint64 and int(ints.max()) <= 2**40 - 1
