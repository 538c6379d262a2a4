"""The attacks by name, their options and the defense knobs `[[defense]]` accepts (for `splitfed attack list`)."""

from __future__ import annotations

import dataclasses

from splitfed.config.fields import ConfigError, toml_key
from splitfed.eval.attacks.activations import LearnedInversion, NearestEmbedding, PublicTextBaseline, WhiteBoxInversion
from splitfed.eval.attacks.membership import LossThreshold, ReferenceCalibrated
from splitfed.eval.attacks.top import GradientLabels, LogitLens
from splitfed.eval.attacks.update import UpdateInversion
from splitfed.eval.config import AttackSection, DefenseSpec
from splitfed.eval.options import GenerationOptions, LearnedOptions, MembershipOptions, UpdateOptions, WhiteBoxOptions

ATTACKS = {
    cls.name: cls
    for cls in (
        PublicTextBaseline,
        NearestEmbedding,
        LearnedInversion,
        WhiteBoxInversion,
        LogitLens,
        GradientLabels,
        UpdateInversion,
        LossThreshold,
        ReferenceCalibrated,
    )
}


def attacks_for(names) -> list[type]:
    """The attack classes named (all when `names` is empty); unknown names raise ValueError."""
    if not names:
        return list(ATTACKS.values())
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ConfigError(f"attacks.names: unknown attacks {unknown}; available: {', '.join(ATTACKS)}")
    return [ATTACKS[n] for n in names]


def build(attack_cls: type, options: AttackSection):
    """`attack_cls` built with its options from `options` (no argument when it has none)."""
    return attack_cls() if attack_cls.Options is None else attack_cls(options.options(attack_cls.Options))


def attack_knobs() -> list[tuple[str, str]]:
    """(dotted key, help) of every attack option (``[attacks.learned] steps`` is ``attacks.learned.steps``)."""
    tables = (LearnedOptions, WhiteBoxOptions, UpdateOptions, MembershipOptions, GenerationOptions)
    return [(f"{t._key}.{toml_key(f)}", f.metadata.get("help", "")) for t in tables for f in dataclasses.fields(t)]


def defense_knobs() -> list[tuple[str, str]]:
    """(key, help) of every `[[defense]]` field."""
    return [(f.name, f.metadata.get("help", "")) for f in dataclasses.fields(DefenseSpec)]
