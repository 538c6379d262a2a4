"""The neighbour graph of SecAgg+: which clients exchange keys, shares and pairwise masks.

Small cohorts use the complete graph (every client masks against every other, as in
Bonawitz et al. 2017). Large cohorts use a *random Harary graph* (Bell et al. 2020): the
clients are put on a ring in a pseudo-random order and each is linked to the ``degree / 2``
clients on either side, so every client has exactly ``degree`` neighbours. The order is a
Fisher-Yates shuffle driven by the ChaCha20 PRG from a public 32-byte seed, so clients and
server compute the same graph from the round configuration, on any platform.
"""

from __future__ import annotations

from collections.abc import Sequence

from crypto import prg

__all__ = ["harary_graph"]


def _shuffled(ids: Sequence[int], seed: bytes) -> list[int]:
    order = list(ids)
    draws = prg.expand(seed, len(order), bits=64)
    for i in range(len(order) - 1, 0, -1):
        j = int(draws[i]) % (i + 1)  # bias < (i + 1) / 2**64: negligible
        order[i], order[j] = order[j], order[i]
    return order


def harary_graph(ids: Sequence[int], *, degree: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Map every id to its neighbours (never itself) in the random Harary graph of ``degree``.

    ``degree == len(ids) - 1`` gives the complete graph; otherwise ``degree`` must be even
    and at least 2. The graph is undirected: ``v in g[u]`` iff ``u in g[v]``.
    """
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("client ids must be distinct")
    if degree == n - 1:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    if not 2 <= degree < n - 1 or degree % 2:
        raise ValueError(f"degree must be n - 1 = {n - 1} or an even number in [2, {n - 2}], received {degree}")
    ring = _shuffled(sorted(ids), seed)
    half = degree // 2
    return {u: frozenset(ring[(p + off) % n] for off in range(-half, half + 1) if off) for p, u in enumerate(ring)}
