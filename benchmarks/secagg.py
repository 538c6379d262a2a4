"""Cost of secure aggregation (SecAgg/SecAgg+) against plain FedAvg of the same vectors.

Runs the real client and server state machines in one process (``crypto.secagg.run_local``;
every message is serialised, so byte counts are what a transport carries) for each
combination of clients ``n``, parameters ``d`` and dropout rate. Dropped clients disappear
after sharing their keys, before sending their masked input: the most expensive point for
the server, which must then rebuild their mask keys and remove their pairwise masks.

Per configuration it reports, as medians over the surviving clients:
  client ms   - one client's compute time for the whole protocol (quantisation included)
  server ms   - the server's compute time for the round (parsing, summing, unmasking)
  sent/client - bytes one client sends; plain FedAvg sends the float32 vector, 4d bytes
each also as a ratio to plain FedAvg (client: cast + serialise the float32 vector;
server: parse and numpy-sum the survivors' float32 vectors). Also the graph degree k, the
share threshold t, the bytes a client receives, and the largest error of the dequantised
sum against the float sum (bounded by survivors * quantisation step).

    python benchmarks/secagg.py                # n in {10, 50, 100}, d in {1e5, 1e6}, dropout 0/10/30 %
    python benchmarks/secagg.py --quick        # n in {10, 50}, d = 1e5, dropout 0/10 %
    python benchmarks/secagg.py --clients 100 --params 100000 --dropout 0.1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto.secagg import Stage, run_local  # noqa: E402
from crypto.secagg.quantize import quantization_step  # noqa: E402


def plain_fedavg(vectors: list[np.ndarray], survivors: tuple[int, ...]) -> tuple[float, float, int]:
    """Median client seconds, server seconds and bytes per client for FedAvg in the clear."""
    client_times, blobs = [], {}
    for i in survivors:
        t0 = time.perf_counter()
        blobs[i] = np.asarray(vectors[i], dtype=np.float32).tobytes()
        client_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    total = np.zeros(vectors[0].shape[0], dtype=np.float32)
    for i in survivors:
        total += np.frombuffer(blobs[i], dtype=np.float32)
    server = time.perf_counter() - t0
    return statistics.median(client_times), server, len(blobs[survivors[0]])


def run_one(n: int, d: int, dropout: float, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    vectors = list(rng.normal(0.0, args.scale, size=(n, d)).astype(np.float32))
    dropped = set(rng.choice(n, size=round(dropout * n), replace=False).tolist())
    threshold = n // 2 + 1
    t0 = time.perf_counter()
    result = run_local(
        vectors,
        threshold=threshold,
        drop={Stage.MASKED_INPUT: dropped},
        clip=args.clip,
        bits=args.bits,
        modulus_bits=args.modulus_bits,
        expected_dropout=max(dropout, 0.1),
        rng=rng,
    )
    wall = time.perf_counter() - t0
    survivors = result.survivors
    plain_client, plain_server, plain_bytes = plain_fedavg(vectors, survivors)
    exact = np.clip(np.asarray(vectors, dtype=np.float64)[list(survivors)], -args.clip, args.clip).sum(0)
    err = float(np.max(np.abs(result.sum - exact)))
    bound = len(survivors) * quantization_step(args.clip, args.bits)
    if err > bound:
        raise AssertionError(f"n={n} d={d}: error {err} exceeds the bound {bound}")
    client = statistics.median(result.client_seconds[i] for i in survivors)
    sent = statistics.median(result.bytes_sent[i] for i in survivors)
    received = statistics.median(result.bytes_received[i] for i in survivors)
    return {
        "n": n,
        "d": d,
        "dropout": dropout,
        "k": result.config.neighbours,
        "t": result.config.share_threshold,
        "client": client,
        "client_x": client / plain_client,
        "server": result.server_seconds,
        "server_x": result.server_seconds / plain_server,
        "sent": sent,
        "sent_x": sent / plain_bytes,
        "received": received,
        "err": err,
        "wall": wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--params", type=float, nargs="+", default=[1e5, 1e6])
    p.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    p.add_argument("--quick", action="store_true", help="n in {10, 50}, d = 1e5, dropout 0 and 10 %%")
    p.add_argument("--bits", type=int, default=16, help="quantisation bits per value (default 16)")
    p.add_argument("--modulus-bits", type=int, default=32, help="arithmetic modulo 2**k (default 32: uint32)")
    p.add_argument("--clip", type=float, default=0.05, help="clip range [-clip, clip] (default 0.05)")
    p.add_argument("--scale", type=float, default=0.01, help="std of the synthetic updates (default 0.01)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.params, args.dropout = [10, 50], [1e5], [0.0, 0.1]
    print(f"secagg benchmark: {os.cpu_count()} CPU(s), bits={args.bits}, modulus 2**{args.modulus_bits}", flush=True)
    header = (
        f"{'n':>4} {'d':>8} {'drop':>5} {'k':>3} {'t':>3} | {'client ms':>9} {'x plain':>8} | "
        f"{'server ms':>9} {'x plain':>8} | {'sent/client':>11} {'x 4d':>6} | {'recv KB':>8} | {'max err':>8}"
    )
    print(header)
    print("-" * len(header))
    for d in (int(x) for x in args.params):
        for n in args.clients:
            for dropout in args.dropout:
                r = run_one(n, d, dropout, args)
                print(
                    f"{r['n']:>4} {r['d']:>8} {r['dropout']:>5.0%} {r['k']:>3} {r['t']:>3} | "
                    f"{r['client'] * 1e3:>9.1f} {r['client_x']:>8.0f} | "
                    f"{r['server'] * 1e3:>9.1f} {r['server_x']:>8.0f} | "
                    f"{r['sent']:>11,.0f} {r['sent_x']:>6.3f} | {r['received'] / 1e3:>8.1f} | {r['err']:>8.1e}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
