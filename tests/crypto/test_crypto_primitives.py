"""X25519 + HKDF key agreement, AES-256-GCM, Ed25519 signatures and the ChaCha20 mask PRG."""

from __future__ import annotations

import numpy as np
import pytest

from crypto import aead, kex, prg, sign


def _counter_bytes(start: int = 0):
    """A deterministic ``randbytes`` for tests."""
    state = {"i": start}

    def randbytes(n: int) -> bytes:
        state["i"] += 1
        return bytes((state["i"] + j) % 256 for j in range(n))

    return randbytes


# --- key agreement ---------------------------------------------------------------------------


def test_shared_key_is_symmetric_and_separated_by_info():
    a, b, c = kex.generate_key_pair(), kex.generate_key_pair(), kex.generate_key_pair()
    k_ab = kex.shared_key(a.private, b.public, info=b"x")
    assert len(k_ab) == kex.KEY_SIZE
    assert k_ab == kex.shared_key(b.private, a.public, info=b"x")
    assert k_ab != kex.shared_key(a.private, b.public, info=b"y")
    assert k_ab != kex.shared_key(a.private, c.public, info=b"x")
    assert kex.public_key(a.private) == a.public


def test_key_pair_from_injected_randomness_is_deterministic_and_repr_hides_private():
    p1, p2 = kex.generate_key_pair(_counter_bytes()), kex.generate_key_pair(_counter_bytes())
    assert p1.private == p2.private and p1.public == p2.public
    assert p1.private.hex() not in repr(p1)


def test_shared_key_rejects_bad_keys():
    a = kex.generate_key_pair()
    with pytest.raises(kex.KeyAgreementError, match="peer public key must be 32 bytes, received 31 bytes"):
        kex.shared_key(a.private, a.public[:31], info=b"")
    with pytest.raises(kex.KeyAgreementError, match="private key must be 32 bytes"):
        kex.shared_key(b"short", a.public, info=b"")
    with pytest.raises(kex.KeyAgreementError, match="key agreement failed"):
        kex.shared_key(a.private, bytes(32), info=b"")  # low-order point: all-zero shared secret


# --- AEAD --------------------------------------------------------------------------------------


def test_aead_round_trip_and_random_nonce():
    key = bytes(range(32))
    c1 = aead.encrypt(key, b"secret", associated_data=b"ad")
    c2 = aead.encrypt(key, b"secret", associated_data=b"ad")
    assert c1 != c2 and len(c1) == len(b"secret") + aead.OVERHEAD
    assert aead.decrypt(key, c1, associated_data=b"ad") == b"secret"


@pytest.mark.parametrize("position", [0, 11, 12, 17, -1])  # nonce, ciphertext body, tag
def test_aead_detects_tampering(position):
    key = bytes(range(32))
    c = bytearray(aead.encrypt(key, b"secret", associated_data=b"ad"))
    c[position] ^= 1
    with pytest.raises(aead.AuthenticationError, match="authentication failed"):
        aead.decrypt(key, bytes(c), associated_data=b"ad")


def test_aead_rejects_wrong_associated_data_key_and_short_input():
    key = bytes(range(32))
    c = aead.encrypt(key, b"secret", associated_data=b"ad")
    with pytest.raises(aead.AuthenticationError):
        aead.decrypt(key, c, associated_data=b"other")
    with pytest.raises(aead.AuthenticationError):
        aead.decrypt(bytes(32), c, associated_data=b"ad")
    with pytest.raises(aead.AuthenticationError, match="ciphertext is 10 bytes, expected at least 28"):
        aead.decrypt(key, c[:10], associated_data=b"ad")
    with pytest.raises(ValueError, match="key must be 32 bytes, received 16 bytes"):
        aead.encrypt(key[:16], b"", associated_data=b"")


# --- signatures --------------------------------------------------------------------------------


def test_sign_and_verify():
    me, other = sign.generate_signing_key_pair(), sign.generate_signing_key_pair()
    sig = sign.sign(me.private, b"message")
    assert len(sig) == sign.SIGNATURE_SIZE
    sign.verify(me.public, b"message", sig)
    with pytest.raises(sign.SignatureError, match="does not verify"):
        sign.verify(me.public, b"messagE", sig)
    with pytest.raises(sign.SignatureError, match="does not verify"):
        sign.verify(other.public, b"message", sig)
    with pytest.raises(sign.SignatureError, match="signature must be 64 bytes, received 63 bytes"):
        sign.verify(me.public, b"message", sig[:63])
    assert me.private.hex() not in repr(me)


# --- PRG ---------------------------------------------------------------------------------------


def test_prg_matches_chacha20_rfc8439_test_vector():
    # RFC 8439, appendix A.1, test vector 1: all-zero key and nonce, block counter 0
    expected = bytes.fromhex("76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7")
    assert prg.expand(bytes(32), 4, bits=64).astype("<u8").tobytes() == expected


def test_prg_is_deterministic_and_prefix_stable():
    seed = bytes(range(32))
    a = prg.expand(seed, 1000, bits=32, dtype=np.uint32)
    assert np.array_equal(a, prg.expand(seed, 1000, bits=32, dtype=np.uint32))
    assert np.array_equal(a[:10], prg.expand(seed, 10, bits=32, dtype=np.uint32))
    assert a.dtype == np.uint32 and prg.expand(seed, 3, bits=40).dtype == np.uint64


def test_prg_uses_the_whole_seed():
    """Seeds that differ in one bit anywhere (first or last byte) give unrelated streams: no 32-bit folding."""
    base = bytes(32)
    out = prg.expand(base, 64, bits=64)
    for flip in (0, 15, 31):
        seed = bytearray(base)
        seed[flip] ^= 0x80
        other = prg.expand(bytes(seed), 64, bits=64)
        assert np.count_nonzero(other == out) == 0


@pytest.mark.parametrize("bits", [1, 7, 31, 32, 33, 62, 64])
def test_prg_range_and_rough_uniformity(bits):
    values = prg.expand(bytes([bits]) * 32, 20000, bits=bits)
    assert int(values.max()) < 2**bits
    # the top bit of the range is set about half of the time
    top = (values >> np.uint64(bits - 1)) & np.uint64(1)
    assert 0.47 < top.mean() < 0.53


def test_prg_validates_arguments():
    with pytest.raises(ValueError, match="seed must be 32 bytes \\(256 bits\\), received 4 bytes"):
        prg.expand(b"1234", 3, bits=8)
    with pytest.raises(ValueError, match="bits must be an integer in \\[1, 64\\], received 65"):
        prg.expand(bytes(32), 3, bits=65)
    with pytest.raises(ValueError, match="bits=33 does not fit dtype uint32"):
        prg.expand(bytes(32), 3, bits=33, dtype=np.uint32)
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        prg.expand(bytes(32), -1, bits=8)
    assert prg.expand(bytes(32), 0, bits=8).shape == (0,)
