"""What every attack shares: the attacker model it states, what it sees, what it outputs.

An attack never touches the ground truth.  It gets an `AttackerView` (public weights, public
auxiliary text, the defense's configuration, and the messages its party receives) and returns
a guess; the runner scores the guess against the truth with `splitfed.eval.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

import torch

Target = Literal["activations", "gradients", "update", "model"]


@dataclass(frozen=True)
class Knowledge:
    """The attacker model, stated: who attacks, what it observes, what else it knows."""

    party: str  # "server", "aggregator", "anyone who can query the model"
    sees: str
    knows: str


@dataclass(frozen=True)
class Released:
    """Tensors one party received for the victim examples, (N, T, D), with their (N, T) mask."""

    tensor: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class UpdateView:
    """What the aggregator learns in one round: client adapter states before and after.

    ``after`` is one client's adapter (plain FedAvg) or the mean of all clients' adapters
    (secure aggregation: only the sum is revealed).  ``trunk`` is the server's trunk adapter
    (the aggregator is the server in this system).  States map part role -> LoRA state dict.
    """

    before: dict[str, dict[str, torch.Tensor]]
    after: dict[str, dict[str, torch.Tensor]]
    trunk: dict[str, torch.Tensor]
    clients: int  # how many client updates are in ``after`` (1 = one client's own update)


@dataclass
class AttackerView:
    """Everything an attacker may use.  Fields a party does not receive are ``None``.

    - ``public_split()``: a fresh copy of the public pretrained model cut at ``cut``
      (no LoRA, eval mode): the attacker knows the public weights, not the client's adapters.
    - ``lora``: the run's LoRA configuration (`SplitLoraConfig`): public, in the shared config.
    - ``aux``: auxiliary public text (token id lists): a different corpus from the private data.
    - ``release``: the client's release functions for the activations and the returned
      gradient (clip + noise + compression), with the same configuration (Kerckhoffs: the
      server knows the config) but fresh noise; ``None`` when that channel is sent as is.
    - ``activations``: what the Bottom sent for the victim examples.
    - ``gradients``: what the Top returned for them; ``trunk_output``: what the server sent on.
    - ``update``: what the aggregator saw (`UpdateView`).
    - ``activation_clip``, ``activation_unit``: the defense's clip of the activations (``None``
      when they are not clipped) and its unit (public configuration); ``prompt_positions``: in a
      generation view, the positions released together as the prompt (the sequence unit clips
      them as one vector and each later position on its own).
    - ``query_logits``: black-box access to the fine-tuned model (ids, mask) -> logits and
      ``reference_logits`` to the public pretrained model; ``candidates``: the examples whose
      membership is asked (token id lists).
    """

    cut: tuple[int, int]
    tokenizer: object
    public_split: Callable[[], object]
    lora: object
    aux: Sequence[Sequence[int]]
    pad_token_id: int
    seed: int = 0
    release_activations: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    release_gradient: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    activations: Released | None = None
    gradients: Released | None = None
    trunk_output: Released | None = None
    update: UpdateView | None = None
    query_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    reference_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    candidates: Sequence[Sequence[int]] | None = None
    activation_clip: float | None = None
    activation_unit: str = "sequence"
    prompt_positions: int | None = None


@dataclass(frozen=True)
class TokenGuess:
    """Token ids guessed for each released position, (N, T) (ignored where the mask is 0).

    ``shift`` is 0 when position t guesses the input token at t (inversion), 1 when it
    guesses the next token (label inference).
    """

    ids: torch.Tensor
    shift: int = 0


@dataclass(frozen=True)
class TextGuess:
    """Free-text reconstructions (update inversion), and the token ids the attacker ranks highest."""

    texts: list[str]
    tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class MembershipScores:
    """One score per candidate: higher = more likely a training member."""

    scores: list[float]


Guess = TokenGuess | TextGuess | MembershipScores


class Attack(Protocol):
    """An attack class: built with its ``Options`` (a config object), or with no argument when
    ``Options`` is ``None``; `run` turns what its party sees into a guess."""

    name: ClassVar[str]
    target: ClassVar[Target]
    knowledge: ClassVar[Knowledge]
    summary: ClassVar[str]
    Options: ClassVar[type | None]

    def run(self, view: AttackerView) -> Guess: ...


def pad_right(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> (B, T) ids right-padded with `pad`, and their mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
