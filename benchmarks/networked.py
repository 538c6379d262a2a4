"""Networked (CURVE, loopback) vs in-process split vs monolithic LoRA training: tokens/s.

SmolLM2-135M cut at (2, 28), LoRA r=8 on q/v of every part, batch 4 x 128 tokens of real
drug reviews.  The networked run is a real server process and a client in this process,
talking over ZeroMQ with CURVE on 127.0.0.1.  All three train on the same batches; each
repetition is one round of `--steps` steps.  Prints medians and the ratios
networked / in-process (expect >= 0.9) and in-process / monolithic.

    python benchmarks/networked.py --reps 5 --steps 4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="steps per repetition")
    p.add_argument("--compression", default="fp32")
    args = p.parse_args(argv)

    import torch
    from _netrun import client_step_metrics, make_config, scratch, start_server
    from transformers.utils import logging as hf_logging

    from splitfed.client.data import client_examples, pad_id, round_batches
    from splitfed.client.runtime import Client
    from splitfed.models import apply_lora, load_pretrained, split_model
    from splitfed.training import OptimConfig, ReferenceTrainer, SplitTrainer

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    root = scratch()
    cfg = make_config(
        root,
        model={"name": args.model, "cut": [2, 28]},
        data={"clients": 1, "partition": "iid", "max_length": 128, "batch_size": 4, "eval_examples": 0},
        training={"rounds": args.reps + 1, "local_steps": args.steps, "lr": 1e-4},
        transport={"compression": args.compression},
    )
    # networked: round 0 is warm-up
    server = start_server(cfg, root)
    Client(cfg, 0).run()
    server.wait(timeout=120)
    steps = client_step_metrics(cfg)
    net = []
    for rnd in range(1, args.reps + 1):
        mine = [m for m in steps if m["round"] == rnd]
        net.append(sum(m["tokens"] for m in mine) / sum(m["wall_s"] for m in mine))

    # in-process split and monolithic on the same batches
    pre = load_pretrained(args.model)
    base = copy.deepcopy(pre.model)
    split = split_model(pre.model, (2, 28))
    apply_lora(split, cfg.lora.to_split_lora(), seed=cfg.run.seed)
    optim = OptimConfig(lr=1e-4)
    trainers = {"in-process": SplitTrainer(split, optim), "monolithic": ReferenceTrainer.matching(base, split, optim)}
    examples = client_examples(cfg, 0, pre.tokenizer)
    rates = {name: [] for name in trainers}
    for rnd in range(args.reps + 1):
        batches = round_batches(cfg, examples, 0, rnd, pad_id(pre.tokenizer))
        for name, trainer in trainers.items():
            t, tokens = time.perf_counter(), 0
            for b in batches:
                tokens += trainer.step(b).tokens
            if rnd > 0:
                rates[name].append(tokens / (time.perf_counter() - t))
    rates = {"networked": net, **rates}
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"{args.model}, cut (2, 28), batch 4 x <=128 tokens, {args.reps} reps x {args.steps} steps, "
        f"compression {args.compression}, torch threads {torch.get_num_threads()}"
    )
    for k, v in rates.items():
        print(f"{k:<11} median {med[k]:7.1f} tok/s   reps: " + " ".join(f"{x:.0f}" for x in v))
    print(f"ratio networked / in-process: {med['networked'] / med['in-process']:.3f}  (target >= 0.9)")
    print(f"ratio in-process / monolithic: {med['in-process'] / med['monolithic']:.3f}")
    print(f"ratio networked / monolithic: {med['networked'] / med['monolithic']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
