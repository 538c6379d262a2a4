"""Server throughput with 1, 2 and 4 concurrent client processes (SmolLM2-135M, CURVE, loopback).

Every client is its own process; each trains `--steps` steps of batch 4 x <=128 tokens.
Throughput is all clients' tokens divided by the wall time from the first step's start to
the last step's end, as a median over `--reps` runs, and as a ratio to one client.
Each client count runs without and with cross-client batching (`server.batch_clients`:
waiting clients' forwards go through the trunk as one batch).  On these 2-core machines
every process shares the same two cores, so this measures the protocol's overhead and
scheduling, not what a GPU server gains from bigger batches.

    python benchmarks/server_throughput.py --clients 1 2 4 --steps 4 --reps 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--reps", type=int, default=2)
    args = p.parse_args(argv)
    from _netrun import client_step_metrics, make_config, scratch, start_server

    from splitfed.models import prepare

    prepare(args.model)
    results: dict[tuple[int, bool], list[float]] = {}
    for n, batching in [(n, b) for n in args.clients for b in (False, True) if n > 1 or not b]:
        for _ in range(args.reps):
            root = scratch()
            cfg = make_config(
                root,
                model={"name": args.model, "cut": [2, 28]},
                data={"clients": n, "partition": "iid", "max_length": 128, "batch_size": 4, "eval_examples": 0},
                training={"rounds": 1, "local_steps": args.steps, "lr": 1e-4},
                server={"batch_clients": batching},
            )
            server = start_server(cfg, root)
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "splitfed.cli.main",
                        "client",
                        "--config",
                        str(root / "run.toml"),
                        "--client-id",
                        str(k),
                        "--no-progress",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for k in range(n)
            ]
            if any(pr.wait(timeout=900) != 0 for pr in procs) or server.wait(timeout=120) != 0:
                print(f"{n} clients: a process failed (see {root})", file=sys.stderr)
                return 1
            steps = [m for k in range(n) for m in client_step_metrics(cfg, k)]
            start = min(m["time"] - m["wall_s"] for m in steps)
            end = max(m["time"] for m in steps)
            results.setdefault((n, batching), []).append(sum(m["tokens"] for m in steps) / (end - start))
        runs = " ".join(f"{r:.0f}" for r in results[(n, batching)])
        print(f"{n} client(s), batching {'on' if batching else 'off'}: {runs} tok/s", flush=True)
    base = statistics.median(results[(args.clients[0], False)])
    print(f"\n{args.model}, cut (2, 28), batch 4 x <=128, {args.steps} steps per client, {args.reps} reps")
    print(f"{'clients':>8}{'batching':>10}{'median tok/s':>14}{'vs 1 client':>13}")
    for (n, batching), r in results.items():
        med = statistics.median(r)
        print(f"{n:>8}{'on' if batching else 'off':>10}{med:>14.1f}{med / base:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
