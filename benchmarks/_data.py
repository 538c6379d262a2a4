"""Options and batches for the step benchmarks (full-length real reviews: every batch is exactly B x T)."""

from __future__ import annotations

import argparse


def add_step_options(p: argparse.ArgumentParser, *, warmup: int) -> None:
    """The options every step benchmark takes: model, cut, batch shape, repetitions."""
    from splitfed.cli.options import add_cut_option

    p.add_argument("--model", default="smollm2-135m")
    add_cut_option(p)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per mode (default 5)")
    p.add_argument("--steps", type=int, default=3, help="training steps per repetition (default 3)")
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed steps per mode first (default {warmup})")


def full_length_batches(tokenizer, *, batch_size: int, seq_len: int, count: int) -> list[dict]:
    """`count` collated batches of `batch_size` training reviews that fill `seq_len` tokens each.

    Raises ValueError when the data set has too few such reviews.
    """
    from splitfed.data import collate, load_drug_reviews, tokenize_examples

    examples = [
        e
        for e in tokenize_examples(load_drug_reviews("train"), tokenizer, max_length=seq_len)
        if len(e.input_ids) == seq_len
    ]
    need = batch_size * count
    if len(examples) < need:
        raise ValueError(f"only {len(examples)} full-length examples, need {need}")
    pad = tokenizer.pad_token_id or 0
    return [collate(examples[i : i + batch_size], pad_token_id=pad) for i in range(0, need, batch_size)]
