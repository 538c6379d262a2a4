"""Tests for IID and Dirichlet label-skew client partitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitfed.data import label_entropy, partition_dirichlet, partition_iid, partition_stats


def assert_valid_partition(parts: list[np.ndarray], n_items: int, n_clients: int) -> None:
    assert len(parts) == n_clients
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert np.all(np.diff(p) > 0)  # sorted, no duplicates within a client
    joined = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    assert len(joined) == n_items  # disjoint, given the coverage check below
    assert np.array_equal(np.sort(joined), np.arange(n_items))


def skewed_labels(n_items: int = 600, n_classes: int = 5) -> list[str]:
    return [f"class{i % n_classes}" for i in range(n_items)]


def mean_entropy(parts: list[np.ndarray], labels: list[str]) -> float:
    return float(np.mean([s["entropy"] for s in partition_stats(parts, labels)]))


# --- IID -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_items", "n_clients"), [(10, 3), (600, 4), (7, 7), (5, 1)])
def test_iid_covers_and_balances(n_items: int, n_clients: int) -> None:
    parts = partition_iid(n_items, n_clients, rng=np.random.default_rng(0))
    assert_valid_partition(parts, n_items, n_clients)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_shuffled_and_seeded() -> None:
    a = partition_iid(100, 4, rng=np.random.default_rng(7))
    b = partition_iid(100, 4, rng=np.random.default_rng(7))
    c = partition_iid(100, 4, rng=np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert not np.array_equal(a[0], np.arange(25))  # not a contiguous block


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_items": 10, "n_clients": 0}, "n_clients must be an integer >= 1, got 0"),
        ({"n_items": 2, "n_clients": 3}, "n_items must be an integer >= 3, got 2"),
        ({"n_items": 10.0, "n_clients": 2}, "n_items"),
    ],
)
def test_iid_invalid_args(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        partition_iid(**kwargs, rng=np.random.default_rng(0))


def test_rng_must_be_injected_generator() -> None:
    with pytest.raises(ValueError, match=r"numpy\.random\.Generator"):
        partition_iid(10, 2, rng=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"numpy\.random\.Generator"):
        partition_dirichlet(["a"] * 10, 2, alpha=1.0, rng=np.random.RandomState(0))  # type: ignore[arg-type]


# --- Dirichlet -------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_covers_and_respects_min_size(alpha: float) -> None:
    labels = skewed_labels()
    parts = partition_dirichlet(labels, 8, alpha=alpha, rng=np.random.default_rng(0), min_size=10)
    assert_valid_partition(parts, len(labels), 8)
    assert min(len(p) for p in parts) >= 10


def test_dirichlet_seeded() -> None:
    labels = skewed_labels()

    def run(seed: int) -> list[np.ndarray]:
        return partition_dirichlet(labels, 5, alpha=0.5, rng=np.random.default_rng(seed))

    assert all(np.array_equal(x, y) for x, y in zip(run(3), run(3), strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(run(3), run(4), strict=True))


def test_small_alpha_gives_more_label_skew() -> None:
    labels = skewed_labels(1000, 5)
    skewed = [
        mean_entropy(partition_dirichlet(labels, 10, alpha=0.1, rng=np.random.default_rng(s)), labels) for s in range(5)
    ]
    uniform = [
        mean_entropy(partition_dirichlet(labels, 10, alpha=100.0, rng=np.random.default_rng(s)), labels)
        for s in range(5)
    ]
    assert max(skewed) < min(uniform)
    assert min(uniform) > 0.95 * np.log2(5)  # near-IID: almost the full 5-class entropy


def test_dirichlet_on_real_ratings() -> None:
    from splitfed.data import load_drug_reviews

    labels = [r.rating for r in load_drug_reviews("train")]
    parts = partition_dirichlet(labels, 4, alpha=0.3, rng=np.random.default_rng(0), min_size=20)
    assert_valid_partition(parts, 600, 4)
    stats = partition_stats(parts, labels)
    assert [s["size"] for s in stats] == [len(p) for p in parts]
    assert sum(sum(s["labels"].values()) for s in stats) == 600


def test_single_client_gets_everything() -> None:
    parts = partition_dirichlet(skewed_labels(50), 1, alpha=0.5, rng=np.random.default_rng(0))
    assert_valid_partition(parts, 50, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_clients": 0}, "n_clients must be an integer >= 1, got 0"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0, got 0.0"),
        ({"alpha": -1.0}, "alpha must be a finite number > 0"),
        ({"alpha": float("nan")}, "alpha must be a finite number > 0"),
        ({"min_size": -1}, "min_size must be an integer >= 0, got -1"),
        ({"max_tries": 0}, "max_tries must be an integer >= 1, got 0"),
        ({"n_clients": 7, "min_size": 2}, r"n_items=10, n_clients=7, alpha=1.0, min_size=2"),
    ],
)
def test_dirichlet_invalid_args(kwargs: dict, match: str) -> None:
    args = {"n_clients": 2, "alpha": 1.0, "min_size": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        partition_dirichlet(skewed_labels(10), rng=np.random.default_rng(0), **args)


def test_dirichlet_gives_up_after_max_tries() -> None:
    # One class, 20 clients, tiny alpha: nearly all mass lands on one client every draw.
    with pytest.raises(ValueError, match=r"3 tries .*n_items=40, n_clients=20, alpha=0.001, min_size=2"):
        partition_dirichlet(["x"] * 40, 20, alpha=0.001, rng=np.random.default_rng(0), min_size=2, max_tries=3)


def test_label_entropy() -> None:
    assert label_entropy([]) == 0.0
    assert label_entropy([5]) == 0.0
    assert label_entropy([3, 3]) == pytest.approx(1.0)
    assert label_entropy([1, 1, 1, 1, 0]) == pytest.approx(2.0)


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    n_clients=st.integers(1, 12),
    extra=st.integers(0, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_iid_property(n_clients: int, extra: int, seed: int) -> None:
    n_items = n_clients + extra
    parts = partition_iid(n_items, n_clients, rng=np.random.default_rng(seed))
    assert_valid_partition(parts, n_items, n_clients)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=50, deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=1, max_size=300),
    n_clients=st.integers(1, 10),
    alpha=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_property(labels: list[int], n_clients: int, alpha: float, seed: int) -> None:
    try:
        parts = partition_dirichlet(labels, n_clients, alpha=alpha, rng=np.random.default_rng(seed))
    except ValueError as err:  # allowed only when no draw could give every client an item
        assert "n_items" in str(err) and (len(labels) < n_clients or "tries" in str(err))
        return
    assert_valid_partition(parts, len(labels), n_clients)
    assert min(len(p) for p in parts) >= 1


@settings(max_examples=50, deadline=None)
@given(
    labels=st.lists(st.sampled_from("abc"), min_size=0, max_size=100),
    n_clients=st.integers(1, 8),
    alpha=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_property_min_size_zero(labels: list[str], n_clients: int, alpha: float, seed: int) -> None:
    parts = partition_dirichlet(labels, n_clients, alpha=alpha, rng=np.random.default_rng(seed), min_size=0)
    assert_valid_partition(parts, len(labels), n_clients)
