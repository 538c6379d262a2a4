"""crypto.he wire checks: malformed, oversized, wrong-level or wrong-key messages raise HEError."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tenseal.sealapi as sealapi

from crypto.he import EncryptedScorer, HEError, SecretContext, decrypt_scores, encrypt_query, query_key_id
from crypto.he.common import seal_from_bytes, seal_to_bytes

DIM = 16


@pytest.fixture(scope="module")
def setup() -> tuple[SecretContext, EncryptedScorer, bytes]:
    secret = SecretContext.create(dim=DIM)
    matrix = np.random.default_rng(0).normal(size=(5000, DIM))
    scorer = EncryptedScorer(secret.public_context(), matrix, max_query_bytes=400_000)
    return secret, scorer, encrypt_query(secret, np.ones(DIM) / 4)


def _reseal(secret: SecretContext, message: bytes, change) -> bytes:
    """Load the query's ciphertext, apply ``change(evaluator, ciphertext)``, repack under the same header."""
    keys = secret.public_context()._keys
    ciphertext = seal_from_bytes(sealapi.Ciphertext, keys.seal, message[12:], "test")
    change(keys.evaluator, ciphertext)
    return message[:12] + seal_to_bytes(ciphertext)


def test_a_valid_query_is_accepted(setup):
    secret, scorer, message = setup
    assert query_key_id(message) == secret.key_id
    assert len(message) < 150_000
    blocks = scorer.score(message)
    assert len(blocks) == 2 and all(len(b) < 150_000 for b in blocks)


def test_oversized_query_is_refused(setup):
    _, scorer, message = setup
    with pytest.raises(HEError, match="max_bytes"):
        scorer.score(message + b"\x00" * 400_000)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda m: b"",
        lambda m: m[:11],
        lambda m: b"XXXX" + m[4:],
        lambda m: m[:12],
        lambda m: m[:-1],
        lambda m: m + b"\x00",
        lambda m: m[:12] + b"\x5e\xa1\x10" + b"\x00" * 200,
        lambda m: m[:12] + bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)),
        lambda m: m[:12] + m[12:28] + bytes(len(m) - 28),
        lambda m: m[:40] + bytes(b ^ 0xFF for b in m[40:60]) + m[60:],
    ],
    ids=["empty", "short", "magic", "no-ciphertext", "truncated", "trailing", "bad-header", "random", "zeroed", "flip"],
)
def test_malformed_query_is_refused(setup, mangle):
    _, scorer, message = setup
    with pytest.raises(HEError):
        scorer.score(mangle(message))


def test_non_bytes_query_is_refused(setup):
    _, scorer, message = setup
    with pytest.raises(HEError):
        scorer.score(message.hex())  # type: ignore[arg-type]


def test_wrong_key_id_is_refused(setup):
    _, scorer, message = setup
    other = SecretContext.create(dim=DIM)
    with pytest.raises(HEError, match="key id"):
        scorer.score(encrypt_query(other, np.ones(DIM)))
    with pytest.raises(HEError, match="key id"):
        scorer.score(message[:4] + bytes(8) + message[12:])


def test_wrong_level_scale_or_size_is_refused(setup):
    secret, scorer, message = setup
    with pytest.raises(HEError, match="level"):
        scorer.score(_reseal(secret, message, lambda ev, c: ev.mod_switch_to_next_inplace(c)))
    with pytest.raises(HEError, match="2-part"):
        scorer.score(_reseal(secret, message, lambda ev, c: ev.square_inplace(c)))
    keys = secret.public_context()._keys
    plain = sealapi.Plaintext()
    keys.encoder.encode([0.5] * 8, keys.working.parms_id(), 2.0**30, plain)
    with pytest.raises(HEError, match="scale"):
        scorer.score(message[:12] + seal_to_bytes(secret.encryptor.encrypt_symmetric(plain)))


def test_a_scores_message_is_not_a_query(setup):
    _, scorer, message = setup
    with pytest.raises(HEError):
        scorer.score(scorer.score(message)[0])


def test_decrypt_scores_checks_the_response(setup):
    secret, scorer, message = setup
    blocks = scorer.score(message)
    assert decrypt_scores(secret, blocks, scorer.n_rows).shape == (5000,)
    with pytest.raises(HEError, match="blocks"):
        decrypt_scores(secret, blocks, 10_000)
    with pytest.raises(HEError, match="blocks"):
        decrypt_scores(secret, blocks[:1], scorer.n_rows)
    with pytest.raises(HEError, match="header"):
        decrypt_scores(secret, blocks[::-1], scorer.n_rows)
    with pytest.raises(HEError, match="header"):
        decrypt_scores(secret, blocks, 5001)
    with pytest.raises(HEError, match="max_bytes"):
        decrypt_scores(secret, blocks, scorer.n_rows, max_bytes=1000)
    with pytest.raises(HEError):
        decrypt_scores(secret, [blocks[0][:-5], blocks[1]], scorer.n_rows)
    with pytest.raises(HEError, match="not a scores message"):
        decrypt_scores(secret, [message, blocks[1]], scorer.n_rows)
    other = SecretContext.create(dim=DIM)
    with pytest.raises(HEError, match="header"):
        decrypt_scores(other, blocks, scorer.n_rows)


def test_scores_header_layout(setup):
    secret, scorer, message = setup
    blocks = scorer.score(message)
    for i, block in enumerate(blocks):
        assert block[:4] == b"HES\x01" and block[4:12].hex() == secret.key_id
        assert struct.unpack(">II", block[12:20]) == (i, min(4096, 5000 - 4096 * i))
