"""Splitting a data set over federated clients: IID and Dirichlet label-skew (non-IID) partitions.

Every partition is a list with one sorted int64 index array per client; the arrays are disjoint and
together cover ``range(n_items)``. Randomness always comes from an injected ``np.random.Generator``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from splitfed.errors import SplitfedError


class PartitionError(SplitfedError, ValueError):
    """Clients, items and alpha that no partition can satisfy (the message names the setting)."""


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise PartitionError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def partition_iid(n_items: int, n_clients: int, *, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``range(n_items)`` and deal it out so client sizes differ by at most one."""
    _check_int("n_clients", n_clients, 1)
    _check_int("n_items", n_items, n_clients)
    _check_rng(rng)
    return [np.sort(part).astype(np.int64) for part in np.array_split(rng.permutation(n_items), n_clients)]


def _split_by_dirichlet(
    classes: list[np.ndarray], n_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    shares: list[list[np.ndarray]] = [[np.empty(0, dtype=np.int64)] for _ in range(n_clients)]
    for members in classes:
        members = rng.permutation(members)
        proportions = rng.dirichlet(np.full(n_clients, alpha))
        cuts = np.floor(np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
        for client, piece in enumerate(np.split(members, np.clip(cuts, 0, len(members)))):
            shares[client].append(piece)
    return [np.sort(np.concatenate(s)).astype(np.int64) for s in shares]


def partition_dirichlet(
    labels: Sequence[Hashable],
    n_clients: int,
    *,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skew split: each class is divided over the clients in proportions drawn from Dir(alpha).

    Small ``alpha`` (e.g. 0.1) gives clients dominated by few labels, large ``alpha`` (e.g. 100) is
    close to IID. Draws are repeated, continuing ``rng``'s stream, until every client holds at least
    ``min_size`` items; ``ValueError`` if that is impossible or ``max_tries`` draws all fail.
    """
    _check_int("n_clients", n_clients, 1)
    _check_int("min_size", min_size, 0)
    _check_int("max_tries", max_tries, 1)
    if not isinstance(alpha, (int, float, np.floating)) or not math.isfinite(alpha) or alpha <= 0:
        raise PartitionError(f"alpha must be a finite number > 0, got {alpha!r}")
    _check_rng(rng)
    labels = list(labels)
    n_items = len(labels)
    setting = f"n_items={n_items}, n_clients={n_clients}, alpha={alpha}, min_size={min_size}"
    if n_items < n_clients * min_size:
        raise PartitionError(
            f"cannot give every client {min_size} item(s): need n_items >= {n_clients * min_size} ({setting})"
        )
    codes: dict[Hashable, int] = {}
    label_codes = np.array([codes.setdefault(label, len(codes)) for label in labels], dtype=np.int64)
    classes = [np.flatnonzero(label_codes == code) for code in range(len(codes))]
    for _ in range(max_tries):
        parts = _split_by_dirichlet(classes, n_clients, float(alpha), rng)
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise PartitionError(
        f"no Dirichlet draw gave every client >= {min_size} item(s) in {max_tries} tries ({setting}); "
        "raise alpha or max_tries, or lower min_size or n_clients"
    )


def label_entropy(counts: Sequence[int] | np.ndarray) -> float:
    """Shannon entropy in bits of a label histogram (0 for an empty or single-label client)."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    if c.size == 0:
        return 0.0
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def partition_stats(parts: Sequence[np.ndarray], labels: Sequence[Hashable]) -> list[dict[str, Any]]:
    """Per client: ``client`` index, ``size``, ``labels`` histogram and label ``entropy`` (bits)."""
    labels = list(labels)
    stats = []
    for client, part in enumerate(parts):
        hist = dict(Counter(labels[int(i)] for i in part))
        stats.append(
            {
                "client": client,
                "size": len(part),
                "labels": hist,
                "entropy": label_entropy(list(hist.values())),
            }
        )
    return stats
