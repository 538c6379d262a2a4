"""Split generation: the client runs Bottom and Top with their caches, the trunk sits behind
a `DecodeLink`; after the prompt only one (B, 1, D) position crosses each way per token.

Rows run like Hugging Face ``generate`` on a LEFT-padded batch: right-padded prompts are
rolled row by row to the left first, so either padding side gives the same tokens.  A row
that has finished (EOS, a stop string) continues with `pad_token_id` until every row has
finished or `max_new_tokens` is reached.

Privacy: `release(h, mask)` is applied to every tensor before it crosses (the prompt's
(B, T, D) with its mask, then each new (B, 1, D) position with its mask column): the client's
local-DP mechanism.  With ``fixed_steps`` the link is stepped ``max_new_tokens - 1`` times
whatever the rows do, so the number of releases is fixed in advance and the server does not
learn when the rows stopped.

Stop strings: after each step a row's generated tokens are decoded with the tokenizer
(special tokens kept); the row stops as soon as the text contains a stop string.  The token
that completes it is kept and the text is not cut (as ``generate`` keeps it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from splitfed.inference.link import DecodeLink
from splitfed.inference.sampling import TokenChooser, make_generator
from splitfed.inference.settings import GenerationSettings
from splitfed.models.kv import KVCache
from splitfed.models.parts import Bottom, Top

FinishReason = Literal["eos", "stop", "length"]
Release = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GenerationOutput:
    """`sequences`: (B, T + steps) left-padded prompts + new tokens (pad after a row finished),
    as ``generate`` returns them; `new_tokens`: each row's tokens up to and including the one
    that finished it; `finish_reasons`: "eos", "stop" or "length" per row."""

    sequences: torch.Tensor
    new_tokens: list[list[int]]
    finish_reasons: list[FinishReason]


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll each row so its padding is on the left; a row's real tokens must be contiguous."""
    mask = attention_mask.long()
    t = mask.shape[1]
    idx = torch.arange(t, device=mask.device)
    real = mask.bool()
    first = torch.where(real, idx, t).min(-1).values
    last = torch.where(real, idx, -1).max(-1).values
    if (real.sum(-1) != (last - first + 1).clamp(min=0)).any():
        raise ValueError("each row's real tokens (attention_mask 1) must be contiguous: left or right padding only")
    shift = (t - 1 - last) % t  # an all-padding row (last = -1) stays
    if not shift.any():
        return input_ids, attention_mask
    src = (idx[None, :] - shift[:, None]) % t  # position j of a rolled row comes from j - shift
    return input_ids.gather(1, src), attention_mask.gather(1, src)


class SplitGenerator:
    """Generates with the client's `bottom` and `top` and the trunk behind `link`."""

    def __init__(
        self,
        bottom: Bottom,
        top: Top,
        link: DecodeLink,
        *,
        pad_token_id: int,
        eos_token_id: int | Sequence[int] | None,
        release: Release | None = None,
        fixed_steps: bool = False,
    ) -> None:
        self.bottom, self.top, self.link = bottom, top, link
        self.release = release or (lambda h, mask: h)
        self.fixed_steps = fixed_steps
        self.pad_token_id = int(pad_token_id)
        eos = eos_token_id if isinstance(eos_token_id, Sequence) else [] if eos_token_id is None else [eos_token_id]
        self.eos_token_ids = [int(e) for e in eos]

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        settings: GenerationSettings,
        *,
        tokenizer=None,
        on_tokens: Callable[[int, torch.Tensor], None] | None = None,
    ) -> GenerationOutput:
        """Generate up to `settings.max_new_tokens` per row; `on_tokens(step, tokens (B,))`
        streams each step's tokens (pad for rows already finished)."""
        if settings.stop and tokenizer is None:
            raise ValueError("generate.stop needs a tokenizer to decode the generated text")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ids, mask = left_align(input_ids, attention_mask)
        rows = ids.shape[0]
        chooser = TokenChooser(
            settings,
            padding_lengths=(mask != 0).int().argmax(dim=1),
            generator=make_generator(settings.seed, ids.device),
        )
        eos = torch.tensor(self.eos_token_ids, dtype=ids.dtype, device=ids.device)
        new: list[list[int]] = [[] for _ in range(rows)]
        reasons: list[FinishReason | None] = [None] * rows
        bottom_cache, top_cache = KVCache(), KVCache()
        try:
            h = self.link.prefill(self.release(self.bottom(ids, mask, cache=bottom_cache), mask), mask)
            logits = self.top(h, mask, cache=top_cache)[:, -1]
            for step in range(settings.max_new_tokens):
                running = torch.tensor([r is None for r in reasons], device=ids.device)
                token = torch.where(running, chooser(ids, logits), self.pad_token_id)
                ids = torch.cat([ids, token[:, None]], dim=-1)
                mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=-1)
                self._finish(token, running, eos, new, reasons, settings, tokenizer)
                if on_tokens is not None:
                    on_tokens(step, token)
                done = all(r is not None for r in reasons) and not self.fixed_steps
                if done or step + 1 == settings.max_new_tokens:
                    break
                h = self.bottom(token[:, None], mask, cache=bottom_cache)
                h = self.link.decode(self.release(h, mask[:, -1:]), mask)
                logits = self.top(h, mask, cache=top_cache)[:, -1]
        finally:
            self.link.close()
        return GenerationOutput(ids, new, [r or "length" for r in reasons])

    @staticmethod
    def _finish(
        token: torch.Tensor,
        running: torch.Tensor,
        eos: torch.Tensor,
        new: list[list[int]],
        reasons: list[FinishReason | None],
        settings: GenerationSettings,
        tokenizer,
    ) -> None:
        """Record the step's tokens of running rows and mark the rows that finish."""
        hit_eos = torch.isin(token, eos) & running
        for row in running.nonzero().flatten().tolist():
            new[row].append(int(token[row]))
            if hit_eos[row]:
                reasons[row] = "eos"
            elif settings.stop:
                text = tokenizer.decode(new[row], skip_special_tokens=False)
                if any(s in text for s in settings.stop):
                    reasons[row] = "stop"
