"""The client's adapter as one state: its Bottom and Top LoRA tensors under ``bottom/`` and ``top/``.

This is what a client sends for aggregation and what the server averages, checkpoints and
sends back.  The server never holds the client parts; it learns the names and shapes from a
meta-device skeleton of the model (no weight is loaded).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from splitfed.models.lora import SplitLoraConfig, get_adapter_state, set_adapter_state, set_lora
from splitfed.models.parts import SplitPart

CLIENT_ROLES = ("bottom", "top")


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
    checkpoint_dir: str | os.PathLike, cut: tuple[int, int], lora: SplitLoraConfig
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the client state, computed on a meta-device skeleton (no weight loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from splitfed.models.layout import detect_layout, validate_cut
    from splitfed.models.split import build_parts

    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint_dir))
    layout = detect_layout(skeleton)
    parts = build_parts(skeleton, layout, validate_cut(cut, layout.num_layers), roles=CLIENT_ROLES)
    for role, part in parts.items():
        set_lora(part, lora.for_role(role))
    return {k: tuple(v.shape) for k, v in client_adapter_state(parts).items()}
