"""Tokens/s of split (in-process) vs unsplit LoRA training of SmolLM2-135M.

Both runs use the same LoRA adapters (rank 8 on q/v of every block), the same batches
(batch 4 x 128 tokens of real drug reviews) and AdamW.  Split and monolithic repetitions
are interleaved so machine drift hits both alike.  Prints per-repetition figures, the
medians and the ratio split / monolithic (expect >= 0.95).

    python benchmarks/split_vs_monolithic.py --reps 5 --steps 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings

from _data import add_step_options, full_length_batches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(p, warmup=2)
    p.add_argument("--json", type=str, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from splitfed.models import LoraSpec, SplitLoraConfig, apply_lora, load_pretrained, split_model
    from splitfed.training import OptimConfig, ReferenceTrainer, SplitTrainer

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(0)
    pre = load_pretrained(args.model)
    base = copy.deepcopy(pre.model)
    split = split_model(pre.model, tuple(args.cut))
    apply_lora(split, SplitLoraConfig(*(LoraSpec(r=8, alpha=16),) * 3))
    optim = OptimConfig(lr=1e-4)
    trainers = {"split": SplitTrainer(split, optim), "monolithic": ReferenceTrainer.matching(base, split, optim)}

    try:
        data = full_length_batches(
            pre.tokenizer, batch_size=args.batch_size, seq_len=args.seq_len, count=args.warmup + args.steps
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    warm, timed = data[: args.warmup], data[args.warmup :]

    for trainer in trainers.values():
        for batch in warm:
            trainer.step(batch)
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for rep in range(args.reps):
        order = list(trainers) if rep % 2 == 0 else list(reversed(trainers))
        for name in order:
            trainer = trainers[name]
            t = time.perf_counter()
            tokens = sum(trainer.step(batch).tokens for batch in timed)
            rates[name].append(tokens / (time.perf_counter() - t))
        print(
            f"rep {rep + 1}/{args.reps}: " + "  ".join(f"{n} {r[-1]:7.1f} tok/s" for n, r in rates.items()), flush=True
        )

    med = {name: statistics.median(r) for name, r in rates.items()}
    ratio = med["split"] / med["monolithic"]
    print(
        f"\n{args.model}, cut {tuple(args.cut)}, batch {args.batch_size} x {args.seq_len}, LoRA r=8 q/v, "
        f"{args.reps} reps x {args.steps} steps, torch threads {torch.get_num_threads()}"
    )
    print(f"{'mode':<12}{'median tok/s':>14}{'s/step':>10}")
    for name, m in med.items():
        print(f"{name:<12}{m:>14.1f}{args.batch_size * args.seq_len / m:>10.2f}")
    print(f"ratio split / monolithic: {ratio:.3f}  (target >= 0.95)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rates": rates, "median": med, "ratio": ratio}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
