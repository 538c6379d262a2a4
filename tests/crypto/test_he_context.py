"""crypto.he contexts: the public half holds no secret key, is small, validated, and keyed by key id."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tenseal as ts

from crypto.he import (
    EncryptedScorer,
    HEError,
    PublicContext,
    SecretContext,
    decrypt_scores,
    encrypt_query,
    key_id_of,
)
from crypto.he.common import HEParams, pack_frames, unpack_frames
from crypto.he.context import _PUBLIC_MAGIC


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return SecretContext.create(dim=384)


def test_public_context_is_public_and_small(secret):
    data = secret.public_bytes
    assert len(data) < 3_000_000  # two Galois keys (~1.4 MB) + public key (~0.5 MB), not ~35 MB
    ctx = PublicContext.from_bytes(data)
    assert not ctx._keys.tenseal.is_private()
    assert not ctx._keys.tenseal.has_secret_key()
    assert not ctx._keys.tenseal.has_relin_keys()
    assert ctx.params == secret.params
    for element in secret.params.galois_elements:
        assert ctx._keys.galois_keys.has_key(element)
    assert ctx._keys.galois_keys.size() == len(secret.params.galois_elements)


def test_decryption_with_the_public_context_fails(secret):
    ctx = PublicContext.from_bytes(secret.public_bytes)
    vector = ts.ckks_vector(ctx._keys.tenseal, [1.0, 2.0])  # parties may encrypt, never decrypt
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()
    assert not hasattr(ctx, "decryptor")


def test_key_id_is_sha256_prefix_of_the_public_bytes(secret):
    data = secret.public_bytes
    assert secret.key_id == hashlib.sha256(data).hexdigest()[:16] == key_id_of(data)
    assert PublicContext.from_bytes(data).key_id == secret.key_id
    assert SecretContext.create(dim=384).key_id != secret.key_id


def test_from_bytes_refuses_the_secret_context(secret):
    with pytest.raises(HEError, match="secret context"):
        PublicContext.from_bytes(secret.to_bytes())


def test_from_bytes_refuses_a_public_envelope_holding_a_secret_key(secret):
    params_json, _, galois = unpack_frames(_PUBLIC_MAGIC, secret.public_bytes, 3, "public context")
    leaky = secret._tenseal.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    with pytest.raises(HEError, match="secret key"):
        PublicContext.from_bytes(pack_frames(_PUBLIC_MAGIC, params_json, leaky, galois))


def test_from_bytes_refuses_oversized_malformed_and_inconsistent_input(secret):
    data = secret.public_bytes
    with pytest.raises(HEError, match="max_bytes"):
        PublicContext.from_bytes(data, max_bytes=len(data) - 1)
    for bad in (b"", b"junk", data[:-1], data + b"\x00", b"XXXX" + data[4:], bytearray(b"HEP\x01")):
        with pytest.raises(HEError):
            PublicContext.from_bytes(bytes(bad))
    with pytest.raises(HEError):
        PublicContext.from_bytes("not bytes")  # type: ignore[arg-type]
    params_json, ts_bytes, galois = unpack_frames(_PUBLIC_MAGIC, data, 3, "public context")
    with pytest.raises(HEError, match="parameters"):
        PublicContext.from_bytes(pack_frames(_PUBLIC_MAGIC, b'{"dim": 3}', ts_bytes, galois))
    lying = HEParams(**{**secret.params.__dict__, "poly_modulus_degree": 16384})
    with pytest.raises(HEError, match="do not match"):
        PublicContext.from_bytes(pack_frames(_PUBLIC_MAGIC, lying.to_json(), ts_bytes, galois))
    more_steps = HEParams(**{**secret.params.__dict__, "baby_steps": 25})
    with pytest.raises(HEError, match="Galois key"):
        PublicContext.from_bytes(pack_frames(_PUBLIC_MAGIC, more_steps.to_json(), ts_bytes, galois))
    with pytest.raises(HEError, match="Galois"):
        PublicContext.from_bytes(pack_frames(_PUBLIC_MAGIC, params_json, ts_bytes, galois[:-10]))
    no_pk = secret.public_context()._keys.tenseal.serialize(save_public_key=False, save_galois_keys=False)
    with pytest.raises(HEError, match="no public key"):
        PublicContext.from_bytes(pack_frames(_PUBLIC_MAGIC, params_json, no_pk, galois))
    with pytest.raises(HEError, match="TenSEAL"):
        PublicContext.from_bytes(pack_frames(_PUBLIC_MAGIC, params_json, b"\x00" * 100, galois))


def test_secret_context_persists_with_the_same_key_id(secret):
    restored = SecretContext.from_bytes(secret.to_bytes())
    assert restored.key_id == secret.key_id
    assert restored.public_bytes == secret.public_bytes
    rng = np.random.default_rng(0)
    matrix, query = rng.normal(size=(20, 384)), rng.normal(size=384)
    scorer = EncryptedScorer(PublicContext.from_bytes(secret.public_bytes), matrix)
    scores = decrypt_scores(restored, scorer.score(encrypt_query(secret, query)), 20)
    np.testing.assert_allclose(scores, matrix @ query, atol=1e-3)


def test_secret_context_refuses_mismatched_halves(secret):
    other = SecretContext.create(dim=384)
    own, _ = unpack_frames(b"HEK\x01", secret.to_bytes(), 2, "secret context")
    with pytest.raises(HEError, match="does not match"):
        SecretContext.from_bytes(pack_frames(b"HEK\x01", own, other.public_bytes))


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError, match="dim"):
        SecretContext.create(dim=0)
    with pytest.raises(ValueError, match="baby_steps"):
        SecretContext.create(dim=16, baby_steps=17)
    with pytest.raises(ValueError, match="scale_bits"):
        SecretContext.create(scale_bits=25)
    with pytest.raises(ValueError, match="poly_modulus_degree"):
        SecretContext.create(poly_modulus_degree=1000)
