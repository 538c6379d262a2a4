"""Next-token choice equal to Hugging Face ``generate``: its own logits processors, its order.

``generate`` applies the repetition penalty (greedy and sampled), then, only when sampling,
temperature, top-k and top-p; it then takes the argmax, or samples with
``torch.multinomial(softmax(scores), 1)``.  Randomness comes from an injected
`torch.Generator`: a CPU generator seeded with ``s`` draws what the global RNG draws after
``torch.manual_seed(s)``, so a seeded split run repeats a seeded ``generate`` token for token.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from splitfed.inference.settings import GenerationSettings


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator seeded with `seed`; ``None`` (the global RNG) without a seed."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def logits_processors(settings: GenerationSettings, padding_lengths: torch.Tensor | None = None) -> LogitsProcessorList:
    """The processors ``generate`` would build for `settings`, in its order.

    `padding_lengths` (B,) is each row's count of left padding, which the repetition penalty
    ignores (as ``generate`` does with its attention mask).
    """
    procs = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        procs.append(
            RepetitionPenaltyLogitsProcessor(settings.repetition_penalty, prompt_ignore_length=padding_lengths)
        )
    if settings.do_sample:
        if settings.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k != 0:
            procs.append(TopKLogitsWarper(top_k=settings.top_k, min_tokens_to_keep=1))
        if settings.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=settings.top_p, min_tokens_to_keep=1))
    return procs


class TokenChooser:
    """Picks each row's next token from the last position's logits."""

    def __init__(
        self,
        settings: GenerationSettings,
        *,
        padding_lengths: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.do_sample = settings.do_sample
        self.processors = logits_processors(settings, padding_lengths)
        self.generator = generator

    def __call__(self, sequences: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens so far and (B, V) next-token logits -> (B,) chosen tokens."""
        scores = self.processors(sequences, logits.to(dtype=torch.float32, copy=True))
        if not self.do_sample:
            return torch.argmax(scores, dim=-1)
        probs = torch.nn.functional.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(1)
