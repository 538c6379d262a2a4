"""A client's adapters as they leave and arrive: the round's aggregate loaded into Bottom/Top,
the trunk adapter the server shares at the end, the audit copy of each update, and the
exported PEFT adapter (the client's whole fine-tuned model for its own base model)."""

from __future__ import annotations

from pathlib import Path

import torch

from splitfed.atomic import atomic_path
from splitfed.client.link import ServerRefused
from splitfed.config import RunConfig
from splitfed.models.client_adapter import client_adapter_state, load_client_adapter_state
from splitfed.models.source import BaseModel


def wire_state(parts: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The client adapter as it goes on the wire (``bottom/...`` and ``top/...`` keys), on the host."""
    return {k: v.cpu() for k, v in client_adapter_state(parts).items()}


def take_result(
    parts: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor], cfg: RunConfig, base_model: BaseModel
) -> dict[str, torch.Tensor] | None:
    """Load a round's aggregate into `parts`; returns the trunk adapter when the server sent it (run done).

    Raises `ServerRefused` when the tensors do not fit this client's model."""
    from splitfed.models.client_adapter import client_adapter_shapes, split_result

    trunk_shapes = None
    if any(k.startswith("trunk/") for k in tensors):
        lora = cfg.lora.to_split_lora()
        trunk_shapes = client_adapter_shapes(base_model.path, cfg.model.cut, lora, roles=("trunk",))
    try:
        client_state, trunk = split_result(tensors, trunk_shapes)
        load_client_adapter_state(parts, client_state)
    except (KeyError, ValueError) as exc:
        raise ServerRefused(f"the server's adapters do not fit this model: {exc}") from exc
    return trunk


def keep_update(path: Path, update: dict[str, torch.Tensor]) -> None:
    """The client's own copy of what it sent for aggregation (its disk, for audit)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in update.items()}, tmp)


def export_adapter(
    out_dir: Path,
    cfg: RunConfig,
    parts: dict[str, torch.nn.Module],
    trunk: dict[str, torch.Tensor] | None,
    base_model: BaseModel,
    *,
    party: str,
) -> Path:
    """Write one standard PEFT adapter for `base_model`: the Bottom/Top adapters and the trunk
    adapter (when the server shared it)."""
    from splitfed.models.client_adapter import export_split_adapter

    return export_split_adapter(
        out_dir,
        cfg.lora.to_split_lora(),
        trunk_state=trunk,
        client_state=wire_state(parts),
        model_type=parts["bottom"].layout.model_type,
        base_model=base_model.path,
        metadata={
            "party": party,
            "rounds": cfg.training.rounds,
            "cut": list(cfg.model.cut),
            "base_model_fingerprint": base_model.fingerprint,
            "trunk_adapter": trunk is not None,
        },
    )
