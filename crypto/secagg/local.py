"""Run the real client and server state machines in one process, without a network.

For tests and benchmarks: every message is serialised with :func:`encoding.encode` and parsed
back with :func:`encoding.decode`, so byte counts are those a transport would carry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from crypto import sign
from crypto.secagg.client import SecAggClient
from crypto.secagg.common import PROTOCOL_STAGES, SecAggAbort, Stage
from crypto.secagg.config import RoundConfig
from crypto.secagg.encoding import decode, encode
from crypto.secagg.quantize import QuantizeReport, check_capacity, dequantize_sum, quantize
from crypto.secagg.server import SecAggServer

__all__ = ["LocalResult", "run_local"]


@dataclass(frozen=True, eq=False)
class LocalResult:
    """Outcome of :func:`run_local`.

    ``sum`` is the dequantised sum of the survivors' inputs (float64); ``sum_mod`` the exact
    modular sum of their quantised inputs. ``survivors`` are the client indices whose inputs
    are included. ``report`` counts the clipped values among the survivors' inputs.
    ``bytes_sent`` / ``bytes_received`` and ``client_seconds`` are per client index;
    ``server_seconds`` is the server's total compute time (message parsing included).
    """

    sum: np.ndarray = field(repr=False)
    sum_mod: np.ndarray = field(repr=False)
    survivors: tuple[int, ...]
    report: QuantizeReport
    config: RoundConfig = field(repr=False)
    bytes_sent: dict[int, int] = field(repr=False)
    bytes_received: dict[int, int] = field(repr=False)
    client_seconds: dict[int, float] = field(repr=False)
    server_seconds: float = 0.0


def _check_drop(drop: Mapping[Stage, Collection[int]] | None, n: int) -> dict[Stage, frozenset[int]]:
    out: dict[Stage, frozenset[int]] = {}
    seen: set[int] = set()
    for stage, ids in (drop or {}).items():
        if stage not in PROTOCOL_STAGES:
            raise ValueError(f"drop keys must be one of {[s.name for s in PROTOCOL_STAGES]}, received {stage!r}")
        ids = frozenset(int(i) for i in ids)
        bad = sorted(i for i in ids if not 0 <= i < n)
        if bad:
            raise ValueError(f"drop[{stage.name}] names client indices {bad}, valid indices are 0..{n - 1}")
        twice = sorted(ids & seen)
        if twice:
            raise ValueError(f"client indices {twice} are dropped at more than one stage")
        seen |= ids
        out[stage] = ids
    return out


def run_local(
    vectors: Sequence[np.ndarray],
    *,
    threshold: int,
    drop: Mapping[Stage, Collection[int]] | None = None,
    clip: float = 1.0,
    bits: int = 16,
    modulus_bits: int = 32,
    neighbours: int | None = None,
    expected_dropout: float | None = None,
    rng: np.random.Generator | int | None = None,
    randbytes: Callable[[int], bytes] = os.urandom,
) -> LocalResult:
    """Securely aggregate ``vectors`` (one float array per client) with the real protocol, in process.

    ``drop`` maps a stage to the client indices that disappear in it: a client dropped at
    ``Stage.SHARE_KEYS`` advertised its keys but never sends its shares, one dropped at
    ``Stage.UNMASK`` sent its masked input but never answers the unmask request, and so on.
    ``clip``, ``bits`` and ``modulus_bits`` are the quantisation parameters
    (:mod:`crypto.secagg.quantize`); ``neighbours`` the graph degree (default from
    :func:`~crypto.secagg.config.default_neighbours` for ``expected_dropout``, which defaults to
    the dropped fraction, at least 0.1). ``rng`` (a ``numpy`` Generator or seed) draws the
    stochastic rounding, client by client in index order; ``randbytes`` all key material.
    Raises :class:`SecAggAbort` if the round cannot finish.
    """
    n = len(vectors)
    if n < 2:
        raise ValueError(f"need at least 2 clients, received {n}")
    arrays = [np.asarray(v) for v in vectors]
    shape = arrays[0].shape
    if len(shape) != 1 or any(a.shape != shape for a in arrays):
        shapes = sorted({a.shape for a in arrays})
        raise ValueError(f"vectors must be 1-D arrays of one length, received shapes {shapes}")
    check_capacity(n, bits=bits, modulus_bits=modulus_bits)
    drops = _check_drop(drop, n)
    if expected_dropout is None:
        expected_dropout = max(0.1, sum(len(v) for v in drops.values()) / n)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    config = RoundConfig.create(
        range(n),
        threshold=threshold,
        vector_length=int(shape[0]),
        modulus_bits=modulus_bits,
        neighbours=neighbours,
        expected_dropout=min(expected_dropout, 0.99),
        randbytes=randbytes,
    )
    identities = [sign.generate_signing_key_pair(randbytes) for _ in range(n)]
    identity_keys = {i: k.public for i, k in enumerate(identities)}

    sent = dict.fromkeys(range(n), 0)
    received = dict.fromkeys(range(n), 0)
    seconds = dict.fromkeys(range(n), 0.0)
    server_seconds = 0.0
    clients: dict[int, SecAggClient] = {}
    reports: dict[int, QuantizeReport] = {}
    for i, a in enumerate(arrays):
        start = time.perf_counter()
        ints, reports[i] = quantize(a, clip=clip, bits=bits, modulus_bits=modulus_bits, rng=gen)
        clients[i] = SecAggClient(
            config, i, signing_key=identities[i].private, identity_keys=identity_keys, vector=ints, randbytes=randbytes
        )
        seconds[i] += time.perf_counter() - start
    start = time.perf_counter()
    server = SecAggServer(config, identity_keys=identity_keys)
    server_seconds += time.perf_counter() - start

    def deliver(i: int, make: Callable[[], object]) -> None:
        """Run client ``i``'s step and hand its serialised reply to the server; an aborting client drops out."""
        nonlocal server_seconds
        t0 = time.perf_counter()
        try:
            data = encode(make())
        except SecAggAbort:
            clients.pop(i)
            return
        finally:
            seconds[i] += time.perf_counter() - t0
        sent[i] += len(data)
        t0 = time.perf_counter()
        server.receive(decode(data))
        server_seconds += time.perf_counter() - t0

    outgoing: dict[int, bytes] = {}
    for stage in PROTOCOL_STAGES:
        for i in drops.get(stage, ()):
            clients.pop(i, None)
        if stage is Stage.ADVERTISE_KEYS:
            for i in sorted(clients):
                deliver(i, clients[i].advertise)
        else:
            for i, payload in sorted(outgoing.items()):
                received[i] += len(payload)
                if i in clients:
                    deliver(i, lambda c=clients[i], p=payload: c.handle(decode(p)))
        t0 = time.perf_counter()
        if stage is Stage.UNMASK:
            result = server.finish()
        else:
            outgoing = {i: encode(m) for i, m in server.finish_stage().items()}
        server_seconds += time.perf_counter() - t0

    survivors = result.survivors
    total = dequantize_sum(result.sum_mod, len(survivors), clip=clip, bits=bits, modulus_bits=modulus_bits)
    report = QuantizeReport(0, 0)
    for i in survivors:
        report = report + reports[i]
    return LocalResult(
        sum=total,
        sum_mod=result.sum_mod,
        survivors=survivors,
        report=report,
        config=config,
        bytes_sent=sent,
        bytes_received=received,
        client_seconds=seconds,
        server_seconds=server_seconds,
    )
