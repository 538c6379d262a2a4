"""Split training, one step: Bottom -> Trunk -> Top forward, Top -> Trunk -> Bottom backward.

The client side of a step is written once (`ClientStep`); the trunk sits behind a
`TrunkLink`: `LocalLink` runs it in this process, the networked client sends the cut
activations to the server.  The activations are detached where they cross a cut, and the
gradient with respect to them is handed back and pushed through the part below with
``tensor.backward(grad)``, exactly as over the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from splitfed.models import SplitModel, SplitPart, adapter_parameters
from splitfed.models.placement import autocast, to_device
from splitfed.training.optim import OptimConfig, make_optimizer
from splitfed.training.strategy import PlainStep, StrategyFactory


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a part's parameters (the client's Bottom and Top share one)."""
    return next(module.parameters()).device


def batch_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A collated batch on `device` (unchanged when it is already there)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass(frozen=True)
class StepResult:
    loss: float
    tokens: int  # tokens processed (attention mask ones)


class TrunkLink(Protocol):
    """How the client reaches the trunk: forward activations, then backward their gradient."""

    def forward(self, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def backward(self, grad: torch.Tensor) -> torch.Tensor: ...


class NonFiniteError(ArithmeticError):
    """A trunk step produced NaN or Inf; it was dropped and no weight changed."""


def _finite(t: torch.Tensor | None) -> bool:
    return t is None or bool(torch.isfinite(t).all())


class LocalLink:
    """The trunk in this process, with its own optimizer (steps after each backward).

    The trunk may sit on another device or run its frozen base in reduced precision (see
    `splitfed.models.placement`): activations and gradients go in as they come (float32 on
    the host) and come back the same way, so callers never see the placement.

    With `guard_finite` (the server's setting) a forward whose output, or a backward whose
    gradients, contain NaN or Inf raise `NonFiniteError` before anything is updated, in the
    spirit of mixed-precision loss-scaling skips.
    """

    def __init__(
        self,
        trunk: SplitPart,
        optim: OptimConfig,
        *,
        guard_finite: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.trunk = trunk
        self.optimizer = make_optimizer(adapter_parameters(trunk), optim)
        self.guard_finite = guard_finite
        self.device = device if device is not None else torch.device("cpu")
        self.dtype = dtype
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._home = torch.device("cpu")  # where the caller's tensors live

    def _run(self, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            return self.trunk(act, to_device(mask, self.device))

    def _back(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self._home, torch.float32)

    @torch.no_grad()
    def infer(self, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Forward only (evaluation): no graph, nothing pending."""
        self._home = act.device
        self.trunk.eval()
        return self._back(self._run(to_device(act, self.device), mask))

    def forward(self, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self._home = act.device
        self.trunk.train()
        act = to_device(act.detach(), self.device).requires_grad_(True)
        out = self._run(act, mask)
        if self.guard_finite and not _finite(out):
            raise NonFiniteError("the trunk's output contains NaN or Inf; the step was dropped")
        self._pending = (act, out)
        return self._back(out.detach())

    def drop(self) -> None:
        """Forget the pending forward (its client went away): no weight changes."""
        self._pending = None

    @property
    def pending_output(self) -> torch.Tensor | None:
        return None if self._pending is None else self._pending[1]

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        if self._pending is None:
            raise RuntimeError("backward without a pending forward")
        act, out = self._pending
        self._pending = None
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        out.backward(to_device(grad, self.device).to(out.dtype))
        if self.guard_finite and not (_finite(act.grad) and all(_finite(p.grad) for p in self.trunk.parameters())):
            self.trunk.zero_grad(set_to_none=True)
            raise NonFiniteError("the trunk's gradients contain NaN or Inf; the step was skipped, no weight changed")
        if self.optimizer is not None:
            self.optimizer.step()
        return self._back(act.grad)


Release = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _as_is(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x


class ClientStep:
    """The client's half of a split step: Bottom and Top, trained the way `strategy` says.

    `strategy(bottom, top, optim)` builds what differs between plain training (`PlainStep`, the
    default: token-mean loss, one optimizer per part) and DP-SGD
    (`splitfed.privacy.dpsgd_step`): the loss, the optimizer, what wraps forward and backward.
    `release_activations(h, mask)` and `release_gradient(g, mask)` transform what crosses to
    the server (local DP: clip and noise); the first is applied on the autograd graph, so
    the Bottom's gradient goes through the clipping.  Both default to sending as is.
    """

    def __init__(
        self,
        bottom: SplitPart,
        top: SplitPart,
        link: TrunkLink,
        optim: OptimConfig,
        *,
        strategy: StrategyFactory = PlainStep,
        release_activations: Release | None = None,
        release_gradient: Release | None = None,
    ):
        self.bottom, self.top, self.link = bottom, top, link
        self.release_activations = release_activations or _as_is
        self.release_gradient = release_gradient or _as_is
        self.strategy = strategy(bottom, top, optim)

    def step(self, batch: dict[str, torch.Tensor]) -> StepResult:
        """One step on a collated batch; a batch of zero rows takes `empty_step`."""
        batch = batch_to(batch, device_of(self.bottom))
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if ids.shape[0] == 0:
            return self.empty_step()  # the model blocks fail on zero rows; the link is not called
        self.bottom.train()
        self.top.train()
        how = self.strategy
        how.zero_grad()
        with how.capturing():
            sent = self.release_activations(self.bottom(ids, mask), mask)  # (B, T, D)
            act2 = self.link.forward(sent.detach(), mask).requires_grad_(True)  # across both cuts
            loss = how.loss(self.top, act2, mask, labels)
            loss.backward()  # the Top's gradients
            grad1 = self.link.backward(self.release_gradient(act2.grad, mask))  # back across both cuts
            if sent.requires_grad:
                sent.backward(grad1)  # the Bottom's gradients
        how.step()
        return StepResult(loss=loss.item(), tokens=int(mask.sum()))

    def empty_step(self) -> StepResult:
        """The step of an empty batch: no forward, no link call; loss 0.0 (the sum over no
        examples) and 0 tokens.  Plain training changes nothing; DP-SGD adds its noise."""
        self.strategy.empty_step()
        return StepResult(loss=0.0, tokens=0)

    def close(self) -> None:
        """Detach whatever the strategy attached to the parts (DP-SGD's hooks)."""
        self.strategy.close()


class SplitTrainer(ClientStep):
    """All three parts in one process: `ClientStep` over a `LocalLink`."""

    strategy: PlainStep

    def __init__(self, split: SplitModel, optim: OptimConfig = OptimConfig()):
        trunk = LocalLink(split.trunk, optim)
        super().__init__(split.bottom, split.top, trunk, optim)
        if not self.strategy.optimizers and trunk.optimizer is None:
            raise ValueError("no part has trainable LoRA parameters; call apply_lora first")
        self.split = split
