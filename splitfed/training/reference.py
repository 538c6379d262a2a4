"""The unsplit model with the same LoRA adapters, data order and optimizer: the baseline
that split training must reproduce."""

from __future__ import annotations

import torch
from torch import nn

from splitfed.models import PartAdapter, SplitModel, peft_config_for, position_ids_from_mask, with_adapter_name
from splitfed.training.inprocess import StepResult
from splitfed.training.optim import OptimConfig, make_optimizer


class ReferenceTrainer:
    """Monolithic LoRA training of `model` (wrapped in place by PEFT)."""

    def __init__(self, model: nn.Module, lora_config, optim: OptimConfig = OptimConfig()):
        from peft import inject_adapter_in_model

        inject_adapter_in_model(lora_config, model, adapter_name="default")
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
        self.model = model
        self.optimizer = make_optimizer(model.parameters(), optim)

    @classmethod
    def matching(cls, model: nn.Module, split: SplitModel, optim: OptimConfig = OptimConfig()) -> ReferenceTrainer:
        """Same adapters as `split` (same modules, ranks, alphas and current weights) on `model`,
        a separate copy of the base model the split was cut from."""
        adapters = [a for a in (PartAdapter.of(p) for p in split.parts.values()) if a is not None]
        cfg = peft_config_for(adapters, model_type=split.layout.model_type)
        trainer = cls(model, cfg, optim)
        state = {k: v for a in adapters for k, v in a.state.items()}
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                params[with_adapter_name(key)].copy_(value)
        return trainer

    def step(self, batch: dict[str, torch.Tensor]) -> StepResult:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), labels=labels)
        out.loss.backward()
        self.optimizer.step()
        return StepResult(loss=out.loss.item(), tokens=int(mask.sum()))
