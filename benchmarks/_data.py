"""Batches for the step benchmarks: full-length real drug reviews, so every batch is exactly B x T tokens."""

from __future__ import annotations


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
