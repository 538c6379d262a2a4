"""Each attack's typed options: `[attacks.<attack>]` tables, their defaults, their errors."""

from __future__ import annotations

import pytest

from splitfed.config import ConfigError
from splitfed.config.tables import parse_table
from splitfed.config.toml import load_toml
from splitfed.eval.attacks.activations import LearnedInversion, NearestEmbedding, WhiteBoxInversion
from splitfed.eval.attacks.membership import LossThreshold, ReferenceCalibrated
from splitfed.eval.attacks.update import UpdateInversion
from splitfed.eval.config import AttackConfig, AttackSection
from splitfed.eval.options import LearnedOptions, MembershipOptions, UpdateOptions, WhiteBoxOptions
from splitfed.eval.registry import ATTACKS, build
from splitfed.eval.runner import attack_options


def _attacks(raw: dict) -> AttackSection:
    return parse_table(AttackConfig, {"attacks": raw}, "").attacks


def test_defaults_are_the_efforts_the_grid_used():
    a = _attacks({})
    assert a.learned == LearnedOptions(steps=400, width=1, hidden=768, batch=512, lr=2e-3)
    assert (a.whitebox.steps, a.whitebox.lr) == (150, 0.05)
    assert a.update == UpdateOptions(top_k=200, texts=8, length=32, lam=4.0, windows=32, context=32, batch=8)
    assert a.membership.batch == 16


def test_each_attack_is_built_with_its_own_options():
    a = _attacks(
        {
            "learned": {"steps": 7, "width": 2},
            "whitebox": {"steps": 9, "lr": 0.1},
            "update": {"top_k": 5, "lambda": 2},
            "membership": {"batch": 3},
        }
    )
    assert build(LearnedInversion, a).options == LearnedOptions(steps=7, width=2)
    assert build(WhiteBoxInversion, a).options == WhiteBoxOptions(steps=9, lr=0.1)
    assert build(UpdateInversion, a).options == UpdateOptions(top_k=5, lam=2.0)
    assert build(LossThreshold, a).options == build(ReferenceCalibrated, a).options == MembershipOptions(batch=3)
    assert isinstance(build(NearestEmbedding, a), NearestEmbedding)
    assert all(isinstance(build(cls, a), cls) for cls in ATTACKS.values())


def test_the_keys_once_read_but_never_written_are_settable():
    a = _attacks({"learned": {"width": 3}, "whitebox": {"lr": 0.2}, "membership": {"batch": 4}, "update": {"top_k": 9}})
    assert (a.learned.width, a.whitebox.lr, a.membership.batch, a.update.top_k) == (3, 0.2, 4, 9)


@pytest.mark.parametrize(
    "raw, key, words",
    [
        ({"update": {"top_k": 0}}, "attacks.update.top_k", "expected an integer > 0, got 0"),
        ({"update": {"lambda": -1.0}}, "attacks.update.lambda", "expected a number >= 0, got -1.0"),
        ({"learned": {"width": 1.5}}, "attacks.learned.width", "expected an integer >= 0, got 1.5 (float)"),
        ({"whitebox": {"lr": 0}}, "attacks.whitebox.lr", "expected a number > 0, got 0"),
        ({"membership": {"batch": True}}, "attacks.membership.batch", "got true (boolean)"),
    ],
)
def test_a_bad_value_names_its_key(raw, key, words):
    with pytest.raises(ConfigError) as err:
        _attacks(raw)
    assert err.value.key == key and words in str(err.value), err.value


@pytest.mark.parametrize(
    "raw, suggestion",
    [
        ({"update": {"topk": 5}}, "did you mean 'top_k'?"),
        ({"learned": {"step": 5}}, "did you mean 'steps'?"),
        ({"learned_steps": 300}, "did you mean [attacks.learned] steps?"),
        ({"whitebox_lr": 0.1}, "did you mean [attacks.whitebox] lr?"),
        ({"update_lambda": 2.0}, "did you mean [attacks.update] lambda?"),
        ({"update_top_k": 5}, "did you mean [attacks.update] top_k?"),
        ({"membership_batch": 5}, "did you mean [attacks.membership] batch?"),
    ],
)
def test_an_unknown_key_suggests_the_right_one(raw, suggestion):
    with pytest.raises(ConfigError) as err:
        _attacks(raw)
    assert str(err.value).endswith(suggestion), err.value


@pytest.mark.parametrize("name", ["attack.toml", "attack_cut2.toml"])
def test_the_examples_use_the_attack_tables(name):
    from pathlib import Path

    cfg = load_toml(AttackConfig, Path(__file__).parents[2] / "examples" / name)
    a = cfg.attacks
    assert (a.learned.steps, a.whitebox.steps, a.update.texts, a.model_cuts) == (300, 100, 4, (2,))


def test_decoded_texts_are_capped_at_the_example_length():
    cfg = parse_table(AttackConfig, {"data": {"max_length": 24}, "attacks": {"update": {"length": 40, "top_k": 7}}}, "")
    assert attack_options(cfg).update == UpdateOptions(length=24, top_k=7)
    cfg = parse_table(AttackConfig, {"data": {"max_length": 64}}, "")
    assert attack_options(cfg).update.length == 32


def test_the_generation_example_attacks_split_generation():
    from pathlib import Path

    cfg = load_toml(AttackConfig, Path(__file__).parents[2] / "examples" / "attack_generation.toml")
    assert cfg.attacks.generation.new_tokens == 16 and cfg.model.cuts == (2,)
    assert [d.name for d in cfg.defenses][:2] == ["none", "seq nm 0.003"]
