"""Held-out loss and perplexity on target tokens."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from splitfed.data.records import DataError


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean negative log-likelihood per target token
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@torch.no_grad()
def evaluate(logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batches: Iterable[dict]) -> EvalResult:
    """Token-weighted NLL over `batches`; `logits_fn(input_ids, attention_mask) -> (B, T, V)`."""
    total, count = 0.0, 0
    for batch in batches:
        logits = logits_fn(batch["input_ids"], batch["attention_mask"]).float()
        labels = batch["labels"][:, 1:].to(logits.device)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        keep = labels != -100
        nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total += nll[keep].sum().item()
        count += int(keep.sum())
    if count == 0:
        raise DataError("no target tokens to evaluate (all labels are -100)")
    return EvalResult(loss=total / count, tokens=count)
