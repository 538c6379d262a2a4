"""Split forward/backward equals the unsplit model: architectures x cut points x padding side."""

import copy
import itertools

import pytest
import torch
from splitfed_testing import ARCHS, no_dropout, padded_batch, randomize_lora_b, tiny_model

from splitfed.models import (
    LoraSpec,
    SplitLoraConfig,
    apply_lora,
    position_ids_from_mask,
    split_model,
    with_adapter_name,
)
from splitfed.models.lora import default_targets
from splitfed.training import ReferenceTrainer

ALL_CUTS = [(a, b) for a, b in itertools.combinations(range(5), 2)]  # every legal cut of 4 layers


def _without_adapter(name: str) -> str:
    return name.replace(".default.", ".")


def unsplit_logits(model, batch):
    mask = batch["attention_mask"]
    return model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("padding", ["left", "right"])
def test_split_logits_equal_unsplit(arch, padding):
    model = tiny_model(arch)
    batch = padded_batch(padding)
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        want = unsplit_logits(model, batch)
        for cut in ALL_CUTS:
            got = split_model(model, cut)(batch["input_ids"], batch["attention_mask"])
            assert got.shape == want.shape
            torch.testing.assert_close(got[keep], want[keep], atol=1e-5, rtol=0, msg=f"cut {cut}")


@pytest.mark.parametrize("arch", ARCHS)
def test_activation_shapes_at_each_cut(arch):
    model = tiny_model(arch)
    s = split_model(model, (1, 3))
    batch = padded_batch("left")
    with torch.no_grad():
        h = s.bottom(batch["input_ids"], batch["attention_mask"])
        assert h.shape == (3, 10, model.config.hidden_size)
        h = s.trunk(h, batch["attention_mask"])
        assert h.shape == (3, 10, model.config.hidden_size)
        out = s.top(h, batch["attention_mask"], batch["labels"])
    assert out.logits.shape == (3, 10, 128)
    assert out.loss.ndim == 0


# Targets for the families PEFT has no default for (`default_targets` raises for them).
EXPLICIT_TARGETS = {"phi3": ("qkv_proj", "o_proj")}


def _lora_targets(arch: str, model_type: str):
    try:
        default_targets(model_type)
        return None
    except ValueError:
        return EXPLICIT_TARGETS.get(arch, ("q_proj", "v_proj"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("cut", [(0, 4), (1, 3), (2, 4), (0, 2)])
def test_lora_gradients_equal_unsplit(arch, padding, cut):
    _check_lora_gradients(arch, padding, cut)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in ("llama", "gpt2")])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_lora_gradients_equal_unsplit_every_family(arch, padding):
    _check_lora_gradients(arch, padding, (1, 3))


def _check_lora_gradients(arch, padding, cut):
    base = tiny_model(arch, **no_dropout(arch))
    reference = copy.deepcopy(base)
    split = split_model(base, cut)
    targets = _lora_targets(arch, base.config.model_type)
    apply_lora(
        split,
        SplitLoraConfig(
            bottom=LoraSpec(r=2, target_modules=targets),
            trunk=LoraSpec(r=4, alpha=4, target_modules=targets),
            top=LoraSpec(r=3, target_modules=targets),
        ),
    )
    randomize_lora_b(split, 0.1)  # B starts at zero, which would make every A-gradient zero
    reference = ReferenceTrainer.matching(reference, split).model  # same adapters, same weights
    ref_params = dict(reference.named_parameters())

    batch = padded_batch(padding)
    mask = batch["attention_mask"]
    # split: explicit cuts, gradients handed back across them
    h1 = split.bottom(batch["input_ids"], mask)
    a1 = h1.detach().requires_grad_(True)
    h2 = split.trunk(a1, mask)
    a2 = h2.detach().requires_grad_(True)
    split.top(a2, mask, batch["labels"]).loss.backward()
    h2.backward(a2.grad)
    if h1.requires_grad:
        h1.backward(a1.grad)
    reference(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        labels=batch["labels"],
    ).loss.backward()

    compared = 0
    for part in split.parts.values():
        for n, p in part.named_parameters():
            if "lora_" not in n:
                assert p.grad is None, f"frozen base weight {n} received a gradient"
                continue
            want = ref_params[with_adapter_name(part.full_name(_without_adapter(n)))].grad
            torch.testing.assert_close(p.grad, want, atol=1e-6, rtol=1e-4, msg=n)
            assert want.abs().sum() > 0
            compared += 1
    assert compared == sum(1 for n, _ in reference.named_parameters() if "lora_" in n)
