"""Bad cuts and unsupported models fail with errors that say what is wrong."""

import pytest
import torch
from splitfed_testing import tiny_model

from splitfed.models import SplitMismatchError, UnsupportedModelError, split_model


@pytest.mark.parametrize("cut", [(-1, 2), (2, 2), (3, 1), (0, 5), (4, 4)])
def test_invalid_cut_names_valid_range(cut):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"need 0 <= a < b <= 4 for a model with 4 layers"):
        split_model(model, cut)


@pytest.mark.parametrize("cut", [(1,), "ab", None, (1, 2, 3)])
def test_malformed_cut(cut):
    with pytest.raises(ValueError, match="cut must be a pair"):
        split_model(tiny_model("llama"), cut)


def test_legal_extreme_cuts():
    model = tiny_model("llama")
    s = split_model(model, (0, 4))
    assert len(s.bottom.layers) == 0 and len(s.top.layers) == 0 and len(s.trunk.layers) == 4


def test_encoder_decoder_refused():
    from transformers import T5Config, T5ForConditionalGeneration

    model = T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match=r"T5ForConditionalGeneration.*encoder-decoder"):
        split_model(model, (0, 1))


def test_masked_lm_refused_naming_what_is_missing():
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64)
    )
    with pytest.raises(UnsupportedModelError, match=r"BertForMaskedLM.*missing a base model attribute.*LM head"):
        split_model(model, (0, 1))


def test_headless_model_refused():
    from transformers import GPT2Config, GPT2Model

    with pytest.raises(UnsupportedModelError, match=r"missing .*LM head"):
        split_model(GPT2Model(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64)), (0, 1))


def test_not_a_model():
    with pytest.raises(UnsupportedModelError, match="no Hugging Face `config`"):
        split_model(torch.nn.Linear(2, 2), (0, 1))


def test_unusual_forward_is_caught_by_verification():
    """Granite has the Llama layout but multiplies embeddings and divides logits in its
    forward: the split check must notice rather than train silently wrong."""
    from transformers import AutoModelForCausalLM, GraniteConfig

    cfg = GraniteConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        embedding_multiplier=12.0,
        logits_scaling=8.0,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(SplitMismatchError, match=r"GraniteForCausalLM.*differs from the unsplit model"):
        split_model(model, (1, 2))


def test_gemma_scaled_embeddings_split_exactly():
    """Gemma scales inside its embedding module, so the usual layout reproduces it."""
    from transformers import AutoModelForCausalLM, GemmaConfig

    cfg = GemmaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    split_model(AutoModelForCausalLM.from_config(cfg), (1, 2))  # verification passes
