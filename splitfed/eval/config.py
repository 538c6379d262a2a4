"""`attack.toml`: the model, the data, the training each defense gets, the attacks, the defenses.

A run is a grid of cells: every ``[[defense]]`` at every cut in ``model.cuts`` (or at the
cuts it names).  Each cell trains the client under that defense, states its epsilon, and
runs every attack that applies.  Validated with the same field engine as the run config::

    [model]
    name = "smollm2-135m"
    cuts = [0, 1, 2, 4]

    [attacks.learned]
    steps = 300

    [[defense]]
    name = "none"

    [[defense]]
    name = "seq-eps8"
    activation_epsilon = 8.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

from splitfed.config.fields import Section, key_error, opt, req, sub
from splitfed.config.parties import Compression
from splitfed.eval.options import GenerationOptions, LearnedOptions, MembershipOptions, UpdateOptions, WhiteBoxOptions

Unit = Literal["sequence", "token"]
Opts = TypeVar("Opts")


@dataclass(frozen=True)
class ModelSection(Section):
    """[model]: the public pretrained model and where it is cut."""

    _key: ClassVar[str] = "model"

    name: str = opt("smollm2-135m", "A model name from `splitfed models list`.", nonempty=True)
    cuts: tuple[int, ...] = opt((0, 1, 2, 4), "Bottom cut points a to attack (layers the client keeps).")
    top_cut: int = opt(-2, "b: the Top keeps layers [b, n); a negative value counts from n.")
    goal_cut: int = opt(2, "The demo's cut a, where the results are held against the goal.", ge=0)
    lora_r: int = opt(8, "LoRA rank on every part (alpha = 2r).", gt=0)

    def _check(self) -> None:
        if not self.cuts or any(a < 0 for a in self.cuts) or len(set(self.cuts)) != len(self.cuts):
            raise key_error("model.cuts", f"expected distinct integers >= 0, got {list(self.cuts)}")


@dataclass(frozen=True)
class DataSection(Section):
    """[data]: private text (drug reviews), held-out text, public auxiliary text (news)."""

    _key: ClassVar[str] = "data"

    max_length: int = opt(64, "Tokens per example (prompt + review, truncated).", ge=8)
    train_examples: int = opt(120, "The victim client's private training examples (the members).", gt=0)
    heldout_examples: int = opt(48, "Test reviews for perplexity and as non-members.", gt=0)
    victims: int = opt(16, "Training examples whose released activations are attacked.", gt=0)
    aux_texts: int = opt(400, "News articles the attacker trains and calibrates on (public, other corpus).", gt=0)

    def _check(self) -> None:
        if self.victims > self.train_examples:
            raise key_error(
                "data.victims", f"must be <= data.train_examples ({self.train_examples}), got {self.victims}"
            )


@dataclass(frozen=True)
class TrainSection(Section):
    """[train]: what the victim client does under each defense (in process, same client step)."""

    _key: ClassVar[str] = "train"

    steps: int = opt(30, "Client steps per cell.", gt=0)
    batch_size: int = opt(4, "Examples per step.", gt=0)
    lr: float = opt(1e-3, "AdamW learning rate on every LoRA adapter.", gt=0)
    delta: float = opt(1e-5, "Delta of every epsilon stated.", gt=0, lt=1)
    clients: int = opt(3, "Clients in a secure-aggregation cell (the aggregate the attacker sees).", ge=2)
    seed: int = opt(0, "Seed of data order, LoRA init, noise and the attackers.", ge=0)


@dataclass(frozen=True)
class AttackSection(Section):
    """[attacks]: which attacks run, where, and each one's effort (a sub-table per attack)."""

    _key: ClassVar[str] = "attacks"

    names: tuple[str, ...] = opt((), "Attacks to run (`splitfed attack list`); empty = all.")
    model_cuts: tuple[int, ...] = opt(
        (), "Cuts where the attacks on the update and the model (which ignore the cut traffic) run; empty = all."
    )
    learned: LearnedOptions = sub(LearnedOptions, "The learned inversion model.")
    whitebox: WhiteBoxOptions = sub(WhiteBoxOptions, "The white-box inversion.")
    update: UpdateOptions = sub(UpdateOptions, "The update inversion.")
    membership: MembershipOptions = sub(MembershipOptions, "The membership inferences.")
    generation: GenerationOptions = sub(GenerationOptions, "The activation attacks on split generation's releases.")

    def options(self, kind: type[Opts]) -> Opts:
        """The options of class `kind` (an attack's ``Options``)."""
        for value in (self.learned, self.whitebox, self.update, self.membership):
            if type(value) is kind:
                return value
        raise TypeError(f"[attacks] has no options of type {kind.__name__}")


@dataclass(frozen=True)
class ChannelNoise:
    """One cut channel's local DP as a defense sets it (both 0 = off)."""

    epsilon: float
    noise_multiplier: float
    unit: Unit

    @property
    def on(self) -> bool:
        return self.epsilon > 0 or self.noise_multiplier > 0


@dataclass(frozen=True)
class DefenseSpec(Section):
    """[[defense]]: one defense, reusing the product's mechanisms; all off = no defense."""

    _key: ClassVar[str] = "defense"

    name: str = req("Label in tables and plots.", nonempty=True)
    cuts: tuple[int, ...] = opt((), "Cuts this defense runs at; empty = every model.cuts.")
    activation_unit: Unit = opt("sequence", "Unit of activation LDP: sequence (one example) or token.")
    activation_epsilon: float = opt(0.0, "Activation LDP: epsilon per release (analytic Gaussian); 0 = off.", ge=0)
    activation_noise_multiplier: float = opt(0.0, "Activation LDP given as sigma / (2 clip); 0 = off.", ge=0)
    gradient_epsilon: float = opt(0.0, "LDP on the gradient the Top returns: epsilon per release; 0 = off.", ge=0)
    gradient_noise_multiplier: float = opt(0.0, "Gradient LDP given as sigma / (2 clip); 0 = off.", ge=0)
    clip_quantile: float = opt(0.5, "Clip = this quantile of the unit norms on the first batches.", gt=0, le=1)
    dpsgd_epsilon: float = opt(0.0, "DP-SGD on the client adapters: epsilon over the steps; 0 = off.", ge=0)
    secure_aggregation: bool = opt(False, "The aggregator sees only the mean of train.clients updates.")
    compression: Compression = opt("fp32", "Wire format of what crosses the cuts (after any noise).")

    def _check(self) -> None:
        for channel, noise in self.channels.items():
            if noise.epsilon > 0 and noise.noise_multiplier > 0:
                raise key_error(
                    f"defense.{channel}_epsilon",
                    f"set at most one of {channel}_epsilon and {channel}_noise_multiplier (defense {self.name!r})",
                )

    @property
    def channels(self) -> dict[str, ChannelNoise]:
        """Local DP per cut channel: "activation" (Bottom -> server), "gradient" (Top -> server)."""
        return {
            "activation": ChannelNoise(self.activation_epsilon, self.activation_noise_multiplier, self.activation_unit),
            "gradient": ChannelNoise(self.gradient_epsilon, self.gradient_noise_multiplier, "sequence"),
        }

    @property
    def activation_noise(self) -> bool:
        return self.channels["activation"].on

    @property
    def gradient_noise(self) -> bool:
        return self.channels["gradient"].on

    @property
    def family(self) -> str:
        """The curve this defense belongs to in plots ("none" when nothing is on)."""
        parts = []
        if self.activation_noise:
            parts.append(f"activation LDP ({self.activation_unit})")
        if self.gradient_noise:
            parts.append("gradient LDP")
        if self.dpsgd_epsilon > 0:
            parts.append("DP-SGD")
        if self.secure_aggregation:
            parts.append("secure aggregation")
        if self.compression != "fp32":
            parts.append(f"compression ({self.compression})")
        return " + ".join(parts) or "none"


@dataclass(frozen=True)
class AttackConfig(Section):
    """The whole `attack.toml`."""

    _key: ClassVar[str] = ""

    model: ModelSection = sub(ModelSection, "The public model and its cuts.")
    data: DataSection = sub(DataSection, "Private, held-out and auxiliary text.")
    train: TrainSection = sub(TrainSection, "Training under each defense.")
    attacks: AttackSection = sub(AttackSection, "Attacks and their effort.")
    defenses: tuple[DefenseSpec, ...] = opt((DefenseSpec("none"),), "The defenses ([[defense]]).", toml="defense")

    def _check(self) -> None:
        names = [d.name for d in self.defenses]
        if not names:
            raise key_error("defense", "expected at least one [[defense]] table")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise key_error("defense.name", f"defense names must be unique, got {dup} more than once")
        if self.model.goal_cut not in self.model.cuts:
            raise key_error(
                "model.goal_cut", f"expected one of model.cuts {list(self.model.cuts)}, got {self.model.goal_cut}"
            )
        stray = [a for a in self.attacks.model_cuts if a not in self.model.cuts]
        if stray:
            raise key_error("attacks.model_cuts", f"cuts {stray} are not in model.cuts {list(self.model.cuts)}")
        for d in self.defenses:
            bad = [a for a in d.cuts if a not in self.model.cuts]
            if bad:
                raise key_error("defense.cuts", f"defense {d.name!r}: cuts {bad} are not in model.cuts")

    def cells(self) -> list[tuple[int, DefenseSpec]]:
        """(cut, defense) for every cell, cut-major."""
        return [(a, d) for a in self.model.cuts for d in self.defenses if not d.cuts or a in d.cuts]


def cell_key(cut: int, defense: DefenseSpec) -> str:
    return f"a{cut}/{defense.name}"
