"""LoRA adapters (PEFT) on each part, their state, and export as one standard PEFT adapter.

The LoRA settings themselves (`LoraSpec` for one part, `SplitLoraConfig` for all three) are
defined once, in `splitfed.config`, and re-exported here.

Adapter state dicts are keyed by **full-model names** with the adapter name removed, e.g.
``model.layers.3.self_attn.q_proj.lora_A.weight``: the same keys a saved PEFT adapter uses
(minus the ``base_model.model.`` prefix).  A part's state can therefore cross a process
boundary and be merged with the other parts' states without knowing how the model was cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from splitfed.atomic import atomic_dir
from splitfed.config.lora import LoraSpec, SplitLoraConfig
from splitfed.models.parts import SplitPart

ADAPTER = "default"
_LORA_MARK = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.|$)")


#: Supported families PEFT has no default LoRA targets for: their attention projections.
_EXTRA_TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("qwen3_moe", "olmo", "olmo2", "smollm3", "starcoder2"), ("q_proj", "v_proj")),
    "phi3": ("qkv_proj",),
}


def default_targets(model_type: str) -> tuple[str, ...]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAP

    if model_type not in MAP and model_type in _EXTRA_TARGETS:
        return _EXTRA_TARGETS[model_type]
    if model_type not in MAP:
        raise ValueError(f"no default LoRA target modules for model_type={model_type!r}; set target_modules explicitly")
    return tuple(MAP[model_type])


def _strip_adapter(name: str, adapter: str = ADAPTER) -> str:
    return ".".join(p for p in name.split(".") if p != adapter)


def with_adapter_name(key: str, adapter: str = ADAPTER) -> str:
    """``...q_proj.lora_A.weight`` -> ``...q_proj.lora_A.default.weight`` (PEFT's in-model name)."""
    m = _LORA_MARK.search(key)
    if m is None:
        raise KeyError(f"{key!r} is not a LoRA tensor name")
    return f"{key[: m.end(1)]}.{adapter}{key[m.end(1) :]}"


def _matches(full_name: str, targets: tuple[str, ...]) -> bool:
    return any(full_name == t or full_name.endswith("." + t) for t in targets)


def set_lora(part: SplitPart, spec: LoraSpec | None, *, seed: int | None = None) -> list[str]:
    """Give `part` the LoRA adapter `spec` (see `add_lora`), or none: ``None`` freezes every parameter.

    Sets `part.lora_spec` and returns the full-model names of the adapted modules.
    """
    if spec is None:
        part.lora_spec = None
        part.requires_grad_(False)
        return []
    return add_lora(part, spec, seed=seed)


def add_lora(part: SplitPart, spec: LoraSpec, *, seed: int | None = None) -> list[str]:
    """Inject a LoRA adapter into `part` in place and freeze everything else.

    Returns the full-model names of the adapted modules.  A part with no blocks (a cut at 0
    or at n) and no matching module gets no adapter; a part with blocks but no match is an
    error naming the targets.  `seed` makes the LoRA A initialisation reproducible.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = spec.target_modules or default_targets(part.layout.model_type)
    # Targets name modules as the full model does (``embed_tokens``, ``lm_head``, ``q_proj``);
    # resolve them here and give PEFT the exact local names.
    local = [n for n, m in part.named_modules() if n and _matches(part.full_name(n), targets)]
    if not local:
        if not len(part.layers):
            return set_lora(part, None)
        leaves = sorted({part.full_name(n).rsplit(".", 1)[-1] for n, _ in part.named_modules() if n})
        raise ValueError(
            f"{part.role}: no module matches LoRA target_modules={list(targets)}; "
            f"module names in this part include {leaves[:20]}"
        )
    cfg = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=local,
        fan_in_fan_out=part.layout.model_type == "gpt2",
    )
    if seed is None:
        inject_adapter_in_model(cfg, part, adapter_name=ADAPTER)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inject_adapter_in_model(cfg, part, adapter_name=ADAPTER)
    part.lora_spec = spec
    _freeze_base(part)
    return adapted_modules(part)


def _freeze_base(part: nn.Module) -> None:
    for name, p in part.named_parameters():
        p.requires_grad_(bool(_LORA_MARK.search(name)))


def adapted_modules(part: SplitPart) -> list[str]:
    """Full-model names of the modules carrying a LoRA adapter in `part`."""
    from peft.tuners.lora import LoraLayer

    return [part.full_name(n) for n, m in part.named_modules() if isinstance(m, LoraLayer)]


def adapter_parameters(part: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA parameters of `part`, in a stable order."""
    return [p for n, p in part.named_parameters() if _LORA_MARK.search(n)]


def get_adapter_state(part: SplitPart) -> dict[str, torch.Tensor]:
    """Copy of the part's LoRA tensors keyed by full-model name (adapter name removed)."""
    return {
        part.full_name(_strip_adapter(n)): p.detach().clone()
        for n, p in part.named_parameters()
        if _LORA_MARK.search(n)
    }


def set_adapter_state(part: SplitPart, state: Mapping[str, torch.Tensor]) -> None:
    """Load LoRA tensors (full-model names) into `part`; keys and shapes must match exactly."""
    params = {part.full_name(_strip_adapter(n)): p for n, p in part.named_parameters() if _LORA_MARK.search(n)}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(
            f"{part.role} adapter state does not match: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    with torch.no_grad():
        for key, p in params.items():
            value = state[key]
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"{key}: expected shape {tuple(p.shape)}, got {tuple(value.shape)}")
            p.copy_(value)


@contextlib.contextmanager
def adapters_disabled(*parts: nn.Module) -> Iterator[None]:
    """Run `parts` as the public base model: every LoRA layer off, then restored as it was.

    Only PEFT's per-layer switch is flipped (not `enable_adapters`, which also rewrites
    `requires_grad`), so trainability and optimizer state are untouched.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for part in parts for m in part.modules() if isinstance(m, LoraLayer)]
    before = [m._disable_adapters for m in layers]
    try:
        for m in layers:
            m._disable_adapters = True
        yield
    finally:
        for m, was in zip(layers, before, strict=True):
            m._disable_adapters = was


@dataclass(frozen=True)
class PartAdapter:
    """What export needs from one part: its spec and its adapter state (full-model names)."""

    spec: LoraSpec
    state: Mapping[str, torch.Tensor]

    @classmethod
    def of(cls, part: SplitPart) -> PartAdapter | None:
        return None if part.lora_spec is None else cls(part.lora_spec, get_adapter_state(part))


def _modules_of(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """module full name -> rank, read from the lora_A shapes."""
    ranks: dict[str, int] = {}
    for key, value in state.items():
        m = _LORA_MARK.search(key)
        if m and m.group(1) in ("lora_A", "lora_embedding_A"):
            module = key[: m.start()]
            ranks[module] = int(value.shape[0])
    return ranks


def peft_config_for(adapters: Iterable[PartAdapter], *, model_type: str, base_model_name_or_path: str | None = None):
    """One `peft.LoraConfig` that places every part's adapters on the full model."""
    from peft import LoraConfig

    adapters = list(adapters)
    if not adapters:
        raise ValueError("nothing to export: no part carries a LoRA adapter")
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    for ad in adapters:
        for module, r in _modules_of(ad.state).items():
            rank_pattern[re.escape(module)] = r
            alpha_pattern[re.escape(module)] = ad.spec.alpha
    modules = sorted(k.replace("\\", "") for k in rank_pattern)
    first = adapters[0].spec
    return LoraConfig(
        r=first.r,
        lora_alpha=first.alpha,
        lora_dropout=first.dropout,
        target_modules=modules,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        fan_in_fan_out=model_type == "gpt2",
        base_model_name_or_path=base_model_name_or_path,
        task_type="CAUSAL_LM",
    )


def export_adapter(
    out_dir: str | os.PathLike,
    adapters: Iterable[PartAdapter | None],
    *,
    model_type: str,
    base_model_name_or_path: str | None = None,
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write the parts' adapters as one PEFT adapter directory (atomically).

    The result loads with ``PeftModel.from_pretrained(AutoModelForCausalLM..., out_dir)``.
    """
    from safetensors.torch import save_file

    adapters = [a for a in adapters if a is not None]
    config = peft_config_for(adapters, model_type=model_type, base_model_name_or_path=base_model_name_or_path)
    tensors: dict[str, torch.Tensor] = {}
    for ad in adapters:
        for key, value in ad.state.items():
            if key in tensors:
                raise ValueError(f"adapter tensor {key} appears in two parts")
            tensors[f"base_model.model.{key}"] = value.detach().to("cpu").contiguous()
    out = Path(out_dir)
    pid = os.getpid()
    with atomic_dir(out, tmp=out.with_name(f"{out.name}.tmp-{pid}"), old=out.with_name(f"{out.name}.old-{pid}")) as tmp:
        config.save_pretrained(tmp)
        save_file(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        if metadata:
            (tmp / "splitfed.json").write_text(json.dumps(dict(metadata), indent=2, default=str))
    return out


__all__ = [
    "LoraSpec",
    "SplitLoraConfig",
    "PartAdapter",
    "add_lora",
    "adapters_disabled",
    "set_lora",
    "adapted_modules",
    "adapter_parameters",
    "get_adapter_state",
    "set_adapter_state",
    "export_adapter",
    "peft_config_for",
    "with_adapter_name",
]
