"""Shamir secret sharing: reconstruction from any threshold subset, hiding below it, validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import shamir
from crypto.shamir import PRIME, Share


@st.composite
def sharings(draw, min_threshold: int = 1):
    n = draw(st.integers(min_value=max(1, min_threshold), max_value=12))
    threshold = draw(st.integers(min_value=min_threshold, max_value=n))
    secret = draw(st.binary(max_size=shamir.MAX_SECRET_SIZE))
    return secret, threshold, n


def _lagrange(points: list[tuple[int, int]], x: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


@settings(max_examples=60, deadline=None)
@given(sharings(), st.randoms(use_true_random=False))
def test_any_threshold_subset_reconstructs(case, random):
    secret, threshold, n = case
    shares = shamir.split(secret, threshold=threshold, n=n)
    assert [s.x for s in shares] == list(range(1, n + 1))
    subset = random.sample(shares, random.randint(threshold, n))
    assert shamir.combine(subset, threshold=threshold) == secret


@settings(max_examples=60, deadline=None)
@given(sharings(min_threshold=2), st.binary(max_size=shamir.MAX_SECRET_SIZE), st.randoms(use_true_random=False))
def test_fewer_than_threshold_shares_are_consistent_with_every_secret(case, other, random):
    """t - 1 shares of ``secret`` plus one more point make a valid t-sharing of any ``other`` secret.

    So the t - 1 shares carry no information about which secret was shared.
    """
    secret, threshold, n = case
    shares = random.sample(shamir.split(secret, threshold=threshold, n=n), threshold - 1)
    with pytest.raises(ValueError, match=f"need at least threshold={threshold} shares, received {threshold - 1}"):
        shamir.combine(shares, threshold=threshold)
    points = [(0, int.from_bytes(b"\x01" + other, "big"))] + [(s.x, s.y) for s in shares]
    x_new = max(s.x for s in shares) + 1 if shares else 1
    completed = [*shares, Share(x_new, _lagrange(points, x_new))]
    assert shamir.combine(completed, threshold=threshold) == other


@settings(max_examples=30, deadline=None)
@given(sharings(min_threshold=2))
def test_combining_below_threshold_does_not_give_the_secret(case):
    secret, threshold, n = case
    shares = shamir.split(secret, threshold=threshold, n=n)[: threshold - 1]
    try:
        assert shamir.combine(shares, threshold=threshold - 1) != secret
    except ValueError as exc:
        assert "not a valid secret encoding" in str(exc)


def test_injected_rng_makes_split_deterministic():
    def rng(upper: int) -> int:
        return 12345 % upper

    assert shamir.split(b"k", threshold=3, n=4, rng=rng) == shamir.split(b"k", threshold=3, n=4, rng=rng)


def test_share_serialisation_round_trip_and_validation():
    share = shamir.split(bytes(32), threshold=2, n=3)[2]
    data = share.to_bytes()
    assert len(data) == shamir.SHARE_SIZE == 68
    assert Share.from_bytes(data) == share
    assert "y=..." in repr(share)
    with pytest.raises(ValueError, match="a serialised share is 68 bytes, received 67"):
        Share.from_bytes(data[:-1])
    with pytest.raises(ValueError, match="share x must be an integer in \\[1, 65535\\], received 0"):
        Share.from_bytes(bytes(68))
    with pytest.raises(ValueError, match="share y must be"):
        Share(1, PRIME)


def test_split_and_combine_validate_arguments():
    with pytest.raises(ValueError, match="threshold must be in \\[1, n\\] = \\[1, 3\\], received 4"):
        shamir.split(b"s", threshold=4, n=3)
    with pytest.raises(ValueError, match="threshold must be an integer >= 1, received 0"):
        shamir.split(b"s", threshold=0, n=3)
    with pytest.raises(ValueError, match="n must be an integer in \\[1, 65535\\], received 0"):
        shamir.split(b"s", threshold=1, n=0)
    with pytest.raises(ValueError, match="secret must be at most 64 bytes, received 65"):
        shamir.split(bytes(65), threshold=1, n=1)
    shares = shamir.split(b"secret", threshold=2, n=4)
    with pytest.raises(ValueError, match="duplicate share x=1"):
        shamir.combine([shares[0], shares[0]], threshold=2)
    with pytest.raises(ValueError, match="need at least threshold=3 shares, received 2"):
        shamir.combine(shares[:2], threshold=3)
    with pytest.raises(ValueError, match="must be Share objects"):
        shamir.combine([b"x"], threshold=1)


def test_tampered_share_is_detected():
    shares = shamir.split(b"secret", threshold=2, n=4)
    bad = Share(shares[3].x, (shares[3].y + 1) % PRIME)
    with pytest.raises(ValueError, match="share x=4 is inconsistent with the first 2 shares"):
        shamir.combine([*shares[:3], bad], threshold=2)
    # with exactly ``threshold`` shares a change cannot be detected, only give another value (the
    # protocol checks reconstructed secrets against commitments); a large change breaks the encoding
    assert shamir.combine([shares[0], Share(shares[1].x, (shares[1].y + 1) % PRIME)], threshold=2) != b"secret"
    with pytest.raises(ValueError, match="not a valid secret encoding"):
        shamir.combine([shares[0], Share(shares[1].x, (shares[1].y + 2**300) % PRIME)], threshold=2)
