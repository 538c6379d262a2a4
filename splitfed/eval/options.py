"""Each attack's effort, typed: one sub-table of ``[attacks]`` per attack that has knobs::

    [attacks.learned]
    steps = 300
    width = 1

    [attacks.update]
    top_k = 200
    lambda = 4.0

Validated by the config field engine (a bad value names its dotted key, an unknown key gets
a suggestion).  An attack takes its options object when it is built; the defaults are the
efforts the grid has always used.  Only the standard library is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from splitfed.config.fields import Section, opt


@dataclass(frozen=True)
class LearnedOptions(Section):
    """[attacks.learned]: the learned inversion model (`learned-inversion`)."""

    _key: ClassVar[str] = "attacks.learned"

    steps: int = opt(400, "Training steps of the inversion model.", gt=0)
    width: int = opt(1, "Neighbours on each side of a position the model reads.", ge=0)
    hidden: int = opt(768, "Hidden width of the model's MLP.", gt=0)
    batch: int = opt(512, "Positions per training step.", gt=0)
    lr: float = opt(2e-3, "AdamW learning rate.", gt=0)


@dataclass(frozen=True)
class WhiteBoxOptions(Section):
    """[attacks.whitebox]: the white-box optimisation (`white-box`)."""

    _key: ClassVar[str] = "attacks.whitebox"

    steps: int = opt(150, "Adam steps on the soft input embeddings.", gt=0)
    lr: float = opt(0.05, "Adam learning rate, in units of the mean embedding norm.", gt=0)


@dataclass(frozen=True)
class UpdateOptions(Section):
    """[attacks.update]: the update inversion (`update-inversion`)."""

    _key: ClassVar[str] = "attacks.update"

    top_k: int = opt(200, "Tokens in the bag-of-tokens guess.", gt=0)
    texts: int = opt(8, "Texts decoded.", gt=0)
    length: int = opt(32, "Tokens per decoded text (at most; the grid caps it at data.max_length).", gt=0)
    lam: float = opt(4.0, "Weight of the differential term while decoding.", ge=0, toml="lambda")
    windows: int = opt(32, "Auxiliary context windows for the bag of tokens.", gt=0)
    context: int = opt(32, "Tokens per context window.", gt=0)
    batch: int = opt(8, "Context windows per forward pass.", gt=0)
    temperature: float = opt(0.0, "0: greedy decoding; > 0: sampling, seeded by train.seed.", ge=0)
    weight: float = opt(0.0, "Bag of tokens: mean of p1^weight * (log p1 - log p0) (0: the plain log-ratio).", ge=0)


@dataclass(frozen=True)
class MembershipOptions(Section):
    """[attacks.membership]: both membership inferences (`membership-loss`, `membership-reference`)."""

    _key: ClassVar[str] = "attacks.membership"

    batch: int = opt(16, "Candidates per forward pass (the scores do not depend on it).", gt=0)


@dataclass(frozen=True)
class GenerationOptions(Section):
    """[attacks.generation]: the activation attacks again, on what the server receives while the
    trained victim generates (split inference): each held-out prompt's activations, then one
    position per new token."""

    _key: ClassVar[str] = "attacks.generation"

    prompt_tokens: int = opt(16, "Tokens of each held-out example used as a prompt (fewer when it is shorter).", gt=0)
    new_tokens: int = opt(16, "Tokens generated greedily per prompt; 0 = do not attack generation.", ge=0)
