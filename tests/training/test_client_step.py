"""`ClientStep` runs one step path; a `StepStrategy` decides the loss, the update and the capture."""

import contextlib

import pytest
import torch
from splitfed_testing import padded_batch, tiny_model

from splitfed.models import LoraSpec, SplitLoraConfig, adapter_parameters, apply_lora, split_model
from splitfed.training import ClientStep, LocalLink, OptimConfig, PlainStep

OPTIM = OptimConfig(lr=1e-2)


def lora_split():
    split = split_model(tiny_model("llama"), (1, 3))
    apply_lora(split, SplitLoraConfig(bottom=LoraSpec(r=2), top=LoraSpec(r=2)))
    return split


class NoLink:
    def forward(self, act, mask):
        raise AssertionError("the link was called for an empty batch")

    backward = forward


class Recording(PlainStep):
    """The plain strategy, logging each call in order."""

    def __init__(self, bottom, top, optim, log):
        super().__init__(bottom, top, optim)
        self.log = log

    def zero_grad(self):
        self.log.append("zero_grad")
        super().zero_grad()

    @contextlib.contextmanager
    def capturing(self):
        self.log.append("enter")
        yield
        self.log.append("exit")

    def loss(self, top, act, mask, labels):
        self.log.append(("loss", tuple(act.shape)))
        return 2.0 * super().loss(top, act, mask, labels)

    def step(self):
        self.log.append("step")
        super().step()

    def empty_step(self):
        self.log.append("empty_step")

    def close(self):
        self.log.append("close")


def test_strategy_wraps_the_whole_step_and_owns_loss_and_update():
    split, log = lora_split(), []
    plain = ClientStep(split.bottom, split.top, LocalLink(split.trunk, OPTIM), OPTIM)
    step = ClientStep(
        split.bottom,
        split.top,
        LocalLink(split.trunk, OPTIM),
        OPTIM,
        strategy=lambda b, t, o: Recording(b, t, o, log),
    )
    batch = padded_batch("right", batch=3, seed=0)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.no_grad():
        ref = float(split.top(split.trunk(split.bottom(ids, mask), mask), mask, labels).loss)
    before = [p.detach().clone() for p in adapter_parameters(split.top)]
    res = step.step(batch)
    assert log == ["zero_grad", "enter", ("loss", (3, 10, 32)), "exit", "step"]
    assert res.tokens == int(batch["attention_mask"].sum())
    assert any(not torch.equal(p, p0) for p, p0 in zip(adapter_parameters(split.top), before, strict=True))
    assert res.loss == pytest.approx(2.0 * ref, rel=1e-5)  # the reported loss is the strategy's
    step.close()
    assert log[-1] == "close" and isinstance(plain.strategy, PlainStep)


def test_empty_batch_takes_the_strategy_empty_step_without_the_link():
    split, log = lora_split(), []
    step = ClientStep(split.bottom, split.top, NoLink(), OPTIM, strategy=lambda b, t, o: Recording(b, t, o, log))
    empty = {k: torch.zeros((0, 10), dtype=torch.long) for k in ("input_ids", "attention_mask", "labels")}
    res = step.step(empty)
    assert (res.loss, res.tokens, log) == (0.0, 0, ["empty_step"])

    plain = ClientStep(split.bottom, split.top, NoLink(), OPTIM)  # plain: nothing to learn, nothing changes
    before = [p.detach().clone() for part in (split.bottom, split.top) for p in adapter_parameters(part)]
    assert plain.step(empty).tokens == 0 and plain.empty_step().loss == 0.0
    after = [p.detach() for part in (split.bottom, split.top) for p in adapter_parameters(part)]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
