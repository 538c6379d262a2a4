"""Held-out perplexity of the whole split model: Bottom and Top here, the trunk on the server
(an evaluation forward: no update, nothing recorded in the privacy ledger)."""

from __future__ import annotations

import contextlib

import torch

from splitfed.client.link import RemoteLink


def held_out_perplexity(
    bottom: torch.nn.Module,
    top: torch.nn.Module,
    link: RemoteLink,
    examples: list,
    *,
    pad_token_id: int,
    padding_side: str,
    device: torch.device,
    base: bool = False,
) -> float:
    """Perplexity over `examples` in batches of 8; `base`: of the public base model, every adapter
    off on both sides (the server is told through `link.base`)."""
    from splitfed.data import batches
    from splitfed.models.lora import adapters_disabled
    from splitfed.training import evaluate

    link.train, link.base = False, base
    bottom.eval()
    top.eval()

    def logits(ids, mask):
        link.step += 1
        ids, mask = ids.to(device), mask.to(device)
        return top(link.forward(bottom(ids, mask), mask), mask)

    try:
        with adapters_disabled(bottom, top) if base else contextlib.nullcontext():
            res = evaluate(logits, batches(examples, 8, pad_token_id=pad_token_id, padding_side=padding_side))
    finally:
        link.train, link.base = True, False
    return res.perplexity
