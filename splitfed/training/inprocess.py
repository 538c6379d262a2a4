"""Split training with the three parts in one process, activations passed in memory.

Each step does exactly what the networked runtimes do, with the cut made explicit: the
activations are detached where they would cross the network, and the gradient with respect
to them is handed back and pushed through the part below with ``tensor.backward(grad)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splitfed.models import SplitModel, adapter_parameters
from splitfed.training.optim import OptimConfig, make_optimizer


@dataclass(frozen=True)
class StepResult:
    loss: float
    tokens: int  # tokens processed (attention mask ones)


class SplitTrainer:
    """Bottom -> Trunk -> Top forward, Top -> Trunk -> Bottom backward; one optimizer per part."""

    def __init__(self, split: SplitModel, optim: OptimConfig = OptimConfig()):
        self.split = split
        self.optimizers = {
            role: opt
            for role, part in split.parts.items()
            if (opt := make_optimizer(adapter_parameters(part), optim)) is not None
        }
        if not self.optimizers:
            raise ValueError("no part has trainable LoRA parameters; call apply_lora first")

    def step(self, batch: dict[str, torch.Tensor]) -> StepResult:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        s = self.split
        s.train()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        # client: bottom
        h_bottom = s.bottom(ids, mask)
        act1 = h_bottom.detach().requires_grad_(True)  # --> server
        # server: trunk
        h_trunk = s.trunk(act1, mask)
        act2 = h_trunk.detach().requires_grad_(True)  # --> client
        # client: top + loss, backward down to the second cut
        loss = s.top(act2, mask, labels).loss
        loss.backward()
        # server: backward through the trunk with the gradient the client sent
        h_trunk.backward(act2.grad)
        # client: backward through the bottom with the gradient the server sent
        if h_bottom.requires_grad:
            h_bottom.backward(act1.grad)
        for opt in self.optimizers.values():
            opt.step()
        return StepResult(loss=loss.item(), tokens=int(mask.sum()))
