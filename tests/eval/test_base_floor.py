"""The public base model's line in the attack suite: computed once per run, the same way as the cells' utility."""

from __future__ import annotations

import json

import pytest

from splitfed.config.tables import parse_table
from splitfed.eval import runner, train
from splitfed.eval.config import AttackConfig
from splitfed.eval.report import base_ppl, beats_base, render_markdown


def _config(defenses):
    return parse_table(
        AttackConfig,
        {
            "model": {"name": "tiny-llama", "cuts": [1], "top_cut": -1, "goal_cut": 1},
            "data": {"max_length": 32, "train_examples": 12, "heldout_examples": 8, "victims": 6, "aux_texts": 60},
            "train": {"steps": 3, "batch_size": 4, "clients": 2, "lr": 1e-2},
            "attacks": {"names": ["chance"]},
            "defense": defenses,
        },
        "",
    )


def test_base_model_line_is_computed_once_like_the_cells_and_kept_on_resume(tmp_path, monkeypatch):
    evaluated = []  # (whether the model carries LoRA, perplexity) for every held-out evaluation
    real = train.heldout_perplexity

    def spy(split, examples, pad):
        ppl = real(split, examples, pad)
        evaluated.append(
            (any("lora_" in name for part in split.parts.values() for name, _ in part.named_parameters()), ppl)
        )
        return ppl

    monkeypatch.setattr(train, "heldout_perplexity", spy)
    cfg = _config([{"name": "none"}, {"name": "noised", "activation_noise_multiplier": 10.0}])
    res = runner.run(cfg, tmp_path, show_progress=False)
    base = res["base"]["ppl"]
    # one evaluation of the model without adapters (the base line), then before/after per cell
    assert [has_lora for has_lora, _ in evaluated] == [False, True, True, True, True]
    assert evaluated[0][1] == base
    none, noised = res["cells"]
    # LoRA at initialisation (B = 0) is the base model: the cells' "before" equals the base line
    assert none["ppl_before"] == pytest.approx(base, rel=1e-5) and noised["ppl_before"] == pytest.approx(base, rel=1e-5)
    assert json.loads((tmp_path / "results.json").read_text())["base"] == {"model": "tiny-llama", "ppl": base}
    assert base_ppl(res) == base
    assert beats_base(res, none) is (none["ppl"] < base) and beats_base(res, noised) is (noised["ppl"] < base)
    md = render_markdown(res)
    assert f"Public base model (not fine-tuned, evaluated the same way): ppl {base:.1f}." in md
    evaluated.clear()
    runner.run(cfg, tmp_path, show_progress=False)  # resumed: nothing left to do, the base line is kept
    assert evaluated == []
