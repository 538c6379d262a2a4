"""Split training (three parts, explicit cuts) takes the same steps as unsplit training."""

import copy

import pytest
import torch
from splitfed_testing import padded_batch, tiny_model

from splitfed.models import LoraSpec, SplitLoraConfig, apply_lora, get_adapter_state, split_model, with_adapter_name
from splitfed.training import OptimConfig, ReferenceTrainer, SplitTrainer, evaluate


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("cut", [(1, 3), (0, 4)])
def test_same_losses_and_adapters(arch, cut):
    model = tiny_model(arch)  # GPT-2 keeps its dropout: the RNG is reseeded identically per step
    base = copy.deepcopy(model)
    split = split_model(model, cut)
    apply_lora(split, SplitLoraConfig(bottom=LoraSpec(r=2), trunk=LoraSpec(r=4), top=LoraSpec(r=2, alpha=8)))
    optim = OptimConfig(lr=5e-3, weight_decay=0.01)
    split_trainer = SplitTrainer(split, optim)
    ref_trainer = ReferenceTrainer.matching(base, split, optim)
    losses = []
    for step in range(4):
        batch = padded_batch("left" if step % 2 else "right", seed=step)
        torch.manual_seed(100 + step)
        a = split_trainer.step(batch)
        torch.manual_seed(100 + step)
        b = ref_trainer.step(batch)
        assert a.loss == pytest.approx(b.loss, abs=1e-5)
        assert a.tokens == b.tokens
        losses.append(a.loss)
    assert len(set(losses)) > 1
    ref_params = dict(ref_trainer.model.named_parameters())
    for part in split.parts.values():
        for key, value in get_adapter_state(part).items():
            torch.testing.assert_close(value, ref_params[with_adapter_name(key)].detach(), atol=1e-6, rtol=1e-5)


def test_training_lowers_loss_and_evaluate_counts_targets():
    split = split_model(tiny_model("llama"), (1, 3))
    apply_lora(split, SplitLoraConfig(trunk=LoraSpec(r=8, alpha=32)))
    batch = padded_batch("right", seed=0)
    before = evaluate(lambda i, m: split(i, m), [batch])
    trainer = SplitTrainer(split, OptimConfig(lr=2e-2))
    for _ in range(15):
        trainer.step(batch)
    after = evaluate(lambda i, m: split(i, m), [batch])
    assert after.loss < before.loss - 0.25
    assert before.tokens == int((batch["labels"][:, 1:] != -100).sum())
    # evaluate's NLL equals the model's own loss on a single batch
    with torch.no_grad():
        loss = split(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss.item()
    assert after.loss == pytest.approx(loss, rel=1e-5)


def test_trainer_needs_adapters():
    with pytest.raises(ValueError, match="call apply_lora first"):
        SplitTrainer(split_model(tiny_model("llama"), (1, 3)))
