"""Run configuration: one TOML file, typed and validated.

A run is described by one TOML file whose tables map onto small frozen dataclasses
(`RunSection` for ``[run]``, `ModelSection` for ``[model]``, ...), gathered in `RunConfig`.
Every table and every key is optional; a missing one takes the default shown by
``dump_toml(RunConfig(), comments=True)`` and in ``examples/run.toml``.

Validation is strict so that a typo never silently falls back to a default: unknown tables
and keys are errors, types are checked (a boolean is not an integer; an integer is accepted
where a float is expected), and every `ConfigError` names the dotted key, the bad value and
what was expected::

    data.partition: expected one of 'iid', 'dirichlet', got 'random'

Only the standard library is imported here: the CLI reads configs before any heavy import.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:  # pragma: no cover
    from splitfed.models.lora import LoraSpec, SplitLoraConfig

ModelName = Literal["smollm2-135m", "tiny-llama", "tiny-gpt2"]
Dataset = Literal["drugreviews"]
Partition = Literal["iid", "dirichlet"]
PaddingSide = Literal["left", "right"]
ServerMode = Literal["shared", "per_client"]
Compression = Literal["fp32", "fp16", "bf16", "int8"]

#: Dotted keys left out of `RunConfig.hash`: local paths and addresses that may differ
#: between the server and its clients without changing what is trained.
HASH_EXCLUDED: tuple[str, ...] = ("run.dir", "model.cache_dir", "transport.keys_dir", "transport.endpoint")


class ConfigError(ValueError):
    """An unusable configuration.

    The message names the dotted key, the bad value and what was expected.  `key` is that
    dotted key (``None`` for file-level errors), `path` the config file when one was read.
    """

    def __init__(self, message: str, *, key: str | None = None, detail: str | None = None, path: str | None = None):
        super().__init__(message)
        self.key = key
        self.detail = detail
        self.path = path


def _key_error(key: str, detail: str) -> ConfigError:
    return ConfigError(f"{key}: {detail}", key=key, detail=detail)


def _rekey(err: ConfigError, old_prefix: str, new_prefix: str) -> ConfigError:
    """`err` with its key moved from under `old_prefix` to under `new_prefix`."""
    if err.key is None or err.detail is None or old_prefix == new_prefix:
        return err
    if err.key != old_prefix and not err.key.startswith(old_prefix + "."):
        return err
    return _key_error(new_prefix + err.key[len(old_prefix) :], err.detail)


# ----------------------------------------------------------------------------- values


def _show(value: Any) -> str:
    """A value as the user wrote it (TOML-like: ``true``, ``[5, 3]``, ``'random'``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "a table"
    return repr(value)


def _typename(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "table"
    return type(value).__name__


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _describe(hint: Any, meta: Mapping[str, Any]) -> str:
    """What a field expects, in words (``an integer >= 1``)."""
    if "expected" in meta:
        return meta["expected"]
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    if hint is bool:
        return "a boolean (true or false)"
    if hint is str:
        return "a non-empty string" if meta.get("nonempty") else "a string"
    if typing.get_origin(hint) is tuple:
        return "a list of non-empty strings"
    base = "an integer" if hint is int else "a number"
    if "ge" in meta and "lt" in meta:
        return f"{base} in [{_num(meta['ge'])}, {_num(meta['lt'])})"
    for op, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if op in meta:
            base += f" {sym} {_num(meta[op])}"
    return base


def _coerce(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    """Check `value` against a field's type and constraints; return it normalised.

    Lists become tuples and integers become floats where a float is expected.
    """
    expected = _describe(hint, meta)
    given = value

    def bad(wrong_type: bool = False) -> ConfigError:
        suffix = f" ({_typename(given)})" if wrong_type and not isinstance(given, Mapping) else ""
        return _key_error(key, f"expected {expected}, got {_show(given)}{suffix}")

    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise _key_error(key, f"expected a {hint.__name__}, got {value!r}")
        return value
    if origin is Literal:
        if not isinstance(value, str):
            raise bad(True)
        if value not in typing.get_args(hint):
            raise bad()
    elif hint is bool:
        if not isinstance(value, bool):
            raise bad(True)
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(True)
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(True)
        if not math.isfinite(value):
            raise bad()
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise bad(True)
        if meta.get("nonempty") and not value:
            raise bad()
    elif origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad(True)
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            item_hints = [args[0]] * len(value)
        elif len(value) != len(args):
            raise bad()
        else:
            item_hints = list(args)
        for item, item_hint in zip(value, item_hints, strict=True):
            if item_hint is int and (isinstance(item, bool) or not isinstance(item, int)):
                raise bad()
            if item_hint is str and not (isinstance(item, str) and item):
                raise bad()
        value = tuple(value)
    else:  # pragma: no cover - a field type this module does not handle
        raise TypeError(f"{key}: unsupported field type {hint!r}")
    if hint in (int, float):
        if "ge" in meta and not value >= meta["ge"]:
            raise bad()
        if "gt" in meta and not value > meta["gt"]:
            raise bad()
        if "le" in meta and not value <= meta["le"]:
            raise bad()
        if "lt" in meta and not value < meta["lt"]:
            raise bad()
    check = meta.get("check")
    if check is not None and not check(value):
        raise bad()
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _opt(default: Any, help: str, **checks: Any) -> Any:
    """A field with a default, its help text and its checks (``ge``, ``gt``, ``lt``, ``check``...)."""
    return field(default=default, metadata={"help": help, **checks})


class _Section:
    """Validation shared by every config dataclass: field types, bounds, then `_check`."""

    _key: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            checked = _coerce(_join(self._key, f.name), value, hints[f.name], f.metadata)
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        self._check()

    def _check(self) -> None:
        """Checks that involve more than one field."""


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class RunSection(_Section):
    """[run]: where the run writes its outputs and how it is seeded."""

    _key: ClassVar[str] = "run"

    dir: str = _opt("runs/demo", "Run directory: metrics, checkpoints and the exported adapter.", nonempty=True)
    seed: int = _opt(0, "Seed for data partitioning, LoRA initialisation and shuffling.", ge=0)


@dataclass(frozen=True)
class ModelSection(_Section):
    """[model]: the base model and where it is cut."""

    _key: ClassVar[str] = "model"

    name: ModelName = _opt(
        "smollm2-135m", "Base model: smollm2-135m (real), tiny-llama or tiny-gpt2 (random, for tests)."
    )
    cut: tuple[int, int] = _opt(
        (2, 28),
        "Cut points [a, b]: clients hold layers [0, a) and [b, n), the server [a, b).",
        expected="two integers [a, b] with 0 <= a < b",
        check=lambda c: 0 <= c[0] < c[1],
    )
    cache_dir: str = _opt("", 'Model cache directory; "" uses the default cache.')


@dataclass(frozen=True)
class LoraPart(_Section):
    """[lora.bottom], [lora.trunk] or [lora.top]: the LoRA adapter of one part."""

    _key: ClassVar[str] = "lora.<part>"

    enabled: bool = _opt(True, "Train a LoRA adapter on this part (false: the part stays frozen).")
    r: int = _opt(8, "LoRA rank.", ge=1)
    alpha: float = _opt(16.0, "LoRA alpha (the update is scaled by alpha / r).", gt=0)
    dropout: float = _opt(0.0, "Dropout on the LoRA input.", ge=0, lt=1)
    target_modules: tuple[str, ...] = _opt(
        (), "Module-name suffixes to adapt (e.g. q_proj); [] takes the architecture's default."
    )

    def to_spec(self) -> LoraSpec | None:
        """The `splitfed.models.lora.LoraSpec` of this part, or ``None`` when disabled."""
        if not self.enabled:
            return None
        from splitfed.models.lora import LoraSpec

        return LoraSpec(r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=self.target_modules or None)


@dataclass(frozen=True)
class LoraSection(_Section):
    """[lora]: one adapter per part (bottom and top on the clients, trunk on the server)."""

    _key: ClassVar[str] = "lora"

    bottom: LoraPart = field(
        default_factory=LoraPart,
        metadata={"help": "[lora.bottom]: adapter of the client's bottom part (embeddings and first layers)."},
    )
    trunk: LoraPart = field(
        default_factory=LoraPart, metadata={"help": "[lora.trunk]: adapter of the server's trunk (middle layers)."}
    )
    top: LoraPart = field(
        default_factory=LoraPart,
        metadata={"help": "[lora.top]: adapter of the client's top part (last layers and LM head)."},
    )

    def to_split_lora(self) -> SplitLoraConfig:
        """A `splitfed.models.lora.SplitLoraConfig`; a disabled part gets ``None``."""
        from splitfed.models.lora import SplitLoraConfig

        return SplitLoraConfig(bottom=self.bottom.to_spec(), trunk=self.trunk.to_spec(), top=self.top.to_spec())


@dataclass(frozen=True)
class DataSection(_Section):
    """[data]: the data set and how it is split between clients."""

    _key: ClassVar[str] = "data"

    dataset: Dataset = _opt("drugreviews", "Data set (only drugreviews for now).")
    clients: int = _opt(3, "Number of clients.", ge=1)
    partition: Partition = _opt("dirichlet", "How examples are split between clients: iid or dirichlet (non-IID).")
    alpha: float = _opt(0.5, "Dirichlet concentration (smaller = more skewed); used by partition = dirichlet.", gt=0)
    max_length: int = _opt(128, "Tokens per example (longer examples are truncated).", ge=8)
    batch_size: int = _opt(4, "Examples per client step.", ge=1)
    eval_examples: int = _opt(48, "Held-out examples per evaluation (0 = no held-out evaluation).", ge=0)
    padding_side: PaddingSide = _opt("right", "Pad on the left or the right.")


@dataclass(frozen=True)
class TrainingSection(_Section):
    """[training]: rounds and optimiser."""

    _key: ClassVar[str] = "training"

    rounds: int = _opt(3, "Federated rounds.", ge=1)
    local_steps: int = _opt(10, "Steps each client trains per round.", ge=1)
    lr: float = _opt(1e-3, "Learning rate (AdamW).", gt=0)
    weight_decay: float = _opt(0.0, "AdamW weight decay.", ge=0)


@dataclass(frozen=True)
class ServerSection(_Section):
    """[server]: how the server runs the trunk for its clients."""

    _key: ClassVar[str] = "server"

    mode: ServerMode = _opt(
        "shared",
        "shared: one trunk adapter for all clients (SFL-V2); per_client: one per client, averaged each round (SFL-V1).",
    )
    batch_clients: bool = _opt(False, "Run waiting clients' activations through the trunk as one batch.")
    round_deadline_s: float = _opt(300.0, "Seconds per round; clients that miss it are left out of that round.", gt=0)
    max_batch: int = _opt(64, "Largest batch a client may send.", ge=1)
    max_seq: int = _opt(2048, "Longest sequence a client may send.", ge=1)


@dataclass(frozen=True)
class TransportSection(_Section):
    """[transport]: the ZeroMQ link between clients and server."""

    _key: ClassVar[str] = "transport"

    endpoint: str = _opt(
        "tcp://127.0.0.1:5555",
        "Server address (tcp://host:port or ipc://path).",
        expected="a string starting with 'tcp://' or 'ipc://'",
        check=lambda s: s.startswith(("tcp://", "ipc://")) and len(s) > len("tcp://"),
    )
    keys_dir: str = _opt("keys", "Directory of CURVE key files (see `splitfed keys generate`).", nonempty=True)
    insecure: bool = _opt(False, "Plaintext transport, no CURVE encryption; only honoured with an explicit flag.")
    compression: Compression = _opt("fp32", "Encoding of activations and gradients: fp32, fp16, bf16 or int8.")
    heartbeat_s: float = _opt(2.0, "Seconds between heartbeats.", gt=0)
    timeout_s: float = _opt(60.0, "Seconds of silence after which a peer is considered gone.", gt=0)
    max_message_mb: float = _opt(256.0, "Largest message accepted, in MB.", gt=0)

    def _check(self) -> None:
        if not self.timeout_s > self.heartbeat_s:
            raise _key_error(
                "transport.timeout_s",
                f"expected a number > transport.heartbeat_s ({self.heartbeat_s!r}), got {self.timeout_s!r}",
            )


@dataclass(frozen=True)
class AggregationSection(_Section):
    """[aggregation]: how client adapters are combined."""

    _key: ClassVar[str] = "aggregation"

    secure: bool = _opt(False, "Secure aggregation (SecAgg+): the server learns only the sum of the client updates.")
    clip: float = _opt(1.0, "Secure aggregation: each (weighted) adapter value is clipped to [-clip, clip].", gt=0)
    bits: int = _opt(24, "Secure aggregation: quantisation levels per value are 2**bits.", ge=1, lt=32)
    threshold: int = _opt(0, "Secure aggregation: clients needed to finish a round; 0 = a strict majority.", ge=0)
    stage_timeout_s: float = _opt(60.0, "Secure aggregation: clients silent this long in a stage drop out.", gt=0)


@dataclass(frozen=True)
class PrivacySection(_Section):
    """[privacy]: differential privacy."""

    _key: ClassVar[str] = "privacy"

    enabled: bool = _opt(False, "Local differential privacy on cut activations; not available yet.")

    def _check(self) -> None:
        if self.enabled:
            raise _key_error(
                "privacy.enabled",
                "local differential privacy on cut activations is not available yet (planned); set it to false",
            )


@dataclass(frozen=True)
class RunConfig(_Section):
    """The whole configuration of a run: one section per TOML table."""

    run: RunSection = field(default_factory=RunSection, metadata={"help": "Run directory and seed."})
    model: ModelSection = field(default_factory=ModelSection, metadata={"help": "Base model and cut."})
    lora: LoraSection = field(default_factory=LoraSection, metadata={"help": "LoRA adapters per part."})
    data: DataSection = field(default_factory=DataSection, metadata={"help": "Data set and partition."})
    training: TrainingSection = field(default_factory=TrainingSection, metadata={"help": "Rounds and optimiser."})
    server: ServerSection = field(default_factory=ServerSection, metadata={"help": "Server behaviour."})
    transport: TransportSection = field(default_factory=TransportSection, metadata={"help": "ZeroMQ transport."})
    aggregation: AggregationSection = field(default_factory=AggregationSection, metadata={"help": "Aggregation."})
    privacy: PrivacySection = field(default_factory=PrivacySection, metadata={"help": "Differential privacy."})

    def to_dict(self) -> dict[str, Any]:
        """Plain TOML-compatible values (nested dicts, lists, str, int, float, bool)."""
        return _plain(self)

    def with_overrides(self, **dotted: Any) -> RunConfig:
        """A new, validated config with dotted keys replaced: ``with_overrides(**{"training.rounds": 1})``.

        All overrides are applied together, so related keys (``transport.heartbeat_s`` and
        ``transport.timeout_s``) may be changed in one call.
        """
        tree: dict[str, Any] = {}
        for key, value in dotted.items():
            parts = key.split(".")
            node = tree
            for depth, part in enumerate(parts[:-1]):
                child = node.setdefault(part, {})
                if isinstance(child, _Leaf):
                    raise ConfigError(f"override {'.'.join(parts[: depth + 1])!r} given both as a value and a table")
                node = child
            if parts[-1] in node:
                raise ConfigError(f"override {key!r} given both as a value and a table")
            node[parts[-1]] = _Leaf(value)
        return _apply(self, tree, "") if tree else self

    def hash(self) -> str:
        """sha256 (hex) of the canonical JSON of `to_dict`, without the local keys in `HASH_EXCLUDED`.

        The server compares it with its clients' to refuse one started with a different config.
        """
        data = self.to_dict()
        for key in HASH_EXCLUDED:
            section, name = key.split(".")
            data[section].pop(name, None)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Leaf:
    value: Any


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _is_table(cls: type, name: str) -> bool:
    hint = _hints(cls)[name]
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _unknown(cls: type, prefix: str, name: str, value: Any) -> ConfigError:
    """Error for `name` not being a key of `cls` (the table at `prefix`), with a suggestion."""
    names = sorted(_names(cls))
    close = difflib.get_close_matches(name, names, n=1)
    tables_only = all(_is_table(cls, n) for n in names)
    if not prefix:
        msg = f"unknown table [{name}] (known tables: {', '.join(names)})"
        if not isinstance(value, Mapping):
            owners = [f"[{n}] {name}" for n in names if name in _names(_hints(cls)[n])]
            msg = f"unknown top-level key {name!r} (keys belong in tables: {', '.join(names)})"
            close = owners[:1] if owners else close
        if close:
            msg += f"; did you mean {close[0] if close[0].startswith('[') else '[' + close[0] + ']'}?"
        return ConfigError(msg, key=name)
    key = _join(prefix, name)
    if tables_only:
        msg = f"unknown {'table [' + key + ']' if isinstance(value, Mapping) else 'key ' + repr(key)}"
        msg += f" (known tables in [{prefix}]: {', '.join(names)})"
        owners = [f"[{_join(prefix, n)}]" for n in names if name in _names(_hints(cls)[n])]
        if owners and not isinstance(value, Mapping):
            msg += f"; set {name!r} in {', '.join(owners)}"
        elif close:
            msg += f"; did you mean [{_join(prefix, close[0])}]?"
        return ConfigError(msg, key=key)
    msg = f"unknown key {key!r} (known keys in [{prefix}]: {', '.join(names)})"
    if close:
        msg += f"; did you mean {close[0]!r}?"
    return ConfigError(msg, key=key)


def _parse(cls: type, raw: Any, prefix: str) -> Any:
    """Build the dataclass `cls` for the table at `prefix` from its TOML mapping."""
    if not isinstance(raw, Mapping):
        where = f"a table [{prefix}]" if prefix else "a table of config sections"
        raise ConfigError(f"{prefix or 'config'}: expected {where}, got {_show(raw)} ({_typename(raw)})", key=prefix)
    known = set(_names(cls))
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            raise _unknown(cls, prefix, name, value)
        if _is_table(cls, name):
            kwargs[name] = _parse(_hints(cls)[name], value, _join(prefix, name))
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise _rekey(err, cls._key, prefix) from None


def _apply(obj: Any, tree: Mapping[str, Any], prefix: str) -> Any:
    cls = type(obj)
    known = set(_names(cls))
    kwargs: dict[str, Any] = {}
    for name, sub in tree.items():
        key = _join(prefix, name)
        if name not in known:
            raise _unknown(cls, prefix, name, sub.value if isinstance(sub, _Leaf) else {})
        table = _is_table(cls, name)
        if isinstance(sub, _Leaf):
            if table:
                keys = ", ".join(sorted(_names(_hints(cls)[name])))
                raise ConfigError(f"{key!r} is a table, not a key: override one of its keys ({keys})", key=key)
            kwargs[name] = sub.value
        elif not table:
            raise ConfigError(f"unknown key {key + '.' + next(iter(sub))!r} ({key!r} is not a table)", key=key)
        else:
            kwargs[name] = _apply(getattr(obj, name), sub, key)
    try:
        return dataclasses.replace(obj, **kwargs)
    except ConfigError as err:
        raise _rekey(err, cls._key, prefix) from None


def parse_config(mapping: Mapping[str, Any]) -> RunConfig:
    """A validated `RunConfig` from a TOML-like mapping (as `tomllib.loads` returns)."""
    return _parse(RunConfig, mapping, "")


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a TOML config file; every problem is a `ConfigError` naming the file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}", path=str(p)) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {p}: {err.strerror or err}", path=str(p)) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: invalid TOML: {err}", path=str(p)) from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: invalid TOML: not UTF-8 text ({err.reason})", path=str(p)) from None
    try:
        return parse_config(data)
    except ConfigError as err:
        raise ConfigError(f"{p}: {err}", key=err.key, detail=err.detail, path=str(p)) from None


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["training.rounds=1", "model.name=tiny-gpt2"]`` -> ``{"training.rounds": 1, ...}``.

    Values are read as TOML values (``1``, ``1e-4``, ``true``, ``[2, 10]``, ``"x"``); one that
    is not valid TOML is taken as a bare string.  For `RunConfig.with_overrides` (CLI ``--set``).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. training.rounds=1")
        text = text.strip()
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key] = value
    return out


# ----------------------------------------------------------------------------- output


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write non-finite float {value!r}")
        return repr(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in _ESCAPES:
                out.append(_ESCAPES[ch])
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def _emit(obj: Any, prefix: str, lines: list[str], comments: bool, title: str = "") -> None:
    scalars = [f for f in dataclasses.fields(obj) if not _is_table(type(obj), f.name)]
    if scalars and prefix:
        if lines:
            lines.append("")
        if comments:
            # A class used for one table describes it; one shared by several (LoraPart) does not.
            doc = (type(obj).__doc__ or "").strip().splitlines()
            title = doc[0] if type(obj)._key == prefix and doc else title
            if title:
                lines.append(f"# {title}")
        lines.append(f"[{prefix}]")
        for f in scalars:
            if comments and f.metadata.get("help"):
                lines.append(f"# {f.metadata['help']}")
            lines.append(f"{f.name} = {_toml_value(_plain(getattr(obj, f.name)))}")
    for f in dataclasses.fields(obj):
        if _is_table(type(obj), f.name):
            _emit(getattr(obj, f.name), _join(prefix, f.name), lines, comments, f.metadata.get("help", ""))


def dump_toml(config: RunConfig, *, comments: bool = False) -> str:
    """The config as TOML text, every key written; ``parse_config(tomllib.loads(text)) == config``.

    `comments` adds each table's and key's help text as TOML comments.
    """
    lines: list[str] = []
    _emit(config, "", lines, comments)
    return "\n".join(lines) + "\n"


__all__ = [
    "AggregationSection",
    "ConfigError",
    "DataSection",
    "HASH_EXCLUDED",
    "LoraPart",
    "LoraSection",
    "ModelSection",
    "PrivacySection",
    "RunConfig",
    "RunSection",
    "ServerSection",
    "TrainingSection",
    "TransportSection",
    "dump_toml",
    "load_config",
    "parse_config",
    "parse_overrides",
]
