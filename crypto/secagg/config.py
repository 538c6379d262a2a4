"""Round parameters that the server and every client must agree on, and how they are chosen.

Parameters
----------
``threshold`` (T)
    The fewest clients that must remain at every stage; fewer and the round aborts. It must
    be a strict majority of the cohort (``T > n / 2``): then, since an honest client reveals
    for each peer either its self-mask share or its key share but never both, no server can
    collect enough of both kinds to unmask an individual input.
``neighbours`` (k)
    Each client's degree in the neighbour graph. ``n - 1`` is all-to-all (SecAgg); smaller
    even values give SecAgg+ with a random Harary graph. :func:`default_neighbours` keeps
    all-to-all up to :data:`DENSE_MAX` clients and otherwise picks the smallest even
    ``k >= 2 * ceil(log2 n)`` (logarithmic, as in Bell et al. 2020) for which, under the
    expected dropout rate, the chance that any neighbourhood falls below its share threshold
    is at most ``failure`` (binomial tail, union bound over the clients), and the chance that
    a fraction ``corrupt`` of colluding clients holds a threshold of shares in some
    neighbourhood is at most ``failure`` too.
``share_threshold`` (t, derived)
    The Shamir threshold inside each neighbourhood of ``k + 1`` share holders (the client
    and its neighbours): ``t = max(floor((k + 1) / 2) + 1, ceil(T * (k + 1) / n))``, capped at
    ``k + 1``. For the complete graph ``t = T``. Each neighbourhood keeps a strict majority
    and the cohort-wide fraction ``T / n``.
``modulus_bits``
    Inputs and masks are integers modulo ``2**modulus_bits``; up to 32 they travel as uint32.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from crypto.secagg.common import ROUND_ID_SIZE
from crypto.secagg.graph import harary_graph

__all__ = ["DENSE_MAX", "MAX_CLIENTS", "RoundConfig", "default_neighbours", "share_threshold"]

DENSE_MAX = 32
"""Cohorts up to this size use the complete graph by default."""
MAX_CLIENTS = 0xFFFF
GRAPH_SEED_SIZE = 32


def share_threshold(n: int, threshold: int, neighbours: int) -> int:
    """Shamir threshold among the ``neighbours + 1`` holders of a client's shares (see the module docstring)."""
    holders = neighbours + 1
    return min(holders, max(holders // 2 + 1, -(-threshold * holders // n)))


def _binomial_tail(k: int, p: float, lo: int, hi: int) -> float:
    """P[lo <= Binomial(k, p) <= hi]."""
    if p <= 0.0:
        return 1.0 if lo <= 0 <= hi else 0.0
    if p >= 1.0:
        return 1.0 if lo <= k <= hi else 0.0
    total = 0.0
    for i in range(max(lo, 0), min(hi, k) + 1):
        log_term = math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1)
        total += math.exp(log_term + i * math.log(p) + (k - i) * math.log1p(-p))
    return total


def default_neighbours(
    n: int, threshold: int, *, dropout: float = 0.1, corrupt: float = 0.0, failure: float = 1e-6
) -> int:
    """Pick the graph degree for ``n`` clients (see the module docstring); ``n - 1`` means all-to-all."""
    if not 0.0 <= dropout < 1.0 or not 0.0 <= corrupt < 0.5:
        raise ValueError(f"need 0 <= dropout < 1 and 0 <= corrupt < 0.5, received dropout={dropout}, corrupt={corrupt}")
    if n <= DENSE_MAX:
        return n - 1
    k = max(2, 2 * math.ceil(math.log2(n)))
    while k < n - 1:
        t = share_threshold(n, threshold, k)
        # a surviving client plus Binomial(k, 1 - dropout) surviving neighbours must reach t
        starved = _binomial_tail(k, 1.0 - dropout, 0, t - 2)
        # colluders must not hold t of the k + 1 shares of an honest client's secrets
        captured = _binomial_tail(k, corrupt, t, k)
        if n * starved <= failure and n * captured <= failure:
            return k
        k += 2
    return n - 1


@dataclass(frozen=True)
class RoundConfig:
    """Everything both sides must agree on for one aggregation round. Build it with :meth:`create`.

    ``client_ids`` are distinct integers in ``[0, 2**32)``; ``vector_length`` is the number of
    integers each client contributes; ``graph_seed`` (public) fixes the neighbour graph.
    The server sends this configuration to the clients (``encoding.encode`` serialises it).
    """

    round_id: bytes
    client_ids: tuple[int, ...]
    threshold: int
    vector_length: int
    modulus_bits: int
    neighbours: int
    graph_seed: bytes

    def __post_init__(self) -> None:
        ids = self.client_ids
        n = len(ids)
        if not isinstance(self.round_id, bytes) or len(self.round_id) != ROUND_ID_SIZE:
            raise ValueError(f"round_id must be {ROUND_ID_SIZE} bytes, received {self.round_id!r}")
        if not isinstance(self.graph_seed, bytes) or len(self.graph_seed) != GRAPH_SEED_SIZE:
            raise ValueError(f"graph_seed must be {GRAPH_SEED_SIZE} bytes, received {len(self.graph_seed)}")
        if not isinstance(ids, tuple) or not all(isinstance(i, int) and 0 <= i < 2**32 for i in ids):
            raise ValueError("client_ids must be a tuple of integers in [0, 2**32)")
        if list(ids) != sorted(set(ids)):
            raise ValueError("client_ids must be distinct and sorted")
        if not 2 <= n <= MAX_CLIENTS:
            raise ValueError(f"need between 2 and {MAX_CLIENTS} clients, received {n}")
        if not isinstance(self.threshold, int) or not n // 2 + 1 <= self.threshold <= n:
            raise ValueError(
                f"threshold must be a strict majority of the {n} clients, in [{n // 2 + 1}, {n}], "
                f"received {self.threshold!r}"
            )
        if not isinstance(self.vector_length, int) or not 1 <= self.vector_length < 2**32:
            raise ValueError(f"vector_length must be in [1, 2**32), received {self.vector_length!r}")
        if not isinstance(self.modulus_bits, int) or not 1 <= self.modulus_bits <= 64:
            raise ValueError(f"modulus_bits must be in [1, 64], received {self.modulus_bits!r}")
        k = self.neighbours
        if not isinstance(k, int) or not (k == n - 1 or (2 <= k < n - 1 and k % 2 == 0)):
            raise ValueError(f"neighbours must be n - 1 = {n - 1} or an even number in [2, {n - 2}], received {k!r}")

    @classmethod
    def create(
        cls,
        client_ids: Sequence[int],
        *,
        threshold: int,
        vector_length: int,
        modulus_bits: int = 32,
        neighbours: int | None = None,
        expected_dropout: float = 0.1,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> RoundConfig:
        """A configuration with a fresh random round id and graph seed.

        ``neighbours=None`` picks :func:`default_neighbours` for ``expected_dropout``.
        """
        ids = tuple(sorted(int(i) for i in client_ids))
        if neighbours is None:
            neighbours = default_neighbours(len(ids), threshold, dropout=expected_dropout)
        return cls(
            round_id=bytes(randbytes(ROUND_ID_SIZE)),
            client_ids=ids,
            threshold=threshold,
            vector_length=vector_length,
            modulus_bits=modulus_bits,
            neighbours=neighbours,
            graph_seed=bytes(randbytes(GRAPH_SEED_SIZE)),
        )

    @property
    def dense(self) -> bool:
        """True for the complete graph (every client is every other's neighbour)."""
        return self.neighbours == len(self.client_ids) - 1

    @property
    def share_threshold(self) -> int:
        """Shamir threshold inside each neighbourhood (equals ``threshold`` for the complete graph)."""
        return share_threshold(len(self.client_ids), self.threshold, self.neighbours)

    @cached_property
    def graph(self) -> dict[int, frozenset[int]]:
        """Client id -> its neighbours (the client itself excluded)."""
        return harary_graph(self.client_ids, degree=self.neighbours, seed=self.graph_seed)
