"""Helpers of the tests/inference tests: tiny split models with LoRA and their unsplit twin."""

import copy

import torch
from splitfed_testing import no_dropout, randomize_lora_b, tiny_model

from splitfed.inference import LocalDecodeLink, SplitGenerator
from splitfed.models import LoraSpec, SplitLoraConfig, apply_lora, split_model
from splitfed.training import ReferenceTrainer

ARCHS = ["llama", "gpt2", "qwen3"]


def with_lora(arch: str, **overrides):
    """(split, unsplit reference) with the same nonzero LoRA adapters on each part."""
    base = tiny_model(arch, **no_dropout(arch), **overrides)
    reference = copy.deepcopy(base)
    split = split_model(base, (1, 3))
    apply_lora(split, SplitLoraConfig(bottom=LoraSpec(r=2), trunk=LoraSpec(r=4, alpha=8), top=LoraSpec(r=2)))
    randomize_lora_b(split, 0.5)
    reference = ReferenceTrainer.matching(reference, split).model.eval()
    return split.eval(), reference


def generator(split, *, eos=2):
    return SplitGenerator(split.bottom, split.top, LocalDecodeLink(split.trunk), pad_token_id=0, eos_token_id=eos)


def hf_generate(model, batch, **kw):
    kw = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": 0, "eos_token_id": 2, **kw}
    return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw)


def right_padded(batch):
    """The same prompts as the left-padded `batch`, rolled to the right."""
    mask = batch["attention_mask"]
    shift = mask.shape[1] - mask.sum(1)
    src = (torch.arange(mask.shape[1])[None, :] + shift[:, None]) % mask.shape[1]
    return {"input_ids": batch["input_ids"].gather(1, src), "attention_mask": mask.gather(1, src)}


def batch_args(batch):
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
