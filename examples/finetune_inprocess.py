"""Split LoRA fine-tuning of SmolLM2-135M on drugs.com patient reviews, in one process.

The model is cut into a client Bottom (embeddings + first blocks), a server Trunk (middle
blocks) and a client Top (last blocks + norm + head).  Activations and their gradients are
handed across the two cuts in memory exactly as the networked runtimes send them.  Reports
held-out perplexity of the public base model and after training (warning when the fine-tuned
model does not beat the base), exports one merged PEFT adapter, and checks that the
exported adapter reproduces the split model.

    python examples/finetune_inprocess.py --steps 60
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from splitfed.cli.options import add_cut_option


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="named model (smollm2-135m, tiny-llama, tiny-gpt2)")
    add_cut_option(p)
    p.add_argument("--steps", type=int, default=60, help="training steps (default: 60)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (default: 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank on every part (default: 8)")
    p.add_argument("--eval-examples", type=int, default=48, help="held-out reviews for perplexity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/demo-inprocess"), help="output directory")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.eval_examples < 1:
        p.error("--steps, --batch-size and --eval-examples must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import warnings

    import numpy as np
    import torch
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from splitfed.data import batches, load_drug_reviews, tokenize_examples
    from splitfed.models import (
        LoraSpec,
        PartAdapter,
        SplitLoraConfig,
        apply_lora,
        export_adapter,
        load_pretrained,
        position_ids_from_mask,
        split_model,
    )
    from splitfed.models.lora import adapters_disabled
    from splitfed.training import OptimConfig, SplitTrainer, evaluate
    from splitfed.utility import Utility

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation chatter from transformers
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    print(f"loading {args.model} (first run converts it into the cache, ~20 s) ...", flush=True)
    pre = load_pretrained(args.model)
    tok = pre.tokenizer
    split = split_model(pre.model, tuple(args.cut))
    spec = LoraSpec(r=args.rank, alpha=2.0 * args.rank)
    adapted = apply_lora(split, SplitLoraConfig(bottom=spec, trunk=spec, top=spec), seed=args.seed)
    a, b = split.cut
    n = split.layout.num_layers
    print(
        f"cut {split.layout.architecture} at ({a}, {b}): client bottom = embeddings + layers [0,{a}), "
        f"server trunk = [{a},{b}), client top = [{b},{n}) + norm + head"
    )
    print("LoRA modules per part: " + ", ".join(f"{r} {len(m)}" for r, m in adapted.items()))

    train = tokenize_examples(load_drug_reviews("train"), tok, max_length=args.max_length)
    test = tokenize_examples(load_drug_reviews("test")[: args.eval_examples], tok, max_length=args.max_length)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eval_batches = list(batches(test, 8, pad_token_id=pad))
    print(
        f"data: {len(train)} training reviews, {len(test)} held-out reviews "
        f"({sum(b['attention_mask'].sum().item() for b in eval_batches)} held-out tokens)"
    )

    def split_logits(ids, mask):
        return split(ids, mask)

    split.eval()
    with adapters_disabled(*split.parts.values()):  # every LoRA layer off: the public base model
        before = evaluate(split_logits, eval_batches)
    print(f"held-out perplexity of the public base model: {before.perplexity:.2f}")

    trainer = SplitTrainer(split, OptimConfig(lr=args.lr))
    stream = _forever(lambda: batches(train, args.batch_size, rng=rng, pad_token_id=pad, drop_last=True))
    tokens, losses = 0, []
    t_train = time.perf_counter()
    with tqdm(range(args.steps), desc="split training", unit="step", file=sys.stdout, mininterval=1.0) as bar:
        for _ in bar:
            res = trainer.step(next(stream))
            tokens += res.tokens
            losses.append(res.loss)
            bar.set_postfix(loss=f"{res.loss:.3f}", tok_s=f"{tokens / (time.perf_counter() - t_train):.0f}")
    train_s = time.perf_counter() - t_train

    split.eval()
    after = evaluate(split_logits, eval_batches)
    utility = Utility(base_ppl=before.perplexity, tuned_ppl=after.perplexity)
    print(
        f"held-out perplexity after:  {after.perplexity:.2f}  (public base model {before.perplexity:.2f}, "
        f"{100 * (1 - after.perplexity / before.perplexity):.1f}% lower)"
    )
    if utility.warning():
        print(utility.warning())
    print(
        f"train loss: first 10 steps {np.mean(losses[:10]):.3f} -> last 10 steps {np.mean(losses[-10:]):.3f}; "
        f"{tokens / train_s:.0f} tokens/s"
    )

    out = export_adapter(
        args.out / "adapter",
        [PartAdapter.of(p) for p in split.parts.values()],
        model_type=split.layout.model_type,
        base_model_name_or_path=str(pre.path),
        metadata={
            "cut": split.cut,
            "steps": args.steps,
            "perplexity_before": before.perplexity,  # the public base model's
            "perplexity_after": after.perplexity,
        },
    )
    # The exported adapter must reproduce the split model: load it the standard PEFT way.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(pre.path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, out).eval()
    check = evaluate(
        lambda ids, mask: merged(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits,
        eval_batches,
    )
    ok = math.isclose(check.perplexity, after.perplexity, rel_tol=1e-4)
    print(
        f"exported PEFT adapter: {out}  (reloaded with PeftModel.from_pretrained: perplexity "
        f"{check.perplexity:.2f}, {'matches' if ok else 'DOES NOT match'} the split model)"
    )
    print(f"done in {time.perf_counter() - t0:.0f} s")
    if not ok or not utility.beats_base:
        return 1
    return 0


def _forever(make):
    while True:
        yield from make()


if __name__ == "__main__":
    sys.exit(main())
