"""Bad cuts and unsupported models fail with errors that say what is wrong."""

import pytest
import torch
from splitfed_testing import tiny_config, tiny_model

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
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration(tiny_config("t5"))
    with pytest.raises(UnsupportedModelError, match=r"T5ForConditionalGeneration.*encoder-decoder"):
        split_model(model, (0, 1))


def test_masked_lm_refused_naming_what_is_missing():
    from transformers import BertForMaskedLM

    model = BertForMaskedLM(tiny_config("bert"))
    with pytest.raises(UnsupportedModelError, match=r"BertForMaskedLM.*missing a base model attribute.*LM head"):
        split_model(model, (0, 1))


def test_headless_model_refused():
    from transformers import GPT2Model

    with pytest.raises(UnsupportedModelError, match=r"missing .*LM head"):
        split_model(GPT2Model(tiny_config("gpt2")), (0, 1))


def test_not_a_model():
    with pytest.raises(UnsupportedModelError, match="no Hugging Face `config`"):
        split_model(torch.nn.Linear(2, 2), (0, 1))


def test_unusual_forward_is_caught_by_verification():
    """Granite has the Llama layout but multiplies embeddings and divides logits in its
    forward: the split check must notice rather than train silently wrong."""
    model = tiny_model("granite", embedding_multiplier=12.0, logits_scaling=8.0)
    with pytest.raises(SplitMismatchError, match=r"GraniteForCausalLM.*differs from the unsplit model"):
        split_model(model, (1, 2))


def test_gemma_scaled_embeddings_split_exactly():
    """Gemma scales inside its embedding module, so the usual layout reproduces it."""
    split_model(tiny_model("gemma", num_hidden_layers=2), (1, 2))  # verification passes
