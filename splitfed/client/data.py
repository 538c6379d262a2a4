"""Client K's share of the data and its batches for each round (deterministic from the seed)."""

from __future__ import annotations

import numpy as np

from splitfed.config import RunConfig
from splitfed.data import Example, batches, load_drug_reviews, partition_dirichlet, partition_iid, tokenize_examples


def pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad if pad is not None else tokenizer.eos_token_id)


def client_examples(cfg: RunConfig, client_id: int, tokenizer) -> list[Example]:
    """The training examples of client `client_id` (partition seeded by ``run.seed``)."""
    reviews = load_drug_reviews("train")
    rng = np.random.default_rng(cfg.run.seed)
    if cfg.data.partition == "iid":
        parts = partition_iid(len(reviews), cfg.data.clients, rng=rng)
    else:
        parts = partition_dirichlet([r.condition for r in reviews], cfg.data.clients, alpha=cfg.data.alpha, rng=rng)
    mine = [reviews[int(i)] for i in parts[client_id]]
    return tokenize_examples(mine, tokenizer, max_length=cfg.data.max_length)


def eval_examples(cfg: RunConfig, tokenizer) -> list[Example]:
    """The shared held-out set: the first ``data.eval_examples`` test reviews."""
    if cfg.data.eval_examples == 0:
        return []
    return tokenize_examples(
        load_drug_reviews("test")[: cfg.data.eval_examples], tokenizer, max_length=cfg.data.max_length
    )


def round_batches(cfg: RunConfig, examples: list[Example], client_id: int, rnd: int, pad: int) -> list[dict]:
    """``training.local_steps`` batches for round `rnd`, from a generator seeded by (seed, client, round)."""
    rng = np.random.default_rng([cfg.run.seed, client_id, rnd])
    out: list[dict] = []
    while len(out) < cfg.training.local_steps:
        drop = len(examples) >= cfg.data.batch_size
        for b in batches(
            examples, cfg.data.batch_size, rng=rng, drop_last=drop, pad_token_id=pad, padding_side=cfg.data.padding_side
        ):
            out.append(b)
            if len(out) == cfg.training.local_steps:
                break
    return out


def releases_per_round(cfg: RunConfig, n_examples: int) -> int:
    """The most times one example is in `round_batches` of a round: once per pass over the data."""
    per_pass = max(1, n_examples // cfg.data.batch_size) if n_examples >= cfg.data.batch_size else 1
    return -(-cfg.training.local_steps // per_pass)
