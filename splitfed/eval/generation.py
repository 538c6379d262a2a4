"""The server's view of split generation: what a trained victim sends while it answers prompts.

The victim generates greedily from held-out prompts with `SplitGenerator`, its releases going
through the product's own `InferencePrivacy` (the defense's ``[privacy.activations]``, a
ledger entry per session) and the wire's compression, and the trunk in process behind a link
that keeps what it receives: the prompt's activations, then one position per new token.
The truth is the tokens behind those positions (the prompt and the answer but its last
token): both stay on the client, both are what an inversion of this view recovers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from splitfed.client.inference_privacy import InferencePrivacy
from splitfed.data import Example
from splitfed.eval.attacks.base import Released
from splitfed.inference import GenerationSettings, LocalDecodeLink, SplitGenerator
from splitfed.privacy.mechanisms import TorchNoise

Release = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Recording(LocalDecodeLink):
    """The in-process trunk that keeps what it received (after the wire's round trip)."""

    def __init__(self, trunk, wire):
        super().__init__(trunk)
        self.wire, self.seen = wire, []

    def prefill(self, h, mask):
        h = self.wire(h)
        self.seen.append(h)
        return super().prefill(h, mask)

    def decode(self, h, mask):
        h = self.wire(h)
        self.seen.append(h)
        return super().decode(h, mask)


@dataclass(frozen=True)
class GenerationSeen:
    released: Released  # (N, T + new - 1, D): what the server received per prompt, with its mask
    ids: torch.Tensor  # (N, T + new - 1): the token behind each position (pad where the mask is 0)
    epsilon: float  # the ledger's statement for one prompt, against the server
    release: Release  # the defense's release as the server can rerun it (fresh noise), for the attackers
    victim_release: Release  # the same with the victim's own noise (its perplexity under generation)


def prompts_of(examples: list[Example], tokens: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `tokens` tokens of each example, left-padded (as generation pads)."""
    rows = [list(ex.input_ids[:tokens]) for ex in examples]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def observe_generation(
    split, rc, prompts: tuple[torch.Tensor, torch.Tensor], *, new_tokens: int, pad: int, eos, wire, seed: int
) -> GenerationSeen:
    """Generate `new_tokens` per prompt through the victim's `InferencePrivacy` (run config `rc`,
    noise seeded from `seed`); `wire(h)` is the compression round trip of what is sent."""
    ids, mask = prompts
    hidden = split.bottom.config.hidden_size
    priv = InferencePrivacy(rc, "client-0", noise=TorchNoise(torch.Generator().manual_seed(seed * 1000 + 11)))
    session = priv.open(rows=ids.shape[0], prompt_positions=ids.shape[1], max_new_tokens=new_tokens, hidden=hidden)
    link = _Recording(split.trunk, wire)
    gen = SplitGenerator(
        split.bottom, split.top, link, pad_token_id=pad, eos_token_id=eos, release=session.release, fixed_steps=True
    )
    split.eval()
    out = gen.generate(ids, mask, GenerationSettings(max_new_tokens=new_tokens))
    sent = torch.cat(link.seen, dim=1).detach()
    positions = sent.shape[1]
    seen_mask = torch.cat([mask, mask.new_ones(mask.shape[0], positions - mask.shape[1])], dim=1)
    behind = out.sequences[:, :positions]  # each position's input token: the prompt, then each new token but the last
    mech = getattr(session.release, "mech", None)
    attacker = release_as_generated(mech, ids.shape[1], TorchNoise(torch.Generator().manual_seed(seed + 7919)), wire)
    victim = release_as_generated(mech, ids.shape[1], TorchNoise(torch.Generator().manual_seed(seed + 104729)), wire)
    return GenerationSeen(Released(sent, seen_mask), behind, session.epsilon(), attacker, victim)


def release_as_generated(mech, prompt: int, noise, wire) -> Release:
    """A whole sequence released as generation releases it: its first `prompt` positions as the
    prompt (one release), each later position on its own; then the wire's round trip."""

    def release(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if mech is None:
            return wire(x)
        parts = [mech.apply(x[:, :prompt], m[:, :prompt], noise)]
        parts += [mech.apply(x[:, t : t + 1], m[:, t : t + 1], noise) for t in range(prompt, x.shape[1])]
        return wire(torch.cat(parts, dim=1).detach())

    return release


@torch.no_grad()
def perplexity_as_generated(split, examples: list[Example], pad: int, release: Release) -> float:
    """Held-out perplexity with the Bottom's output released as generation releases it (teacher
    forcing: each position's noise as when that token was generated): the utility a client gets
    from private split inference, to hold against the public base model's."""
    from splitfed.data import batches
    from splitfed.training import evaluate

    split.eval()

    def logits(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return split.top(split.trunk(release(split.bottom(ids, mask), mask), mask), mask)

    return evaluate(logits, batches(examples, 8, pad_token_id=pad)).perplexity
