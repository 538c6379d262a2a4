"""What differs between client steps: the loss, the optimizer, and what wraps forward/backward.

`ClientStep` (`splitfed.training.inprocess`) runs the one step path (Bottom -> release -> link ->
Top + loss -> backward -> release -> link -> Bottom backward -> optimizer step) and asks a
`StepStrategy` for the parts that differ.  `PlainStep` is ordinary training; DP-SGD
(`splitfed.privacy.dpsgd_step.DPSGDStrategy`) plugs in the same way from the privacy package,
which depends on training, never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import torch

from splitfed.models import SplitPart, adapter_parameters
from splitfed.training.optim import OptimConfig, make_optimizer


class StepStrategy(Protocol):
    """The varying half of a client step; built once per `ClientStep` from its Bottom and Top."""

    def zero_grad(self) -> None:
        """Forget the previous step's gradients (before the forward)."""

    def capturing(self) -> AbstractContextManager[None]:
        """Wraps the whole forward and backward (DP-SGD: per-example gradient capture)."""

    def loss(self, top: SplitPart, act: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The scalar batch loss of the Top over the trunk's (B, T, D) output `act`."""

    def step(self) -> None:
        """Update the client's weights from the gradients of one batch."""

    def empty_step(self) -> None:
        """The update for a batch of zero rows (no forward ran)."""

    def close(self) -> None:
        """Undo whatever the strategy attached to the parts."""


StrategyFactory = Callable[[SplitPart, SplitPart, OptimConfig], StepStrategy]


class PlainStep:
    """Ordinary training: Hugging Face's token-mean loss over the batch, one optimizer per part.

    An empty batch changes nothing (there is no gradient and no noise to add).
    """

    def __init__(self, bottom: SplitPart, top: SplitPart, optim: OptimConfig):
        self.optimizers = [
            opt for part in (bottom, top) if (opt := make_optimizer(adapter_parameters(part), optim)) is not None
        ]

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def capturing(self) -> AbstractContextManager[None]:
        return nullcontext()

    def loss(self, top: SplitPart, act: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return top(act, mask, labels).loss

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def empty_step(self) -> None:
        pass

    def close(self) -> None:
        pass
