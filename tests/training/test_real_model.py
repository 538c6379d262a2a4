"""The real model on real data: split training equals unsplit training step by step (slow)."""

import copy

import pytest
import torch

from splitfed.data import batches, load_drug_reviews, tokenize_examples
from splitfed.models import LoraSpec, SplitLoraConfig, apply_lora, load_pretrained, split_model
from splitfed.training import OptimConfig, ReferenceTrainer, SplitTrainer


@pytest.mark.slow
def test_smollm2_split_training_matches_unsplit_on_drug_reviews():
    pre = load_pretrained("smollm2-135m")
    base = copy.deepcopy(pre.model)
    split = split_model(pre.model, (2, 28))
    apply_lora(split, SplitLoraConfig(*(LoraSpec(r=4, alpha=8),) * 3))
    optim = OptimConfig(lr=1e-3)
    st, rt = SplitTrainer(split, optim), ReferenceTrainer.matching(base, split, optim)
    examples = tokenize_examples(load_drug_reviews("train")[:4], pre.tokenizer, max_length=48)
    for i, batch in enumerate(batches(examples, 2, pad_token_id=pre.tokenizer.pad_token_id, padding_side="left")):
        torch.manual_seed(i)
        a = st.step(batch)
        torch.manual_seed(i)
        b = rt.step(batch)
        assert a.loss == pytest.approx(b.loss, abs=1e-4), i
