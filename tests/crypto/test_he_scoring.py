"""crypto.he: encrypted scores match plaintext dot products; top-k; noise; the layout math."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.dgauss import KeystreamBytes
from crypto.he import (
    EncryptedScorer,
    HEError,
    HEParams,
    ScoreNoise,
    SecretContext,
    decrypt_scores,
    encrypt_query,
    gaussian_noise_std,
)
from crypto.he.query import layout_query
from crypto.he.scoring import block_diagonals

TOL = 1e-3


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def roundtrip(secret: SecretContext, scorer: EncryptedScorer, query: np.ndarray) -> np.ndarray:
    blocks = scorer.score(encrypt_query(secret, query))
    assert len(blocks) == scorer.n_blocks
    return decrypt_scores(secret, blocks, scorer.n_rows)


@pytest.fixture(scope="module")
def secret384() -> SecretContext:
    return SecretContext.create(dim=384)


@pytest.fixture(scope="module")
def corpus384(secret384: SecretContext) -> tuple[np.ndarray, EncryptedScorer]:
    rows = 2 * secret384.params.block_rows + 123  # three blocks, the last one partial
    matrix = unit_rows(np.random.default_rng(0), rows, 384)
    return matrix, EncryptedScorer(secret384.public_context(), matrix)


def test_layout_for_384_dims(secret384: SecretContext):
    p = secret384.params
    assert (p.slot_count, p.block_rows, p.baby_steps, p.giant_steps) == (4096, 4096 - 384 + 1, 20, 20)
    assert p.rotation_steps == (1, 20)
    assert p.galois_elements == (3, pow(3, 20, 16384))


def test_scores_match_plaintext_dim_384_three_blocks(secret384, corpus384):
    matrix, scorer = corpus384
    assert scorer.n_blocks == 3
    rng = np.random.default_rng(1)
    for query in unit_rows(rng, 2, 384):
        got = roundtrip(secret384, scorer, query)
        assert got.shape == (matrix.shape[0],)
        np.testing.assert_allclose(got, matrix @ query, atol=TOL, rtol=0)


@pytest.mark.parametrize("rows", [1, 7, 3713, 3714])
def test_scores_match_plaintext_dim_384_block_edges(secret384, rows):
    rng = np.random.default_rng(rows)
    matrix, query = unit_rows(rng, rows, 384), unit_rows(rng, 1, 384)[0]
    scorer = EncryptedScorer(secret384.public_context(), matrix)
    assert scorer.n_blocks == (1 if rows <= 3713 else 2)
    np.testing.assert_allclose(roundtrip(secret384, scorer, query), matrix @ query, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    ("dim", "baby_steps", "rows"),
    [(16, None, 4096 * 2 + 5), (16, 1, 300), (16, 16, 300), (10, None, 4087 + 1), (10, 3, 4087 * 3), (1, None, 50)],
)
def test_scores_match_plaintext_small_dims(dim, baby_steps, rows):
    secret = SecretContext.create(dim=dim, baby_steps=baby_steps)
    assert secret.params.block_rows == (4096 if 4096 % dim == 0 else 4096 - dim + 1)
    rng = np.random.default_rng(dim * 1000 + rows)
    matrix, query = unit_rows(rng, rows, dim), unit_rows(rng, 1, dim)[0]
    scorer = EncryptedScorer(secret.public_context(), matrix)
    assert scorer.n_blocks == secret.params.n_blocks(rows)
    np.testing.assert_allclose(roundtrip(secret, scorer, query), matrix @ query, atol=TOL, rtol=0)


def test_uncached_plaintexts_give_the_same_scores():
    secret = SecretContext.create(dim=16)
    rng = np.random.default_rng(5)
    matrix, query = unit_rows(rng, 5000, 16), unit_rows(rng, 1, 16)[0]
    scorer = EncryptedScorer(secret.public_context(), matrix, cache_plaintexts=False)
    np.testing.assert_allclose(roundtrip(secret, scorer, query), matrix @ query, atol=TOL, rtol=0)


def test_global_top_k_over_two_parties_equals_plaintext(secret384):
    rng = np.random.default_rng(42)
    query = unit_rows(rng, 1, 384)[0]
    corpus = unit_rows(rng, 500, 384)
    levels = np.array([0.2, 0.4, 0.6, 0.8, 1.0])[:, None]  # near-duplicates of the query, cos ~ 0.98 .. 0.7
    planted = query + levels * rng.normal(size=(5, 384)) / np.sqrt(384)
    planted /= np.linalg.norm(planted, axis=1, keepdims=True)
    corpus = np.vstack([corpus[:200], planted[:2], corpus[200:], planted[2:]])
    parties = [corpus[:300], corpus[300:]]
    message = encrypt_query(secret384, query)
    scores = []
    for shard in parties:  # each party: its own scorer; the querier decrypts each response
        scorer = EncryptedScorer(secret384.public_context(), shard)
        scores.append(decrypt_scores(secret384, scorer.score(message), scorer.n_rows))
    merged = np.concatenate(scores)
    plain = corpus @ query
    k = 10
    assert list(np.argsort(-merged)[:k]) == list(np.argsort(-plain)[:k])
    planted_ids = {200, 201, 502, 503, 504}
    assert planted_ids <= set(np.argsort(-merged)[:5].tolist())


def test_scorer_serves_another_querier_with_the_same_parameters():
    alice, bob = SecretContext.create(dim=16), SecretContext.create(dim=16)
    rng = np.random.default_rng(7)
    matrix, query = unit_rows(rng, 100, 16), unit_rows(rng, 1, 16)[0]
    scorer = EncryptedScorer(alice.public_context(), matrix)
    blocks = scorer.score(encrypt_query(bob, query), bob.public_context())
    np.testing.assert_allclose(decrypt_scores(bob, blocks, 100), matrix @ query, atol=TOL, rtol=0)
    with pytest.raises(HEError, match="key id"):
        scorer.score(encrypt_query(bob, query))  # defaults to alice's context
    other = SecretContext.create(dim=16, baby_steps=2)
    with pytest.raises(HEError, match="other HE parameters"):
        scorer.score(encrypt_query(other, query), other.public_context())


def test_score_noise_perturbs_scores_by_about_its_std():
    secret = SecretContext.create(dim=16)
    rng = np.random.default_rng(3)
    matrix, query = unit_rows(rng, 4000, 16), unit_rows(rng, 1, 16)[0]
    noise = ScoreNoise.for_std(0.05, 16)
    message = encrypt_query(secret, query, grid=noise.grid)

    def noisy(seed: bytes) -> np.ndarray:
        scorer = EncryptedScorer(secret.public_context(), matrix, noise=noise, randbytes=KeystreamBytes(seed))
        return decrypt_scores(secret, scorer.score(message), scorer.n_rows, grid=noise.grid)

    diff = noisy(b"\x0b" * 32) - matrix @ query
    assert 0.05 < noise.std < 0.051  # the grid's rounding adds a little to the noise
    assert abs(diff.std() - noise.std) < 0.005
    assert abs(diff.mean()) < 0.005
    np.testing.assert_array_equal(noisy(b"\x0b" * 32), noisy(b"\x0b" * 32))  # the injected bytes decide the noise
    assert np.abs(noisy(b"\x0b" * 32) - noisy(b"\x0c" * 32)).max() > 0.01


def test_gaussian_noise_std():
    assert gaussian_noise_std(0.5, 1e-5) == pytest.approx(2 * np.sqrt(2 * np.log(1.25e5)) / 0.5)
    with pytest.raises(ValueError):
        gaussian_noise_std(1.5, 1e-5)


def test_bad_inputs_are_value_errors(secret384):
    ctx = secret384.public_context()
    with pytest.raises(ValueError, match="shape"):
        EncryptedScorer(ctx, np.zeros((3, 383)))
    with pytest.raises(ValueError, match="non-finite"):
        EncryptedScorer(ctx, np.full((3, 384), np.nan))
    with pytest.raises(ValueError, match="noise_std"):
        ScoreNoise.for_std(-1.0, 384)
    with pytest.raises(ValueError, match="shape"):
        encrypt_query(secret384, np.zeros(10))
    with pytest.raises(ValueError):
        HEParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 40, 60), scale_bits=40, dim=5000, baby_steps=1)


def _simulate(params: HEParams, block: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The scorer's BSGS circuit on cleartext slot vectors (rotation = np.roll to the left)."""
    b = params.baby_steps
    rotated = [np.roll(layout_query(params, query), -k) for k in range(b)]
    diagonals = block_diagonals(params, block)
    acc = None
    for g in reversed(range(params.giant_steps)):
        inner = sum(diagonals[g * b + k] * rotated[k] for k in range(min(b, params.dim - g * b)))
        acc = inner if acc is None else inner + np.roll(acc, -b)
    return acc


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 80), data=st.data())
def test_layout_math_in_the_clear(dim, data):
    params = HEParams(
        poly_modulus_degree=4096,
        coeff_mod_bit_sizes=(60, 40, 60),
        scale_bits=40,
        dim=dim,
        baby_steps=data.draw(st.integers(1, dim)),
    )
    rows = data.draw(st.integers(1, params.block_rows))
    rng = np.random.default_rng(dim)
    block, query = rng.normal(size=(rows, dim)), rng.normal(size=dim)
    slots = _simulate(params, block, query)
    np.testing.assert_allclose(slots[:rows], block @ query, atol=1e-9)
    np.testing.assert_allclose(slots[rows:], 0.0, atol=1e-12)


@pytest.mark.parametrize(
    "matrix",
    [
        np.zeros((3, 16)),
        np.eye(16)[:1],
        np.eye(16),
        np.full((5, 16), 1e-14),
        np.vstack([np.zeros((4096, 16)), np.eye(16)]),
    ],
    ids=["zeros", "one-hot-row", "identity", "below-precision", "zero-block"],
)
def test_sparse_and_zero_matrices(matrix):
    secret = SecretContext.create(dim=16)
    query = np.linspace(-1, 1, 16)
    scorer = EncryptedScorer(secret.public_context(), matrix)
    np.testing.assert_allclose(roundtrip(secret, scorer, query), matrix @ query, atol=TOL, rtol=0)
    noise = ScoreNoise.for_std(0.01, 16)  # integer path: rows and the (clipped) query on the grid
    scorer = EncryptedScorer(secret.public_context(), matrix, noise=noise)
    got = decrypt_scores(
        secret, scorer.score(encrypt_query(secret, query, grid=noise.grid)), scorer.n_rows, grid=noise.grid
    )
    want = noise.grid.quantize_docs(matrix) @ noise.grid.quantize_query(query) / 2.0**noise.grid.bits
    np.testing.assert_allclose(got, want, atol=6 * noise.std, rtol=0)
