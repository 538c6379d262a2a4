"""The public base model is the utility floor: a client's summary names it and warns when it is not beaten."""

from __future__ import annotations

import pytest

WARNING = "does not beat the public base model"


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory):
    """tiny-llama pre-trained a little on the drug-review test split: a base model worth beating
    (the random one is so poor that any perturbation of it lowers the perplexity)."""
    import numpy as np
    import torch

    from splitfed.data import batches, load_drug_reviews, tokenize_examples
    from splitfed.models import load_pretrained

    cache = tmp_path_factory.mktemp("model-cache")  # a cache of its own, where tiny-llama is the trained one
    pre = load_pretrained("tiny-llama", cache_dir=cache)
    texts = tokenize_examples(load_drug_reviews("test"), pre.tokenizer, max_length=48)
    model = pre.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for batch in batches(texts, 16, rng=np.random.default_rng(0), drop_last=True, pad_token_id=0):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(pre.path)
    return str(cache)


def _run(make_run, **overrides):
    run = make_run(clients=1, data__eval_examples=8, **overrides)
    server, client = run.server(), run.client(0)
    assert run.wait(client) == 0, run.log("client-0") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    done = next(m for m in run.metrics("client-0") if m["event"] == "done")
    return run, done


def test_a_run_that_improves_names_the_base_model_and_does_not_warn(make_run):
    run, done = _run(make_run)
    log = run.log("client-0")
    assert "(public base model) ->" in log, log
    assert done["utility"]["beats_base"] is True
    assert done["utility"]["base_ppl"] == done["ppl_before"] > done["ppl_after"] == done["utility"]["tuned_ppl"]
    assert WARNING not in log, log


def test_a_private_run_drowned_in_noise_warns_that_it_bought_no_utility(make_run, trained_base):
    # noise 100x the clip on both cut channels and on the client's own adapter gradients, at a
    # large learning rate: every adapter takes random steps away from the base model
    run, done = _run(
        make_run,
        model__cache_dir=trained_base,
        training__lr=3.0,
        privacy__enabled=True,
        privacy__secure_noise=False,
        privacy__activations={"enabled": True, "noise_multiplier": 100.0, "clip": 4.0},
        privacy__gradients={"enabled": True, "noise_multiplier": 100.0, "clip": 1.0},
        privacy__dpsgd={"enabled": True, "noise_multiplier": 100.0, "max_grad_norm": 1.0},
    )
    log = run.log("client-0")
    assert done["utility"]["beats_base"] is False, done
    assert done["ppl_after"] >= done["ppl_before"]
    warning = f"client-0: WARNING: the fine-tuned model (ppl {done['ppl_after']:.2f}) {WARNING}"
    assert warning in log and "this run bought no utility" in log, log
    assert f"held-out perplexity {done['ppl_before']:.2f} (public base model)" in log, log
