"""Cost of scoring one CKKS-encrypted query against a party's plaintext vector store (crypto.he).

One query of dimension ``--dim`` (384) against ``rows`` unit vectors at one party, for each
size in ``--sizes``. Methods:

  packed   - crypto.he.EncryptedScorer: diagonal method, baby-step/giant-step rotations through
             tenseal.sealapi, one ciphertext per block of up to 3713 rows, plaintext diagonals
             encoded once (setup, reported apart)
  matmul   - TenSEAL CKKSVector.matmul (enc_q @ M.T) in chunks of 3713 columns (a larger output
             wraps around the slots and is wrong); skipped where its estimated time per query
             exceeds --matmul-budget seconds
  dot      - TenSEAL CKKSVector.dot per row, run on --dot-rows rows and EXTRAPOLATED linearly
  numpy    - plaintext M @ q

"party ms" is the data party's median time per query over ``--reps`` repetitions, from query
bytes in to response bytes out (parse, compute, serialise). The querier's encrypt and decrypt
times for packed are reported too. "request" / "response" are the bytes one query sends to and
gets back from one party. TenSEAL may use several threads; sealapi calls are single-threaded.

    python benchmarks/he_search.py                    # sizes 1000 10000 50000, 5 reps
    python benchmarks/he_search.py --quick            # sizes 1000 10000, 3 reps, 20 dot rows
    python benchmarks/he_search.py --sizes 1000 --reps 3
    python benchmarks/he_search.py --sizes 50000 --baby-steps 64   # sqrt(blocks * dim) suits big stores
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tenseal as ts

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto.he import EncryptedScorer, PublicContext, SecretContext, decrypt_scores, encrypt_query  # noqa: E402


def median_seconds(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    """Median wall time of ``reps`` calls and the last result."""
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class TenSEALBaseline:
    """TenSEAL's own API with its default Galois keys (what ``enc.matmul`` / ``enc.dot`` need)."""

    def __init__(self, dim: int) -> None:
        self.secret = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
        self.secret.global_scale = 2**40
        self.secret.generate_galois_keys()
        public = self.secret.copy()
        public.make_context_public()
        self.public_bytes = public.serialize(save_galois_keys=True, save_relin_keys=True)
        self.public = ts.context_from(self.public_bytes)
        self.chunk = self.secret.seal_context().data.first_context_data().parms().poly_modulus_degree() // 2 - dim + 1

    def encrypt(self, query: np.ndarray) -> bytes:
        return ts.ckks_vector(self.secret, query.tolist()).serialize()

    def matmul(self, request: bytes, chunks: list[ts.PlainTensor]) -> list[bytes]:
        enc = ts.ckks_vector_from(self.public, request)
        return [enc.matmul(chunk).serialize() for chunk in chunks]

    def dot(self, request: bytes, rows: list[list[float]]) -> list[bytes]:
        enc = ts.ckks_vector_from(self.public, request)
        return [enc.dot(row).serialize() for row in rows]

    def decrypt(self, responses: list[bytes]) -> np.ndarray:
        return np.concatenate([ts.ckks_vector_from(self.secret, r).decrypt() for r in responses])


def run_size(rows: int, args: argparse.Namespace, secret: SecretContext, base: TenSEALBaseline) -> list[dict]:
    rng = np.random.default_rng(args.seed + rows)
    matrix, query = unit_rows(rng, rows, args.dim), unit_rows(rng, 1, args.dim)[0]
    truth = matrix @ query
    results = []

    plain_s, _ = median_seconds(lambda: matrix @ query, max(args.reps, 20))
    results.append(dict(method="numpy", seconds=plain_s, request=4 * args.dim, response=4 * rows, err=0.0, note=""))

    t0 = time.perf_counter()
    scorer = EncryptedScorer(PublicContext.from_bytes(secret.public_bytes), matrix)
    setup = time.perf_counter() - t0
    enc_s, request = median_seconds(lambda: encrypt_query(secret, query), args.reps)
    party_s, response = median_seconds(lambda: scorer.score(request), args.reps)
    dec_s, scores = median_seconds(lambda: decrypt_scores(secret, response, rows), args.reps)
    note = f"{scorer.n_blocks} blocks; setup {setup:.1f} s; querier enc {1e3 * enc_s:.0f} ms + dec {1e3 * dec_s:.0f} ms"
    results.append(
        dict(
            method="packed",
            seconds=party_s,
            request=len(request),
            response=sum(map(len, response)),
            err=float(np.abs(scores - truth).max()),
            note=note,
        )
    )

    ts_request = base.encrypt(query)
    chunks = [ts.plain_tensor(matrix[i : i + base.chunk].T) for i in range(0, rows, base.chunk)]
    estimate = len(chunks) * args.matmul_chunk_s
    if estimate <= args.matmul_budget:
        reps = min(args.reps, 3)
        mm_s, mm_out = median_seconds(lambda: base.matmul(ts_request, chunks), reps)
        args.matmul_chunk_s = mm_s / len(chunks)
        err = float(np.abs(base.decrypt(mm_out) - truth).max())
        note = f"{len(chunks)} chunks of <= {base.chunk} columns; {reps} reps"
        sizes = dict(request=len(ts_request), response=sum(map(len, mm_out)))
        results.append(dict(method="matmul", seconds=mm_s, err=err, note=note, **sizes))
    else:
        note = f"SKIPPED: estimated {estimate:.0f} s per query > --matmul-budget {args.matmul_budget:.0f} s"
        results.append(dict(method="matmul", seconds=None, request=None, response=None, err=None, note=note))

    sample = min(rows, args.dot_rows)
    dot_rows = matrix[:sample].tolist()
    dot_s, dot_out = median_seconds(lambda: base.dot(ts_request, dot_rows), min(args.reps, 3))
    err = float(np.abs(base.decrypt(dot_out) - truth[:sample]).max())
    scale = rows / sample
    note = f"EXTRAPOLATED x{scale:.0f} from {sample} rows" if sample < rows else f"measured on {rows} rows"
    results.append(
        dict(
            method="dot",
            seconds=dot_s * scale,
            request=len(ts_request),
            response=round(sum(map(len, dot_out)) * scale),
            err=err,
            note=note,
        )
    )
    return results


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def print_table(rows: int, dim: int, results: list[dict]) -> None:
    by = {r["method"]: r for r in results}
    plain, packed = by["numpy"]["seconds"], by["packed"]["seconds"]
    print(f"\n{rows} rows x {dim} dims")
    head = ("method", "party ms", "x numpy", "x packed", "request", "response", "max err")
    print("  {:<7} {:>10} {:>9} {:>9} {:>9} {:>10} {:>8}  note".format(*head))
    for r in results:
        s = r["seconds"]
        ms = "-" if s is None else f"{1e3 * s:.1f}"
        vs_plain = "-" if s is None else f"{s / plain:.0f}"
        vs_packed = "-" if s is None else f"{s / packed:.1f}"
        err = "-" if r["err"] is None else f"{r['err']:.0e}"
        print(
            f"  {r['method']:<7} {ms:>10} {vs_plain:>9} {vs_packed:>9} {fmt_bytes(r['request']):>9} "
            f"{fmt_bytes(r['response']):>10} {err:>8}  {r['note']}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="store sizes (default 1000 10000 50000)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per timing (default 5; quick 3)")
    p.add_argument("--quick", action="store_true", help="sizes 1000 10000, 3 reps, 20 dot rows")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--dot-rows", type=int, default=None, help="rows actually run with enc.dot (default 100; quick 20)")
    p.add_argument("--matmul-budget", type=float, default=60.0, help="skip enc.matmul above this many s per query")
    p.add_argument("--baby-steps", type=int, default=None, help="packed layout baby steps (default ceil(sqrt(dim)))")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.sizes = args.sizes or ([1000, 10000] if args.quick else [1000, 10000, 50000])
    args.reps = args.reps or (3 if args.quick else 5)
    args.dot_rows = args.dot_rows or (20 if args.quick else 100)
    args.matmul_chunk_s = 0.0  # learnt from the first run; sizes run in ascending order
    args.sizes = sorted(args.sizes)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    secret = SecretContext.create(dim=args.dim, baby_steps=args.baby_steps)
    base = TenSEALBaseline(args.dim)
    print(f"crypto.he search benchmark: N=8192, coeff (60,40,40,60), scale 2^40, {os.cpu_count()} CPUs")
    p = secret.params
    print(f"  public context: packed {fmt_bytes(len(secret.public_bytes))} (Galois steps {p.rotation_steps})")
    print(f"                  TenSEAL default Galois keys {fmt_bytes(len(base.public_bytes))} (matmul, dot)")
    print(f"  layout: {p.block_rows} rows per ciphertext, {p.baby_steps} baby x {p.giant_steps} giant steps")
    for rows in args.sizes:
        print_table(rows, args.dim, run_size(rows, args, secret, base))


if __name__ == "__main__":
    main()
