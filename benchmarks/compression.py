"""Bytes per token crossing the cuts, and the loss change, for each activation compression.

One client (in this process) and a real server process over CURVE on 127.0.0.1 train the
same batches with fp32, fp16, bf16 and int8 (per-token scale) activations and gradients.
Reports bytes per token in each direction (whole messages, headers included) and the
mean |loss - loss_fp32| over the run, with the final loss.

    python benchmarks/compression.py --steps 8
"""

from __future__ import annotations

import argparse
import sys
import warnings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args(argv)
    from _netrun import client_step_metrics, make_config, scratch, start_server
    from transformers.utils import logging as hf_logging

    from splitfed.client.runtime import Client

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    results = {}
    for kind in ("fp32", "fp16", "bf16", "int8"):
        root = scratch()
        cfg = make_config(
            root,
            model={"name": args.model, "cut": [2, 28]},
            data={"clients": 1, "partition": "iid", "max_length": 128, "batch_size": 4, "eval_examples": 0},
            training={"rounds": 1, "local_steps": args.steps, "lr": 1e-3},
            transport={"compression": kind},
        )
        server = start_server(cfg, root)
        client = Client(cfg, 0)
        summary = client.run()
        server.wait(timeout=120)
        steps = client_step_metrics(cfg)
        tokens = sum(m["tokens"] for m in steps)
        results[kind] = {
            "losses": [m["loss"] for m in steps],
            "up": sum(m["bytes_out"] for m in steps) / tokens,
            "down": sum(m["bytes_in"] for m in steps) / tokens,
            "total_in": summary["bytes_in"],
            "tokens": tokens,
        }
        print(f"{kind}: done", flush=True)
    base = results["fp32"]["losses"]
    print(
        f"\n{args.model}, cut (2, 28), batch 4 x <=128, {args.steps} steps. Bytes per (non-padding) token per step, "
        "whole messages: up = activations + gradient sent by the client, down = what the server sent back"
    )
    print(
        f"{'compression':<12}{'up B/token':>11}{'down B/token':>13}{'vs fp32':>9}{'mean |dloss|':>14}{'final loss':>12}"
    )
    for kind, r in results.items():
        dloss = sum(abs(a - b) for a, b in zip(r["losses"], base, strict=True)) / len(base)
        ratio = r["up"] / results["fp32"]["up"]
        print(f"{kind:<12}{r['up']:>11.0f}{r['down']:>13.0f}{ratio:>9.2f}{dloss:>14.5f}{r['losses'][-1]:>12.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
