"""LoRA per part: configuration, adapter state, and export as one standard PEFT adapter."""

import copy
import json

import pytest
import torch
from splitfed_testing import padded_batch, tiny_model

from splitfed.models import (
    LoraSpec,
    PartAdapter,
    SplitLoraConfig,
    apply_lora,
    export_adapter,
    get_adapter_state,
    position_ids_from_mask,
    set_adapter_state,
    split_model,
)


def randomise_b(split, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in split.parts.values():
            for n, p in part.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_export_round_trip_through_peft(arch, tmp_path):
    from peft import PeftModel

    model = tiny_model(arch)
    base = copy.deepcopy(model)
    split = split_model(model, (1, 3))
    top_targets = ("c_fc",) if arch == "gpt2" else ("o_proj", "down_proj")
    adapted = apply_lora(
        split,
        SplitLoraConfig(
            bottom=LoraSpec(r=2, alpha=4),
            trunk=LoraSpec(r=4, alpha=8),
            top=LoraSpec(r=3, alpha=3, target_modules=top_targets),
        ),
    )
    assert all(adapted.values())
    randomise_b(split)
    out = export_adapter(tmp_path / "adapter", [PartAdapter.of(p) for p in split.parts.values()], model_type=arch)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and (out / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob("adapter.tmp-*"))

    peft_model = PeftModel.from_pretrained(base, out).eval()
    batch = padded_batch("left")
    mask = batch["attention_mask"]
    with torch.no_grad():
        want = split(batch["input_ids"], mask)
        got = peft_model(
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask)
        ).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the adapter changes the output: the comparison above is not trivially true
    with torch.no_grad(), peft_model.disable_adapter():
        plain = peft_model(
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask)
        ).logits
    assert (plain - want).abs().max() > 1e-3


def test_adapter_state_round_trip_and_validation():
    split = split_model(tiny_model("llama"), (1, 3))
    apply_lora(split, SplitLoraConfig())
    randomise_b(split)
    state = get_adapter_state(split.trunk)
    assert sorted(state)[0].startswith("model.layers.1.self_attn.")
    assert all(".default." not in k for k in state)
    zeros = {k: torch.zeros_like(v) for k, v in state.items()}
    set_adapter_state(split.trunk, zeros)
    assert all(v.abs().sum() == 0 for v in get_adapter_state(split.trunk).values())
    set_adapter_state(split.trunk, state)
    for k, v in get_adapter_state(split.trunk).items():
        assert torch.equal(v, state[k])

    with pytest.raises(KeyError, match="missing"):
        set_adapter_state(split.trunk, dict(list(state.items())[1:]))
    with pytest.raises(KeyError, match="unexpected"):
        set_adapter_state(split.trunk, {**state, "model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(1)})
    key = next(iter(state))
    with pytest.raises(ValueError, match=r"expected shape"):
        set_adapter_state(split.trunk, {**state, key: torch.zeros(1, 1)})


def test_only_lora_is_trainable_and_trunk_has_no_client_weights():
    split = split_model(tiny_model("llama"), (1, 3))
    apply_lora(split, SplitLoraConfig())
    for part in split.parts.values():
        trainable = [n for n, p in part.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)


def test_part_without_blocks_gets_no_adapter(tmp_path):
    split = split_model(tiny_model("llama"), (0, 4))
    adapted = apply_lora(split, SplitLoraConfig())
    assert adapted["bottom"] == [] and adapted["top"] == [] and len(adapted["trunk"]) == 8
    out = export_adapter(tmp_path / "a", [PartAdapter.of(p) for p in split.parts.values()], model_type="llama")
    assert (out / "adapter_config.json").is_file()


def test_no_matching_target_is_an_error():
    split = split_model(tiny_model("llama"), (1, 3))
    with pytest.raises(ValueError, match=r"no module matches LoRA target_modules=\['c_attn'\]"):
        apply_lora(split, SplitLoraConfig(trunk=LoraSpec(target_modules=("c_attn",))))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(r=0), "rank r must be a positive integer"),
        (dict(alpha=0), "alpha must be > 0"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(target_modules="q_proj"), "non-empty list"),
    ],
)
def test_lora_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraSpec(**kwargs)


def test_export_refuses_nothing(tmp_path):
    with pytest.raises(ValueError, match="nothing to export"):
        export_adapter(tmp_path / "a", [None], model_type="llama")


def test_with_adapter_name():
    from splitfed.models import with_adapter_name

    assert with_adapter_name("model.layers.1.q_proj.lora_A.weight") == "model.layers.1.q_proj.lora_A.default.weight"
    assert with_adapter_name("model.embed_tokens.lora_embedding_B") == "model.embed_tokens.lora_embedding_B.default"
    with pytest.raises(KeyError, match="not a LoRA tensor"):
        with_adapter_name("model.layers.1.q_proj.weight")


def test_lora_on_embeddings_and_head_exports_exactly(tmp_path):
    """Targets use the full model's names (embed_tokens, lm_head) even though parts rename them."""
    from peft import PeftModel

    model = tiny_model("llama")
    base = copy.deepcopy(model)
    split = split_model(model, (1, 3))
    adapted = apply_lora(
        split,
        SplitLoraConfig(
            bottom=LoraSpec(r=2, target_modules=("embed_tokens", "q_proj")),
            trunk=LoraSpec(r=2),
            top=LoraSpec(r=2, target_modules=("lm_head",)),
        ),
    )
    assert "model.embed_tokens" in adapted["bottom"] and adapted["top"] == ["lm_head"]
    randomise_b(split)
    with torch.no_grad():  # embedding LoRA keeps B in lora_embedding_B
        for n, p in split.bottom.named_parameters():
            if "lora_embedding_" in n:
                p.normal_(0, 0.1)
    out = export_adapter(tmp_path / "a", [PartAdapter.of(p) for p in split.parts.values()], model_type="llama")
    peft_model = PeftModel.from_pretrained(base, out).eval()
    batch = padded_batch("right")
    mask = batch["attention_mask"]
    with torch.no_grad():
        want = split(batch["input_ids"], mask)
        got = peft_model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask))
    torch.testing.assert_close(got.logits, want, atol=1e-5, rtol=0)
