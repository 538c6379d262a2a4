"""[lora]: the LoRA adapter of each part, and `LoraSpec` / `SplitLoraConfig`, what
`splitfed.models` takes to add the adapters to the parts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from splitfed.config.fields import Section, opt, sub


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
