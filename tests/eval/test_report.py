import copy
import json
import re

import pytest

from splitfed.eval.report import (
    ReportError,
    base_ppl,
    beats_base,
    best_inversion,
    fmt_epsilon,
    goal,
    load_results,
    ppl_ratio,
    render_markdown,
    write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _inv(rouge_l: float, acc: float) -> dict:
    return {"target": "activations", "rouge_l": rouge_l, "rouge_1": rouge_l, "rouge_2": rouge_l, "token_accuracy": acc}


def _cell(key, cut, defense, family, level, eps, ppl, **attacks) -> dict:
    cell = {"key": key, "cut": cut, "defense": defense, "family": family, "level": level}
    if eps is not None:
        cell["epsilon"] = eps
    attacks = {k.replace("_", "-"): v for k, v in attacks.items()}
    return cell | {"ppl": ppl, "ppl_before": 32.7, "attacks": attacks, "seconds": 1.0}


NO_DP = {"activations": None, "server": None, "aggregator": None, "total": None}


def _results() -> dict:
    """Two cuts; errors, null and missing epsilons, missing attacks; the goal is not met at cut 2."""
    cells = [
        _cell(
            "a2/none",
            2,
            "none",
            "none",
            0.0,
            NO_DP,
            26.8,
            nearest_embedding=_inv(0.91, 0.95),
            learned_inversion=_inv(0.85, 0.9),
            white_box={"target": "activations", "error": "CUDA out of memory"},
            chance=_inv(0.04, 0.02),
            gradient_labels={"target": "gradients", "token_accuracy": 0.4},
            logit_lens={"target": "gradients", "token_accuracy": 0.3},
            update_inversion={
                "target": "update",
                "rouge_l": 0.05,
                "token_precision": 0.3,
                "token_recall": 0.1,
                "token_precision_matched": 0.3,
                "token_precision_heldout": 0.1,
                "token_precision_lift": 0.2,
                "clients": 1,
            },
            membership_loss={"target": "model", "auc": 0.52, "tpr_at_1pct_fpr": 0.02},
            membership_reference={"target": "model", "auc": 0.55, "tpr_at_1pct_fpr": 0.03},
        ),  # fmt: skip
        _cell(
            "a2/ldp-seq@1",
            2,
            "act LDP seq σ=1",
            "activation LDP (sequence)",
            1.0,
            {"activations": 120.0, "server": 120.0, "aggregator": None, "total": 120.0},
            27.5,
            nearest_embedding=_inv(0.45, 0.5),
            learned_inversion=_inv(0.5, 0.55),
            chance=_inv(0.04, 0.02),
        ),  # fmt: skip
        _cell(
            "a2/ldp-seq@4",
            2,
            "act LDP seq σ=4",
            "activation LDP (sequence)",
            4.0,
            {"activations": 8.0, "server": 8.0, "aggregator": None, "total": 8.0},
            40.0,
            nearest_embedding=_inv(0.06, 0.1),
            learned_inversion=_inv(0.08, 0.12),
            chance=_inv(0.03, 0.02),
        ),  # fmt: skip
        _cell(
            "a2/dpsgd",
            2,
            "DP-SGD σ=1",
            "DP-SGD",
            1.0,
            {"activations": None, "server": None, "aggregator": 3.2, "total": None},
            29.0,
            nearest_embedding=_inv(0.9, 0.93),
            learned_inversion={"target": "activations", "error": "diverged"},
            update_inversion={
                "target": "update",
                "rouge_l": 0.01,
                "token_precision": 0.1,
                "token_recall": 0.05,
                "clients": 1,
            },
            membership_loss={"target": "model", "auc": 0.5, "tpr_at_1pct_fpr": 0.01},
        ),  # fmt: skip
        _cell(
            "a2/secagg",
            2,
            "secure aggregation",
            "secure aggregation",
            0.0,
            None,
            26.8,
            update_inversion={
                "target": "update",
                "rouge_l": 0.02,
                "token_precision": 0.05,
                "token_recall": 0.01,
                "token_precision_matched": 0.05,
                "token_precision_heldout": 0.06,
                "token_precision_lift": -0.01,
                "clients": 4,
            },
            membership_loss={"target": "model", "error": "no reference model"},
        ),  # fmt: skip
        _cell(
            "a6/none",
            6,
            "none",
            "none",
            0.0,
            NO_DP,
            26.9,
            nearest_embedding=_inv(0.4, 0.5),
            learned_inversion=_inv(0.6, 0.7),
            chance=_inv(0.05, 0.03),
            gradient_labels={"target": "gradients", "token_accuracy": 0.35},
        ),  # fmt: skip
        _cell(
            "a6/ldp-tok@2",
            6,
            "act LDP token σ=2",
            "activation LDP (token)",
            2.0,
            {"activations": 12345.0, "server": 12345.0, "aggregator": None, "total": 12345.0},
            28.0,
            nearest_embedding=_inv(0.2, 0.25),
            learned_inversion=_inv(0.15, 0.2),
        ),  # fmt: skip
        _cell(
            "a6/topk",
            6,
            "top-k 50%",
            "compression",
            0.5,
            NO_DP,
            27.0,
            nearest_embedding=_inv(0.3, 0.35),
            learned_inversion=_inv(0.25, 0.3),
            logit_lens={"target": "gradients", "token_accuracy": 0.2},
        ),  # fmt: skip
    ]
    attackers = {
        "nearest-embedding": {"party": "server", "sees": "activations", "knows": "public weights"},
        "membership-loss": {"party": "anyone who can query the model", "sees": "logits", "knows": "candidates"},
    }
    setting = {"model": "smollm2-135m", "layers": 30, "top_cut": 28, "delta": 1e-5, "goal_cut": 2}
    return {"version": 1, "setting": setting | {"attackers": attackers}, "cells": cells}


def _met() -> dict:
    """`_results` plus two cells at cut 2 that meet the goal; the cheaper one has ε server 31.4."""
    results = _results()
    results["cells"] += [
        _cell(
            "a2/ldp-seq@2",
            2,
            "act LDP seq σ=2",
            "activation LDP (sequence)",
            2.0,
            {"activations": 31.4, "server": 31.4, "aggregator": None, "total": 31.4},
            28.5,
            nearest_embedding=_inv(0.07, 0.1),
            learned_inversion=_inv(0.06, 0.09),
        ),  # fmt: skip
        _cell(
            "a2/mix",
            2,
            "LDP + top-k",
            "activation LDP (sequence) + compression",
            1.0,
            NO_DP,
            29.0,
            nearest_embedding=_inv(0.05, 0.06),
        ),  # fmt: skip
    ]
    return results


def _write(tmp_path, results: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path


def test_best_inversion_skips_chance_errors_and_other_targets():
    cells = {c["key"]: c for c in _results()["cells"]}
    assert best_inversion(cells["a2/none"]) == ("nearest-embedding", 0.91)
    assert best_inversion(cells["a2/dpsgd"]) == ("nearest-embedding", 0.9)
    assert best_inversion(cells["a2/secagg"]) is None
    assert best_inversion({"attacks": {"chance": _inv(0.3, 0.3)}}) is None


def test_ppl_ratio():
    results = _results()
    cells = {c["key"]: c for c in results["cells"]}
    assert ppl_ratio(results, cells["a2/ldp-seq@4"]) == pytest.approx(40.0 / 26.8)
    assert ppl_ratio(results, cells["a6/none"]) == 1.0
    results["cells"] = [c for c in results["cells"] if c["key"] != "a6/none"]
    assert ppl_ratio(results, cells["a6/topk"]) is None


def test_goal_not_met_lists_the_frontier():
    g = goal(_results())
    assert g["cut"] == 2 and g["meeting"] == []
    assert [c["key"] for c in g["frontier"]] == ["a2/none", "a2/ldp-seq@1", "a2/ldp-seq@4"]
    assert g["verdict"].startswith("No setting reaches best inversion ROUGE-L ≤ 0.1 at ≤ 1.1× the undefended")
    assert "`a2/ldp-seq@4` (act LDP seq σ=4): ppl 40.0 (×1.49 of none), best ROUGE-L 0.08" in g["verdict"]
    assert (
        "ppl 40.0 (×1.49 of none), best ROUGE-L 0.08 (learned-inversion), no better than the public base"
        in (g["verdict"])
    )
    assert g["verdict"].endswith("The public base model, not fine-tuned, has ppl 32.7: a cell that does not beat it "
                                 "bought no utility and does not meet the goal.")  # fmt: skip
    # within 1.5x of none, but worse than the public base model (32.7): it bought nothing
    assert goal(_results(), rouge_max=0.1, ppl_ratio_max=1.5)["meeting"] == []
    better_base = _results() | {"base": {"model": "smollm2-135m", "ppl": 45.0}}
    assert goal(better_base, rouge_max=0.1, ppl_ratio_max=1.5)["meeting"][0]["key"] == "a2/ldp-seq@4"


def test_base_model_floor_from_the_run_or_the_cells():
    results = _results()
    cells = {c["key"]: c for c in results["cells"]}
    assert base_ppl(results) == 32.7  # older runs: the cells' ppl before training (LoRA B = 0)
    assert beats_base(results, cells["a2/none"]) is True and beats_base(results, cells["a2/ldp-seq@4"]) is False
    results["base"] = {"model": "smollm2-135m", "ppl": 26.85}
    assert base_ppl(results) == 26.85 and beats_base(results, cells["a6/none"]) is False
    for c in results["cells"]:
        del c["ppl_before"]
    del results["base"]
    assert base_ppl(results) is None and beats_base(results, cells["a2/none"]) is None


def test_goal_met_names_the_cheapest_cell_and_its_epsilon():
    g = goal(_met())
    assert [c["key"] for c in g["meeting"]] == ["a2/ldp-seq@2", "a2/mix"]
    assert g["verdict"].startswith("The goal (best inversion ROUGE-L ≤ 0.1 at ≤ 1.1× the undefended perplexity)")
    assert "met at cut 2 (2 settings meet it; this one costs the least perplexity) by `a2/ldp-seq@2`" in g["verdict"]
    assert "ε activations = 31.4 (δ = 1e-05), ε server (all cut traffic) = 31.4. The public base model" in g["verdict"]


def test_write_report(tmp_path):
    paths = write_report(_write(tmp_path, _results()))
    names = ["results.md", "attack_vs_ppl.png", "attack_vs_epsilon.png", "update_membership.png"]
    assert paths == [tmp_path / n for n in names]
    for p in paths[1:]:
        assert p.read_bytes()[:8] == PNG
    assert not list(tmp_path.glob("*.tmp"))
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert md.startswith("# Attack and defense evaluation: smollm2-135m\n")
    assert "- goal cut: 2" in md
    assert "| nearest-embedding | server | activations | public weights |" in md
    assert "No setting reaches" in md
    assert "Public base model (not fine-tuned, evaluated the same way): ppl 32.7." in md
    header = (
        "| cut | defense | ε activations | ε server | ε aggregator | ppl (× none) | beats base "
        "| nearest-embedding ROUGE-L / acc"
        " | learned-inversion ROUGE-L / acc | white-box ROUGE-L / acc | chance ROUGE-L / acc | best |"
    )
    assert header in md
    assert (
        "| 2 | none | ∞ | ∞ | ∞ | 26.8 (×1.00) | yes | 0.91 / 0.95 | 0.85 / 0.90 | err | 0.040 / 0.020 "
        "| nearest-embedding 0.91 |" in md
    )
    assert (
        "| 2 | act LDP seq σ=4 | 8 | 8 | ∞ | 40.0 (×1.49) | **no** | 0.060 / 0.10 | 0.080 / 0.12 | - | 0.030 / 0.020 |"
        in md
    )
    assert (
        "| 6 | act LDP token σ=2 | 1.23e+04 | 1.23e+04 | ∞ | 28.0 (×1.04) | yes | 0.20 / 0.25 | 0.15 / 0.20 | - | - |"
        in md
    )
    assert "- `a2/none` white-box: CUDA out of memory" in md
    assert "- `a2/dpsgd` learned-inversion: diverged" in md
    assert "| cut | defense | gradient-labels acc | logit-lens acc |" in md
    assert "| 6 | top-k 50% | - | 0.20 |" in md
    assert "| 2 | none | ∞ | 0.050 | 0.30 / 0.10 / 0.20 | 1 | 0.52 / 0.020 | 0.55 / 0.030 |" in md
    assert "| 2 | secure aggregation | - | 0.020 | 0.050 / 0.060 / -0.010 | 4 | err | - |" in md
    assert "- `a2/secagg` membership-loss: no reference model" in md
    # Rows sorted by cut, undefended first; a cell without an activation attack is not in Table 1
    table1 = md.split("## Table 1")[1].split("## Table 2")[0]
    assert "secure aggregation" not in table1
    assert table1.index("| 2 | none") < table1.index("| 2 | act LDP") < table1.index("| 6 | none")


def test_write_report_goal_met(tmp_path):
    write_report(_write(tmp_path, _met()))
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "The goal (best inversion ROUGE-L ≤ 0.1" in md and "by `a2/ldp-seq@2`" in md


def test_only_tables_and_plots_with_data(tmp_path):
    results = _results()
    results["cells"] = [c for c in results["cells"] if c["key"] in ("a6/none", "a6/topk")]
    for c in results["cells"]:
        c["attacks"] = {k: v for k, v in c["attacks"].items() if v["target"] == "activations"}
    results["setting"]["goal_cut"] = 6
    paths = write_report(_write(tmp_path, results))
    assert [p.name for p in paths] == ["results.md", "attack_vs_ppl.png"]  # no finite ε, no update/membership
    md = paths[0].read_text(encoding="utf-8")
    assert "## Table 1" in md and "## Table 2" not in md and "## Table 3" not in md
    assert "Errors:" not in md


def test_render_markdown_without_goal_cells():
    results = _results()
    results["setting"]["goal_cut"] = 4
    assert "No setting reaches" in render_markdown(results)
    assert "at cut 4: no cell there has both a perplexity and an inversion." in goal(results)["verdict"]


def test_fmt_epsilon():
    assert [fmt_epsilon(e) for e in (8.0, 12.3, 12345.0, 0.5, float("inf"))] == ["8", "12.3", "1.23e+04", "0.5", "∞"]


def _broken(change) -> dict:
    results = copy.deepcopy(_results())
    change(results)
    return results


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(version=2), "results version 2, expected 1"),
        (lambda r: r.pop("version"), "results version None, expected 1"),
        (lambda r: r.pop("cells"), "the file lacks 'cells'"),
        (lambda r: r["setting"].pop("goal_cut"), "setting lacks 'goal_cut'"),
        (lambda r: [r["cells"][1].pop(k) for k in ("family", "level")], "cell 1 lacks 'family', 'level'"),
        (lambda r: r["cells"][0]["attacks"]["chance"].pop("target"), "cell 'a2/none' attack 'chance' lacks 'target'"),
    ],
)
def test_load_results_rejects(tmp_path, change, message):
    path = _write(tmp_path, _broken(change)) / "results.json"
    with pytest.raises(ReportError, match="^" + re.escape(f"{path}: {message}")):
        load_results(path)


def test_load_results_rejects_non_json(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(ReportError, match="results.json: not JSON"):
        load_results(path)
    assert load_results(_write(tmp_path, _results()) / "results.json")["setting"]["goal_cut"] == 2
