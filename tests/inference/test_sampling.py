"""Seeded sampling equals Hugging Face `generate(do_sample=True)` after `torch.manual_seed`."""

import pytest
import torch
from generation_testing import generator, hf_generate, with_lora
from splitfed_testing import padded_batch

from splitfed.inference import GenerationSettings, TokenChooser, logits_processors

SAMPLING = [
    {"temperature": 0.7},
    {"top_k": 5},
    {"top_p": 0.8},
    {"repetition_penalty": 1.3},
    {"temperature": 1.5, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.2},
]


@pytest.fixture(scope="module")
def models():
    return {arch: with_lora(arch) for arch in ("llama", "gpt2")}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("kw", SAMPLING, ids=lambda kw: ",".join(kw))
def test_seeded_sampling_equals_hf_generate(models, arch, kw):
    split, reference = models[arch]
    batch = padded_batch("left")
    settings = GenerationSettings(max_new_tokens=10, do_sample=True, seed=3, **kw)
    out = generator(split, eos=None).generate(batch["input_ids"], batch["attention_mask"], settings)
    hf = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, **kw}
    torch.manual_seed(3)
    want = hf_generate(reference, batch, do_sample=True, eos_token_id=None, **hf)
    assert torch.equal(out.sequences, want)
    torch.manual_seed(4)
    assert not torch.equal(
        want, hf_generate(reference, batch, do_sample=True, eos_token_id=None, **hf)
    )  # the seed matters


def test_greedy_repetition_penalty_equalshf_generate(models):
    split, reference = models["llama"]
    batch = padded_batch("left")
    settings = GenerationSettings(max_new_tokens=10, repetition_penalty=1.5)
    out = generator(split, eos=None).generate(batch["input_ids"], batch["attention_mask"], settings)
    want = hf_generate(reference, batch, repetition_penalty=1.5, eos_token_id=None)
    assert torch.equal(out.sequences, want)
    assert not torch.equal(want, hf_generate(reference, batch, eos_token_id=None))


def test_processor_order_and_unseeded_draws_use_the_global_rng():
    names = [type(p).__name__ for p in logits_processors(GenerationSettings(do_sample=True, **SAMPLING[-1]))]
    assert names == [
        "RepetitionPenaltyLogitsProcessor",
        "TemperatureLogitsWarper",
        "TopKLogitsWarper",
        "TopPLogitsWarper",
    ]
    assert [type(p).__name__ for p in logits_processors(GenerationSettings(**SAMPLING[-1]))] == [
        "RepetitionPenaltyLogitsProcessor"
    ]  # greedy: only the penalty
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    seqs = torch.zeros(4, 1, dtype=torch.long)
    seeded = TokenChooser(GenerationSettings(do_sample=True, seed=11), generator=torch.Generator().manual_seed(11))
    torch.manual_seed(11)
    unseeded = TokenChooser(GenerationSettings(do_sample=True))
    draws = [seeded(seqs, logits) for _ in range(5)]
    assert all(torch.equal(d, unseeded(seqs, logits)) for d in draws)
    assert len({tuple(d.tolist()) for d in draws}) > 1
