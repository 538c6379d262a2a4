"""The run configuration: one config class per TOML table, gathered in `RunConfig`.

Every table and every key is optional; a missing one takes the default shown by
``dump_toml(RunConfig(), comments=True)`` and in ``examples/run.toml``.  This module holds
what is trained and on what ([run], [model], [data], [training], [aggregation]); the
adapters are in `config.lora`, where and how the parties run in `config.parties`, and
[privacy] in `config.privacy`, [generate] (each client's own sampling, never hashed) in
`config.generate`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from splitfed.config.fields import ConfigError, Section, key_error, opt, plain, sub
from splitfed.config.generate import GenerationSettings
from splitfed.config.lora import LoraSection
from splitfed.config.parties import FINGERPRINT, ClientSection, ServerSection, TransportSection
from splitfed.config.privacy import PrivacySection
from splitfed.config.tables import override

ModelName = Literal["smollm2-135m", "tiny-llama", "tiny-gpt2"]
Dataset = Literal["drugreviews"]
RecordFormat = Literal["auto", "text", "prompt_completion", "messages"]
Partition = Literal["iid", "dirichlet"]
PaddingSide = Literal["left", "right"]

#: Dotted keys left out of `RunConfig.hash`: local paths and addresses that may differ
#: between the server and its clients without changing what is trained.  A key names a value
#: or a whole table (``server.inference``, ``generate``).
#: The base model itself is agreed by its fingerprint, computed from the files on each side and
#: checked at HELLO, so its name and path are local too.
HASH_EXCLUDED: tuple[str, ...] = (
    "run.dir",
    "run.tensorboard",
    "model.name",
    "model.path",
    "model.cache_dir",
    "data.train",
    "data.eval",
    "data.eval_fraction",
    "data.format",
    "data.text_field",
    "data.prompt_field",
    "data.completion_field",
    "data.messages_field",
    "client.adapter_dir",
    "aggregation.roster",
    "transport.keys_dir",
    "transport.endpoint",
    "transport.connect_timeout_s",
    "server.device",
    "client.device",
    "server.inference",  # the whole table: the server's own generation limits
    "generate",  # the whole table: each client chooses its own sampling
)


@dataclass(frozen=True)
class RunSection(Section):
    """[run]: where the run writes its outputs and how it is seeded."""

    _key: ClassVar[str] = "run"

    dir: str = opt("runs/demo", "Run directory: metrics, checkpoints and the exported adapter.", nonempty=True)
    seed: int = opt(0, "Seed for data partitioning, LoRA initialisation and shuffling.", ge=0)
    tensorboard: bool = opt(False, "Also log metrics for TensorBoard under run.dir/tensorboard/<party>.")


@dataclass(frozen=True)
class ModelSection(Section):
    """[model]: the base model and where it is cut."""

    _key: ClassVar[str] = "model"

    name: ModelName = opt(
        "smollm2-135m",
        "Built-in base model (used when model.path is empty): smollm2-135m (real), tiny-llama or tiny-gpt2 (tests).",
    )
    path: str = opt(
        "",
        "Your own Hugging Face causal LM: a local directory with config.json, safetensors weights (one file or "
        "sharded) and, on clients, the tokenizer.  Each party names its own copy; they must hold the same weights.",
        path=True,
    )
    cut: tuple[int, int] = opt(
        (2, 28),
        "Cut points [a, b]: clients hold layers [0, a) and [b, n), the server [a, b).",
        expected="two integers [a, b] with 0 <= a < b",
        check=lambda c: 0 <= c[0] < c[1],
    )
    cache_dir: str = opt("", 'Model cache directory; "" uses the default cache.')


@dataclass(frozen=True)
class DataSection(Section):
    """[data]: each client's own data files, how they are tokenized and batched.

    `train`, `eval`, `eval_fraction`, `format` and the field names are local to each client
    (never hashed, never sent).  With `train` empty a client runs the bundled simulation:
    `dataset`, `partition` and `alpha` deal the demo's drug reviews to the clients.
    """

    _key: ClassVar[str] = "data"

    train: str = opt(
        "",
        "This client's training data: a .jsonl/.json, .csv, .parquet, .txt/.md file or a datasets save_to_disk "
        'directory ("" = the bundled simulation).',
        path=True,
    )
    eval: str = opt("", "This client's held-out data (same formats); empty: see eval_fraction.", path=True)
    eval_fraction: float = opt(
        0.0, "Without data.eval: hold out this fraction of data.train for evaluation (0 = no evaluation).", ge=0, lt=1
    )
    format: RecordFormat = opt(
        "auto",
        "Record format: text (loss on all tokens), prompt_completion (loss on the completion), messages "
        "(chat template, loss on assistant turns); auto detects it from the fields.",
    )
    text_field: str = opt("text", "Field holding the text of a text record.", nonempty=True)
    prompt_field: str = opt("prompt", "Field holding the prompt of a prompt_completion record.", nonempty=True)
    completion_field: str = opt("completion", "Field holding the completion.", nonempty=True)
    messages_field: str = opt("messages", "Field holding the conversation (a list of role/content).", nonempty=True)
    packing: bool = opt(False, "Concatenate examples and cut them into max_length chunks (no padding).")
    clients: int = opt(3, "Number of clients.", ge=1)
    max_length: int = opt(128, "Tokens per example (longer examples are truncated; the count is reported).", ge=8)
    batch_size: int = opt(4, "Examples per client step.", ge=1)
    eval_examples: int = opt(48, "Largest number of held-out examples per evaluation (0 = no evaluation).", ge=0)
    padding_side: PaddingSide = opt("right", "Pad on the left or the right.")
    dataset: Dataset = opt("drugreviews", "Simulation (data.train empty): the bundled data set dealt to clients.")
    partition: Partition = opt("dirichlet", "Simulation: how the bundled examples are dealt: iid or dirichlet.")
    alpha: float = opt(0.5, "Simulation: Dirichlet concentration (smaller = more skewed clients).", gt=0)

    def _check(self) -> None:
        if self.eval and not self.train:
            raise key_error("data.train", "expected a file when data.eval names one, got ''")


@dataclass(frozen=True)
class TrainingSection(Section):
    """[training]: rounds and optimiser."""

    _key: ClassVar[str] = "training"

    rounds: int = opt(3, "Federated rounds.", ge=1)
    local_steps: int = opt(10, "Steps each client trains per round.", ge=1)
    lr: float = opt(1e-3, "Learning rate (AdamW).", gt=0)
    weight_decay: float = opt(0.0, "AdamW weight decay.", ge=0)


@dataclass(frozen=True)
class AggregationSection(Section):
    """[aggregation]: how client adapters are combined."""

    _key: ClassVar[str] = "aggregation"

    secure: bool = opt(False, "Secure aggregation (SecAgg+): the server learns only the sum of the client updates.")
    clip: float = opt(1.0, "Secure aggregation: each (weighted) adapter value is clipped to [-clip, clip].", gt=0)
    bits: int = opt(24, "Secure aggregation: quantisation levels per value are 2**bits.", ge=1, lt=32)
    threshold: int = opt(0, "Secure aggregation: clients needed to finish a round; 0 = a strict majority.", ge=0)
    stage_timeout_s: float = opt(60.0, "Secure aggregation: clients silent this long in a stage drop out.", gt=0)
    roster: str = opt(
        "",
        "Secure aggregation: the roster of every client's public signing key (`splitfed keys roster`); "
        '"" = roster.toml in transport.keys_dir.',
        path=True,
    )
    roster_fingerprint: str = opt(
        "",
        "Secure aggregation: pin the roster's fingerprint (`splitfed keys show roster.toml`); every party refuses "
        'another roster.  "" = not pinned (the server still compares every client\'s roster with its own).',
        expected="'' or the roster's fingerprint: 16 or 64 hex digits, spaces allowed",
        check=lambda v: isinstance(v, str) and bool(FINGERPRINT.fullmatch(v.replace(" ", ""))),
    )

    def threshold_for(self, n: int) -> int:
        """Clients needed to finish a secure-aggregation round of `n`: `threshold`, or a strict majority if 0."""
        t = self.threshold or n // 2 + 1
        if not n // 2 + 1 <= t <= n:
            raise ConfigError(
                f"aggregation.threshold must be a strict majority of the {n} clients in the round "
                f"({n // 2 + 1}..{n}), got {t}"
            )
        return t


@dataclass(frozen=True)
class RunConfig(Section):
    """The whole configuration of a run: one section per TOML table."""

    run: RunSection = sub(RunSection, "Run directory and seed.")
    model: ModelSection = sub(ModelSection, "Base model and cut.")
    lora: LoraSection = sub(LoraSection, "LoRA adapters per part.")
    data: DataSection = sub(DataSection, "Data set and partition.")
    training: TrainingSection = sub(TrainingSection, "Rounds and optimiser.")
    server: ServerSection = sub(ServerSection, "Server behaviour.")
    client: ClientSection = sub(ClientSection, "Client placement.")
    transport: TransportSection = sub(TransportSection, "ZeroMQ transport.")
    aggregation: AggregationSection = sub(AggregationSection, "Aggregation.")
    privacy: PrivacySection = sub(PrivacySection, "Differential privacy.")
    generate: GenerationSettings = sub(GenerationSettings, "Generation settings (local to each client, never hashed).")

    def to_dict(self) -> dict[str, Any]:
        """Plain TOML-compatible values (nested dicts, lists, str, int, float, bool)."""
        return plain(self)

    def with_overrides(self, **dotted: Any) -> RunConfig:
        """A new, validated config with dotted keys replaced: ``with_overrides(**{"training.rounds": 1})``.

        All overrides are applied together, so related keys (``transport.heartbeat_s`` and
        ``transport.timeout_s``) may be changed in one call.
        """
        return override(self, dotted)

    def hash(self) -> str:
        """sha256 (hex) of the canonical JSON of `to_dict`, without the local keys in `HASH_EXCLUDED`.

        The server compares it with its clients' to refuse one started with a different config.
        """
        return hashlib.sha256(_canonical(self.agreed()).encode()).hexdigest()

    def agreed(self) -> dict[str, Any]:
        """The keys every party must agree on: `to_dict` without the local keys in `HASH_EXCLUDED`."""
        data = self.to_dict()
        for key in HASH_EXCLUDED:
            *tables, name = key.split(".")
            node = data
            for table in tables:
                node = node.get(table, {})
            node.pop(name, None)
        return data

    def key_digests(self) -> dict[str, str]:
        """Dotted agreed key (``lora.bottom.r``) -> a short digest of its value: what a client sends at
        HELLO so that the server can name the keys that differ without either side sending a value."""
        return {
            key: hashlib.sha256(_canonical(value).encode()).hexdigest()[:16] for key, value in flat_items(self.agreed())
        }


def flat_items(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, leaf value) of a nested dict; lists (of tables) are leaves."""
    items: list[tuple[str, Any]] = []
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            items += flat_items(value, key + ".")
        else:
            items.append((key, value))
    return items


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
