"""crypto.he.grid: integer scores decrypt exactly; the noise is the sampler's; sensitivity by hand."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from crypto.dgauss import KeystreamBytes, cdt_sampler
from crypto.he import EncryptedScorer, HEError, ScoreGrid, ScoreNoise, SecretContext, decrypt_scores, encrypt_query
from crypto.he.grid import norm_bound, quantize_unit


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_quantized_rows_stay_within_the_norm_bound():
    rng = np.random.default_rng(0)
    rows = np.vstack([unit_rows(rng, 200, 384), 3 * unit_rows(rng, 5, 384), np.zeros((1, 384))])
    k = quantize_unit(rows, 8)
    limit = math.floor(norm_bound(8, 384) ** 2)
    assert k.dtype == np.int64 and ((k * k).sum(axis=1) <= limit).all()
    np.testing.assert_array_equal(k[:200], np.round(rows[:200] * 256))  # unit rows: plain rounding
    assert (k[-1] == 0).all()
    sqrt384 = Fraction(math.isqrt(384 << 40) + 1, 1 << 20)
    assert sqrt384 >= math.sqrt(384) and norm_bound(8, 384) == 256 + sqrt384 / 2
    assert norm_bound(3, 16) == 8 + 2  # sqrt(16) exact


def test_noise_calibration_by_hand():
    noise = ScoreNoise.for_std(0.05, 16)
    assert noise.grid == ScoreGrid(16, 9, 8) and noise.grid.bits == 17
    assert noise.grid.sensitivity == 2 * (512 + 2) * (256 + 2) == 265224
    assert noise.noise_multiplier == Fraction(0.05) / 2 and float(noise.noise_multiplier) == 0.025
    assert noise.sigma2 == (Fraction(0.05) / 2 * 265224) ** 2
    assert noise.tv(1000) == 1000 * cdt_sampler(noise.sigma2).tv
    assert noise.std == pytest.approx(0.05 * 514 * 258 / 2**17)
    # large noise: coarser grids until sigma <= 2^17 steps (T=17..15 give 530448, 266256, 134160)
    big = ScoreNoise.for_std(4.0, 16)
    assert big.grid == ScoreGrid(16, 7, 7) and big.noise_multiplier * big.grid.sensitivity == 2 * 2 * 130 * 130


@pytest.mark.parametrize(("dim", "rows", "std"), [(16, 5000, 0.05), (384, 4000, 0.02)])
def test_rounded_scores_are_exactly_s_plus_the_samplers_z(dim, rows, std):
    secret = SecretContext.create(dim=dim)
    rng = np.random.default_rng(dim)
    matrix, query = unit_rows(rng, rows, dim), unit_rows(rng, 1, dim)[0]
    noise = ScoreNoise.for_std(std, dim)
    grid, seed = noise.grid, bytes(range(32))
    scorer = EncryptedScorer(secret.public_context(), matrix, noise=noise, randbytes=KeystreamBytes(seed))
    blocks = scorer.score(encrypt_query(secret, query, grid=grid))
    got = decrypt_scores(secret, blocks, rows, grid=grid) * 2.0**grid.bits
    assert np.array_equal(got, np.round(got))
    source = KeystreamBytes(seed)  # the scorer draws once per block, in order, from the same bytes
    sizes = [min(secret.params.block_rows, rows - i) for i in range(0, rows, secret.params.block_rows)]
    z = np.concatenate([cdt_sampler(noise.sigma2).sample(n, source) for n in sizes])
    s = grid.quantize_docs(matrix) @ grid.quantize_query(query)
    np.testing.assert_array_equal(got.astype(np.int64), s + z)
    assert np.abs(s / 2.0**grid.bits - matrix @ query).max() < 0.02  # the grid stays close to the cosine


def test_decryption_off_the_grid_is_an_error():
    secret = SecretContext.create(dim=16)
    matrix = unit_rows(np.random.default_rng(1), 50, 16)
    grid = ScoreNoise.for_std(0.05, 16).grid
    float_blocks = EncryptedScorer(secret.public_context(), matrix).score(encrypt_query(secret, matrix[0] / 3))
    with pytest.raises(HEError, match="off the integer grid"):
        decrypt_scores(secret, float_blocks, 50, grid=grid)


def test_parameters_too_imprecise_or_for_another_dim_are_refused():
    coarse = SecretContext.create(dim=16, coeff_mod_bit_sizes=(60, 40, 60), scale_bits=30)  # response scale 2^20
    matrix = unit_rows(np.random.default_rng(2), 10, 16)
    with pytest.raises(HEError, match="too imprecise for a 17-bit score grid"):
        EncryptedScorer(coarse.public_context(), matrix, noise=ScoreNoise.for_std(0.05, 16))
    with pytest.raises(HEError, match="score grid is for dim 32"):
        EncryptedScorer(coarse.public_context(), matrix, noise=ScoreNoise.for_std(0.05, 32))
    with pytest.raises(ValueError, match="query_bits"):
        ScoreGrid.from_meta([0, 8], 16)
