"""The run configuration: one config class per TOML table, gathered in `RunConfig`.

Every table and every key is optional; a missing one takes the default shown by
``dump_toml(RunConfig(), comments=True)`` and in ``examples/run.toml``.  `LoraSpec` and
`SplitLoraConfig` are also what `splitfed.models` takes to add LoRA adapters to the parts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from splitfed.config.fields import ConfigError, Section, key_error, opt, plain, sub
from splitfed.config.privacy import PrivacySection
from splitfed.config.tables import override

ModelName = Literal["smollm2-135m", "tiny-llama", "tiny-gpt2"]
Dataset = Literal["drugreviews"]
RecordFormat = Literal["auto", "text", "prompt_completion", "messages"]
Partition = Literal["iid", "dirichlet"]
PaddingSide = Literal["left", "right"]
ServerMode = Literal["shared", "per_client"]
#: What crosses a cut on the wire (`splitfed.wire.compression`); the one definition, also used by eval.
Compression = Literal["fp32", "fp16", "bf16", "int8"]

#: Dotted keys left out of `RunConfig.hash`: local paths and addresses that may differ
#: between the server and its clients without changing what is trained.
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
)

DTypeName = Literal["float32", "bfloat16", "float16"]
_FINGERPRINT = re.compile(r"([0-9a-fA-F]{16}|[0-9a-fA-F]{64})?")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
DEVICE_EXPECTED = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def valid_device(spec: str) -> bool:
    """Whether `spec` names a device the config accepts (availability is checked where it is used)."""
    return isinstance(spec, str) and bool(DEVICE_PATTERN.fullmatch(spec))


#: Checks of a device field (``opt("auto", help, **DEVICE)``); availability is checked where it is used.
DEVICE: Mapping[str, Any] = {"expected": DEVICE_EXPECTED, "check": valid_device}

#: Checks of a ZeroMQ endpoint field (``opt(default, help, **ENDPOINT)``).
ENDPOINT: Mapping[str, Any] = {
    "expected": "a string starting with 'tcp://' or 'ipc://'",
    "check": lambda s: s.startswith(("tcp://", "ipc://")) and len(s) > len("tcp://"),
}


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
class LoraSpec(Section):
    """LoRA hyper-parameters of one part.

    `target_modules` are module-name suffixes (``q_proj``); ``()`` takes PEFT's default for
    the architecture (q/v projections for Llama, ``c_attn`` for GPT-2), and ``None`` is read
    as ``()``.  Built in code, its errors state the rule (``LoRA rank r must be a positive
    integer, got 0``); `LoraPart`, read from a config table, names the dotted key instead.
    """

    _rules: ClassVar[Mapping[str, str]] = {
        "r": "LoRA rank r must be a positive integer",
        "alpha": "LoRA alpha must be > 0",
        "dropout": "LoRA dropout must be in [0, 1)",
        "target_modules": "LoRA target_modules must be a non-empty list of module names (or None: the default)",
    }

    r: int = opt(8, "LoRA rank.", ge=1)
    alpha: float = opt(16.0, "LoRA alpha (the update is scaled by alpha / r).", gt=0)
    dropout: float = opt(0.0, "Dropout on the LoRA input.", ge=0, lt=1)
    target_modules: tuple[str, ...] | None = opt(
        (), "Module-name suffixes to adapt (e.g. q_proj); [] takes the architecture's default.", none=()
    )


@dataclass(frozen=True)
class _Switch(Section):
    enabled: bool = opt(True, "Train a LoRA adapter on this part (false: the part stays frozen).")


@dataclass(frozen=True)
class LoraPart(LoraSpec, _Switch):
    """[lora.bottom], [lora.trunk] or [lora.top]: the LoRA adapter of one part.

    A `LoraSpec` that can be switched off.  Dataclass fields follow the reversed MRO, so
    `enabled` comes first, then the `LoraSpec` fields.  Errors name the dotted key.
    """

    _key: ClassVar[str] = "lora.<part>"
    _rules: ClassVar[Mapping[str, str]] = {}

    def to_spec(self) -> LoraSpec | None:
        """The `LoraSpec` of this part, or ``None`` when disabled."""
        if not self.enabled:
            return None
        return LoraSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LoraSpec)})


@dataclass(frozen=True)
class SplitLoraConfig(Section):
    """One `LoraSpec` per part; ``None`` leaves that part without an adapter (frozen)."""

    bottom: LoraSpec | None = sub(LoraSpec, "Adapter of the client's bottom part.")
    trunk: LoraSpec | None = sub(LoraSpec, "Adapter of the server's trunk.")
    top: LoraSpec | None = sub(LoraSpec, "Adapter of the client's top part.")

    def for_role(self, role: str) -> LoraSpec | None:
        if role not in ("bottom", "trunk", "top"):
            raise ValueError(f"role must be bottom, trunk or top, got {role!r}")
        return getattr(self, role)


@dataclass(frozen=True)
class LoraSection(Section):
    """[lora]: one adapter per part (bottom and top on the clients, trunk on the server)."""

    _key: ClassVar[str] = "lora"

    bottom: LoraPart = sub(
        LoraPart, "[lora.bottom]: adapter of the client's bottom part (embeddings and first layers)."
    )
    trunk: LoraPart = sub(LoraPart, "[lora.trunk]: adapter of the server's trunk (middle layers).")
    top: LoraPart = sub(LoraPart, "[lora.top]: adapter of the client's top part (last layers and LM head).")

    def to_split_lora(self) -> SplitLoraConfig:
        """A `SplitLoraConfig`; a disabled part gets ``None``."""
        return SplitLoraConfig(bottom=self.bottom.to_spec(), trunk=self.trunk.to_spec(), top=self.top.to_spec())


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
class PeerLimitsSection(Section):
    """[server.limits]: what one peer (one CURVE key) may send before it is ignored for a cool-down."""

    _key: ClassVar[str] = "server.limits"

    max_rate: float = opt(200.0, "Messages per second a peer may send, sustained (0 = no limit).", ge=0)
    burst: int = opt(400, "... plus this many at once.", ge=1)
    max_errors: int = opt(100, "Rejected messages allowed within error_window_s (0 = no limit).", ge=0)
    error_window_s: float = opt(10.0, "Window of the error budget, in seconds.", gt=0)
    cooldown_s: float = opt(30.0, "Seconds a peer over a limit is ignored (its messages dropped unread).", gt=0)


@dataclass(frozen=True)
class ServerSection(Section):
    """[server]: how the server runs the trunk for its clients."""

    _key: ClassVar[str] = "server"

    mode: ServerMode = opt(
        "shared",
        "shared: one trunk adapter for all clients (SFL-V2); per_client: one per client, averaged each round (SFL-V1).",
    )
    batch_clients: bool = opt(False, "Run waiting clients' activations through the trunk as one batch.")
    round_deadline_s: float = opt(300.0, "Seconds per round; clients that miss it are left out of that round.", gt=0)
    max_batch: int = opt(64, "Largest batch a client may send.", ge=1)
    max_seq: int = opt(2048, "Longest sequence a client may send.", ge=1)
    step_timeout_s: float = opt(
        120.0, "A client holding a trunk step (forward sent, no backward) longer than this loses it.", gt=0
    )
    max_abs_value: float = opt(
        1e5, "Largest |value| accepted in activations and gradients (finite but huge values are refused).", gt=0
    )
    max_samples: int = opt(10_000_000, "Largest sample count (FedAvg weight) a client may declare.", ge=1)
    share_trunk_adapter: bool = opt(
        True, "Send the final trunk adapter to every client, so each leaves with the whole fine-tuned model."
    )
    device: str = opt("auto", "Where the trunk runs: auto (CUDA when present), cpu, cuda or cuda:N.", **DEVICE)
    dtype: DTypeName = opt(
        "float32",
        "Frozen trunk weights: float32, bfloat16 or float16 (autocast; LoRA and optimizer stay float32).",
    )
    limits: PeerLimitsSection = sub(PeerLimitsSection, "[server.limits]: per-peer message rate and error budget.")


@dataclass(frozen=True)
class ClientSection(Section):
    """[client]: where a client runs its Bottom and Top."""

    _key: ClassVar[str] = "client"

    device: str = opt("auto", "Where Bottom and Top run: auto (CUDA when present), cpu, cuda or cuda:N.", **DEVICE)
    adapter_dir: str = opt(
        "", 'Where this client writes its fine-tuned PEFT adapter ("" = run.dir/clients/client-K/adapter).', path=True
    )


@dataclass(frozen=True)
class TransportSection(Section):
    """[transport]: the ZeroMQ link between clients and server."""

    _key: ClassVar[str] = "transport"

    endpoint: str = opt("tcp://127.0.0.1:5555", "Server address (tcp://host:port or ipc://path).", **ENDPOINT)
    keys_dir: str = opt("keys", "Directory of CURVE key files (see `splitfed keys generate`).", nonempty=True)
    insecure: bool = opt(False, "Plaintext transport, no CURVE encryption; only honoured with an explicit flag.")
    compression: Compression = opt(
        "fp32",
        "Encoding of activations and gradients: fp32, fp16, bf16 or int8.  Not applied to a channel whose "
        "privacy mechanism is discrete: its training release goes as the mechanism's integers (int16/int32).",
    )
    heartbeat_s: float = opt(2.0, "Seconds between heartbeats.", gt=0)
    timeout_s: float = opt(60.0, "Seconds of silence after which a peer is considered gone.", gt=0)
    connect_timeout_s: float = opt(
        30.0,
        "Seconds a client waits for its first connection to the server (TCP and CURVE handshake) before it gives "
        "up; once welcomed, a client that loses the server keeps reconnecting for 10 x timeout_s.",
        gt=0,
    )
    max_message_mb: float = opt(256.0, "Largest message accepted, in MB.", gt=0)

    def _check(self) -> None:
        if not self.timeout_s > self.heartbeat_s:
            raise key_error(
                "transport.timeout_s",
                f"expected a number > transport.heartbeat_s ({self.heartbeat_s!r}), got {self.timeout_s!r}",
            )


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
        check=lambda v: isinstance(v, str) and bool(_FINGERPRINT.fullmatch(v.replace(" ", ""))),
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
            section, name = key.split(".")
            data[section].pop(name, None)
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
