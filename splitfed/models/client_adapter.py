"""The client's adapter as one state: its Bottom and Top LoRA tensors under ``bottom/`` and ``top/``.

This is what a client sends for aggregation and what the server averages, checkpoints and
sends back.  The server never holds the client parts; it learns the names and shapes from a
meta-device skeleton of the model (no weight is loaded).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from splitfed.models.lora import SplitLoraConfig, get_adapter_state, set_adapter_state, set_lora
from splitfed.models.parts import SplitPart

CLIENT_ROLES = ("bottom", "top")
#: Prefix of the trunk adapter's tensors in the server's last ROUND_RESULT (the client's copy
#: of the fine-tuned trunk adapter).
TRUNK_PREFIX = "trunk/"


def role_state(state: Mapping[str, torch.Tensor], role: str) -> dict[str, torch.Tensor]:
    """The tensors of one part from a client state, with the ``role/`` prefix removed."""
    prefix = role + "/"
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def client_adapter_state(parts: Mapping[str, SplitPart]) -> dict[str, torch.Tensor]:
    """Copy of the LoRA tensors of the client parts that carry an adapter, keys ``role/<full name>``."""
    out: dict[str, torch.Tensor] = {}
    for role, part in parts.items():
        if part.lora_spec is not None:
            out.update({f"{role}/{k}": v for k, v in get_adapter_state(part).items()})
    return out


def load_client_adapter_state(parts: Mapping[str, SplitPart], state: Mapping[str, torch.Tensor]) -> None:
    """Load a client state (e.g. the round's aggregate) into the parts; an empty state changes nothing."""
    if not state:
        return
    for role, part in parts.items():
        if part.lora_spec is not None:
            set_adapter_state(part, role_state(state, role))


def client_adapter_shapes(
    checkpoint_dir: str | os.PathLike, cut: tuple[int, int], lora: SplitLoraConfig, *, roles=CLIENT_ROLES
) -> dict[str, tuple[int, ...]]:
    """Names (``role/<full name>``) and shapes of the adapters of `roles`, computed on a
    meta-device skeleton (no weight loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from splitfed.models.layout import detect_layout, validate_cut
    from splitfed.models.split import build_parts

    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint_dir))
    layout = detect_layout(skeleton)
    parts = build_parts(skeleton, layout, validate_cut(cut, layout.num_layers), roles=roles)
    for role, part in parts.items():
        set_lora(part, lora.for_role(role))
    return {k: tuple(v.shape) for k, v in client_adapter_state(parts).items()}


def split_result(
    tensors: Mapping[str, torch.Tensor], trunk_shapes: Mapping[str, tuple[int, ...]] | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """A ROUND_RESULT's tensors -> (client aggregate, trunk adapter or None when not sent).

    `trunk_shapes` (``trunk/<full name>`` -> shape) is what a trunk adapter must be: a partial
    or reshaped one is refused with a `ValueError` naming the first difference.
    """
    client = {k: v for k, v in tensors.items() if not k.startswith(TRUNK_PREFIX)}
    sent = {k: v for k, v in tensors.items() if k.startswith(TRUNK_PREFIX)}
    if not sent:
        return client, None
    want = dict(trunk_shapes or {})
    if set(sent) != set(want):
        odd = sorted(set(sent) ^ set(want))
        raise ValueError(f"the server's trunk adapter does not match this model and [lora.trunk]: {odd[:3]}")
    for k, v in sent.items():
        if tuple(v.shape) != want[k] or not v.is_floating_point():
            raise ValueError(f"trunk adapter tensor {k}: expected float {list(want[k])}, got {v.dtype} {list(v.shape)}")
    return client, {k[len(TRUNK_PREFIX) :]: v for k, v in sent.items()}


def export_split_adapter(
    out_dir: str | os.PathLike,
    lora: SplitLoraConfig,
    *,
    trunk_state: Mapping[str, torch.Tensor] | None,
    client_state: Mapping[str, torch.Tensor],
    model_type: str,
    base_model: str | os.PathLike,
    metadata: Mapping[str, object] | None = None,
):
    """Write the whole model's adapter (trunk adapter + the client's Bottom/Top adapters) as one
    standard PEFT adapter at `out_dir` (atomically), for the base model at `base_model`.

    `trunk_state` None (the server kept it) leaves the trunk's layers without an adapter.
    """
    from splitfed.models.lora import PartAdapter, export_adapter

    parts = [PartAdapter(lora.trunk, trunk_state) if lora.trunk and trunk_state else None]
    for role in CLIENT_ROLES:
        state, spec = role_state(client_state, role), lora.for_role(role)
        if spec is not None and state:
            parts.append(PartAdapter(spec, state))
    return export_adapter(
        out_dir, parts, model_type=model_type, base_model_name_or_path=str(base_model), metadata=metadata
    )


def load_exported_adapter(parts: Mapping[str, SplitPart], adapter_dir: str | os.PathLike) -> list[str]:
    """Load a PEFT adapter written by `export_split_adapter` into `parts` (each part takes the
    tensors of its own layers); the roles loaded.  Errors name the directory and what is wrong."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no PEFT adapter at {adapter_dir} (expected {path.name})")
    prefix = "base_model.model."
    tensors = {k.removeprefix(prefix): v for k, v in load_file(str(path)).items()}
    loaded = []
    for role, part in parts.items():
        if part.lora_spec is None:
            continue
        mine = {k: tensors[k] for k in get_adapter_state(part) if k in tensors}
        try:
            set_adapter_state(part, mine)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"the adapter at {adapter_dir} does not fit this model's {role}: {exc}") from exc
        loaded.append(role)
    return loaded
