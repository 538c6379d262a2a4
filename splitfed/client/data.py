"""Client K's data and its batches for each round (deterministic from the seed).

A client reads its own files (``data.train``, ``data.eval`` or ``data.eval_fraction``);
with ``data.train`` empty it runs the bundled simulation: its seeded share of the demo's
drug reviews and the bundled test reviews as held-out set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from splitfed.checks import is_int
from splitfed.config import RunConfig
from splitfed.data import Example, batches, load_drug_reviews, partition_dirichlet, partition_iid, tokenize_examples


@dataclass(frozen=True)
class ClientData:
    """What one client trains and evaluates on, and how it was read (for the report, never sent)."""

    train: list[Example]
    eval: list[Example]
    source: str  # the file, or "simulation: drugreviews ..."
    format: str
    stats: dict[str, int] = field(default_factory=dict)  # truncated, dropped, ... of the training set

    def describe(self) -> str:
        """One line for the console: sizes, format, truncation."""
        text = f"{len(self.train)} training examples from {self.source} ({self.format})"
        if self.stats.get("truncated"):
            text += f", {self.stats['truncated']} truncated to data.max_length"
        if self.stats.get("dropped"):
            text += f", {self.stats['dropped']} dropped (no target token left)"
        if self.stats.get("packed_from"):
            text += f", packed from {self.stats['packed_from']} examples"
        return text + (f"; {len(self.eval)} held out" if self.eval else "; no held-out evaluation")


def load_client_data(cfg: RunConfig, client_id: int, tokenizer, *, model: str = "the model") -> ClientData:
    """The client's training and held-out examples: its own files, or the simulation's share.

    `model` names the model in errors (a chat-format file with a tokenizer lacking a template).
    Raises `splitfed.data.DataError` naming the file (and row) for unusable data.
    """
    if not cfg.data.train:
        return ClientData(
            client_examples(cfg, client_id, tokenizer),
            eval_examples(cfg, tokenizer),
            source=f"simulation: {cfg.data.dataset}, {cfg.data.partition} share {client_id} of {cfg.data.clients}",
            format="prompt_completion",
        )
    from splitfed.data.formats import tokenize_records
    from splitfed.data.records import DataError, FieldMap, load_records, split_eval

    d = cfg.data
    fields = FieldMap(
        text=d.text_field, prompt=d.prompt_field, completion=d.completion_field, messages=d.messages_field
    )
    train = load_records(d.train, fields=fields, format=d.format)
    held = None
    if d.eval:
        held = load_records(d.eval, fields=fields, format=d.format)
    elif d.eval_fraction:
        train, held = split_eval(train, d.eval_fraction, seed=cfg.run.seed)
    examples, stats = tokenize_records(train, tokenizer, max_length=d.max_length, packing=d.packing, model=model)
    if not examples:
        raise DataError(f"{d.train}: no example has a target token left after truncation to {d.max_length} tokens")
    held_out: list[Example] = []
    if held is not None and d.eval_examples:
        held_out, _ = tokenize_records(held, tokenizer, max_length=d.max_length, model=model)
        held_out = held_out[: d.eval_examples]
    counts = {k: v for k, v in vars(stats).items() if is_int(v)}
    return ClientData(examples, held_out, source=str(d.train), format=train.format, stats=counts)


def pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad if pad is not None else tokenizer.eos_token_id)


def client_examples(cfg: RunConfig, client_id: int, tokenizer) -> list[Example]:
    """Simulation: the training examples of client `client_id` (partition seeded by ``run.seed``)."""
    reviews = load_drug_reviews("train")
    mine = [reviews[int(i)] for i in simulation_shares(cfg, reviews)[client_id]]
    return tokenize_examples(mine, tokenizer, max_length=cfg.data.max_length)


def simulation_shares(cfg: RunConfig, reviews) -> list[np.ndarray]:
    """Simulation: which bundled reviews each client gets (``data.partition``, seeded by ``run.seed``)."""
    rng = np.random.default_rng(cfg.run.seed)
    if cfg.data.partition == "iid":
        return partition_iid(len(reviews), cfg.data.clients, rng=rng)
    return partition_dirichlet([r.condition for r in reviews], cfg.data.clients, alpha=cfg.data.alpha, rng=rng)


def eval_examples(cfg: RunConfig, tokenizer) -> list[Example]:
    """Simulation: the shared held-out set, the first ``data.eval_examples`` bundled test reviews."""
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
