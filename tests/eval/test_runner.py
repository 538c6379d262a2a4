"""The grid on a tiny model: attacks measure something real, runs resume, the CLI works."""

from __future__ import annotations

import json

import pytest

from splitfed.cli.main import main
from splitfed.config.tables import parse_table
from splitfed.eval import runner
from splitfed.eval.config import AttackConfig

ACTIVATION_ATTACKS = ["chance", "nearest-embedding", "learned-inversion", "white-box"]


def _config(defenses, attacks=ACTIVATION_ATTACKS, generation=0, **train):
    return parse_table(
        AttackConfig,
        {
            "model": {"name": "tiny-llama", "cuts": [1], "top_cut": -1, "goal_cut": 1},
            "data": {"max_length": 32, "train_examples": 12, "heldout_examples": 8, "victims": 6, "aux_texts": 60},
            "train": {"steps": 3, "batch_size": 4, "clients": 2, **train},
            "attacks": {
                "names": attacks,
                "learned": {"steps": 150},
                "whitebox": {"steps": 60},
                "update": {"texts": 2},
                "generation": {"new_tokens": generation, "prompt_tokens": 12},
            },
            "defense": defenses,
        },
        "",
    )


def _best(cell, key="token_accuracy", target="activations"):
    return max(a[key] for n, a in cell["attacks"].items() if a["target"] == target and not n.startswith("chance"))


def test_inversion_far_above_chance_undefended_and_near_chance_under_strong_noise(tmp_path):
    cfg = _config([{"name": "none"}, {"name": "strong", "activation_noise_multiplier": 20.0}])
    res = runner.run(cfg, tmp_path, show_progress=False)
    none, strong = res["cells"]
    for cell in (none, strong):
        assert all("error" not in a for a in cell["attacks"].values()), cell["attacks"]
    chance = none["attacks"]["chance"]["token_accuracy"]
    assert chance < 0.2
    assert _best(none) > 0.9 and _best(none, "rouge_l") > 0.7  # the undefended cut leaks the input
    assert _best(strong) < chance + 0.1  # sigma = 40 clip per coordinate: nothing left to invert
    assert none["epsilon"]["activations"] is None  # raw activations: no guarantee (inf)
    assert 0 < strong["epsilon"]["activations"] < 0.5  # the ledger's statement for nm 20 (analytic Gaussian)
    assert strong["epsilon"]["server"] is None  # the raw returned gradient still has no guarantee


def test_split_generation_is_attacked_through_the_same_defense_and_stated_per_prompt(tmp_path):
    attacks = ["chance", "nearest-embedding", "white-box"]
    cfg = _config([{"name": "none"}, {"name": "strong", "activation_noise_multiplier": 20.0}], attacks, generation=8)
    res = runner.run(cfg, tmp_path, show_progress=False)
    none, strong = res["cells"]
    for cell in (none, strong):
        assert all("error" not in a for a in cell["attacks"].values()), cell["attacks"]
        assert {n for n, a in cell["attacks"].items() if a["target"] == "generation"} == {
            f"{n}@generation" for n in attacks
        }
    chance = none["attacks"]["chance@generation"]["token_accuracy"]
    assert _best(none, target="generation") > 0.8 and chance < 0.2  # prompt and answer recovered from the view
    assert _best(strong, target="generation") < chance + 0.1
    assert none["epsilon"]["generation"] is None  # sent without noise: recorded as non-private
    # one prompt: the prefill and 7 decode positions at nm 20, dearer than one training release
    assert strong["epsilon"]["activations"] < strong["epsilon"]["generation"] < 2.0
    # the noise at inference costs utility: clean ppl of the same model < ppl as generated under nm 20
    assert none["ppl_generation"] == pytest.approx(none["ppl"], rel=1e-4)  # no noise: the same model, the same ppl
    assert strong["ppl_generation"] > strong["ppl"]  # (a tiny random model: near uniform either way)
    ledger = list((tmp_path / "cells").glob("*strong*/privacy/inference/client-0.jsonl"))
    assert len(ledger) == 1  # the product's own inference ledger stated it
    from splitfed.eval.report import write_report

    write_report(tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "## Table 4: split generation" in md and "| 1 | strong | " in md.split("Table 4")[1]


def test_top_side_update_and_membership_attacks_run_and_are_scored(tmp_path):
    attacks = ["gradient-labels", "logit-lens", "update-inversion", "membership-loss", "membership-reference"]
    cfg = _config([{"name": "secagg", "secure_aggregation": True, "dpsgd_epsilon": 8.0}], attacks=attacks)
    (cell,) = runner.run(cfg, tmp_path, show_progress=False)["cells"]
    a = cell["attacks"]
    assert all("error" not in v for v in a.values()), a
    assert a["gradient-labels"]["token_accuracy"] > 0.5  # the raw returned gradient gives the labels away
    assert a["update-inversion"]["clients"] == 2
    assert 0 <= a["membership-loss"]["auc"] <= 1 and 0 <= a["membership-reference"]["tpr_at_1pct_fpr"] <= 1
    assert cell["epsilon"]["aggregator"] == pytest.approx(8.0, rel=0.02)


def test_an_interrupted_run_resumes_from_the_cells_done(tmp_path, monkeypatch):
    cfg = _config([{"name": "none"}, {"name": "n1", "activation_noise_multiplier": 1.0}], attacks=["chance"])
    real = runner.run_cell
    calls = []

    def interrupted(cfg, a, d, *args, **kw):
        calls.append(d.name)
        if d.name == "n1":
            raise KeyboardInterrupt
        return real(cfg, a, d, *args, **kw)

    monkeypatch.setattr(runner, "run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, tmp_path, show_progress=False)
    assert [c["key"] for c in json.loads((tmp_path / "results.json").read_text())["cells"]] == ["a1/none"]
    calls.clear()
    monkeypatch.setattr(runner, "run_cell", lambda *a, **k: (calls.append(a[2].name), real(*a, **k))[1])
    res = runner.run(cfg, tmp_path, show_progress=False)
    assert calls == ["n1"]  # the finished cell is not run again
    assert [c["key"] for c in res["cells"]] == ["a1/none", "a1/n1"]
    other = _config([{"name": "none"}], attacks=["chance"], steps=4)
    with pytest.raises(runner.RunDirError, match="different config"):
        runner.run(other, tmp_path, show_progress=False)


def test_cli_run_report_list(tmp_path, capsys):
    config = tmp_path / "attack.toml"
    config.write_text(
        '[model]\nname = "tiny-llama"\ncuts = [0]\ntop_cut = -1\ngoal_cut = 0\n'
        "[data]\nmax_length = 24\ntrain_examples = 8\nheldout_examples = 8\nvictims = 4\naux_texts = 30\n"
        '[train]\nsteps = 2\n[attacks]\nnames = ["chance", "nearest-embedding"]\n'
        '[[defense]]\nname = "none"\n'
    )
    out = tmp_path / "run"
    assert main(["attack", "run", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "results.md" in text and "No setting reaches" in text
    md = (out / "results.md").read_text()
    assert "nearest-embedding" in md and "| 0 | none |" in md
    assert main(["attack", "report", str(out)]) == 0
    assert main(["attack", "list"]) == 0
    listed = capsys.readouterr().out
    assert "learned-inversion" in listed and "activation_epsilon" in listed
    assert main(["attack", "report", str(tmp_path / "nowhere")]) == 2
    config.write_text("[model]\ncuts = [0, 0]\n")
    assert main(["attack", "run", "--config", str(config), "--out", str(out)]) == 2
    assert "model.cuts" in capsys.readouterr().err


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"model": {"cuts": [0, 1], "goal_cut": 2}}, "model.goal_cut"),
        ({"data": {"victims": 500}}, "data.victims"),
        ({"attacks": {"model_cuts": [3]}}, "attacks.model_cuts"),
        ({"defense": [{"name": "x", "activation_epsilon": 1.0, "activation_noise_multiplier": 1.0}]}, "defense"),
        ({"defense": [{"name": "x"}, {"name": "x"}]}, "defense.name"),
        ({"defense": [{"name": "x", "cuts": [7]}]}, "defense.cuts"),
    ],
)
def test_bad_configs_name_the_key(patch, key):
    from splitfed.config import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_table(AttackConfig, patch, "")
    assert err.value.key.startswith(key), err.value


def test_unknown_attack_is_refused_before_any_work(tmp_path, capsys):
    config = tmp_path / "attack.toml"
    config.write_text('[model]\nname = "tiny-llama"\ncuts = [0]\ngoal_cut = 0\n[attacks]\nnames = ["mind-reading"]\n')
    assert main(["attack", "run", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "mind-reading" in err and "available" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "cells").exists()


def test_a_failing_attack_is_recorded_and_the_cell_kept(tmp_path, monkeypatch):
    from splitfed.eval.attacks.activations import NearestEmbedding

    def broken(self, view):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(NearestEmbedding, "run", broken)
    cfg = _config([{"name": "none"}], attacks=["chance", "nearest-embedding"])
    (cell,) = runner.run(cfg, tmp_path, show_progress=False)["cells"]
    assert cell["attacks"]["nearest-embedding"]["error"] == "RuntimeError: out of memory"
    assert "rouge_l" in cell["attacks"]["chance"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["cells"][0]["attacks"]["nearest-embedding"]["error"]


def test_update_guess_is_scored_as_lift_over_held_out_reviews():
    import torch

    from splitfed.eval.attacks.base import TextGuess

    z = torch.zeros(1, 1, dtype=torch.long)
    truth = runner.Truth(
        ids=z, mask=z, labels=z, texts=["x"], train_texts=["a b c"],
        train_tokens={1, 2, 3, 4, 5}, heldout_tokens={1, 2, 9}, matched_tokens={1, 2, 3}, members=1,
    )  # fmt: skip
    got = runner.score(TextGuess(texts=["a b"], tokens=[1, 2, 3, 7]), truth, tokenizer=None)
    assert got["token_precision"] == 0.75  # 1, 2, 3 of 4 guessed are in the training set
    assert (got["token_precision_matched"], got["token_precision_heldout"]) == (0.75, 0.5)
    assert got["token_precision_lift"] == 0.25  # only token 3 is evidence of the training data


def test_every_attack_gets_a_pristine_public_model(tmp_path, monkeypatch):
    """Regression: update-inversion loads the trained adapters into the public model it is
    given; the membership reference that ran after it then scored the fine-tuned model
    against itself (AUC exactly 0.5 in every cell)."""
    import torch

    from splitfed.eval.attacks.activations import NearestEmbedding
    from splitfed.eval.attacks.base import TokenGuess

    seen = []

    def mutate_then_check(self, view):
        first = view.public_split()
        with torch.no_grad():
            for p in first.bottom.parameters():
                p.add_(1.0)
        second = view.public_split()
        seen.append(
            all(
                not torch.equal(a, b)
                for a, b in zip(first.bottom.parameters(), second.bottom.parameters(), strict=True)
            )
        )
        return TokenGuess(ids=torch.zeros_like(view.activations.mask), shift=0)

    monkeypatch.setattr(NearestEmbedding, "run", mutate_then_check)
    (cell,) = runner.run(_config([{"name": "none"}], attacks=["nearest-embedding"]), tmp_path, show_progress=False)[
        "cells"
    ]
    assert "error" not in cell["attacks"]["nearest-embedding"], cell["attacks"]
    assert seen == [True]
