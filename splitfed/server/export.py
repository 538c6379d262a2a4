"""The run's result: one standard PEFT adapter from the trunk adapter and the clients' aggregate."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from splitfed.config import RunConfig
from splitfed.models import PartAdapter, export_adapter
from splitfed.models.client_adapter import CLIENT_ROLES, role_state


def export_run_adapter(
    cfg: RunConfig,
    *,
    trunk_state: Mapping[str, torch.Tensor],
    client_state: Mapping[str, torch.Tensor],
    model_type: str,
    model_dir: str | Path,
) -> Path:
    """Write ``<run.dir>/adapter`` (atomically): loads with ``PeftModel.from_pretrained``."""
    lora = cfg.lora.to_split_lora()
    parts = [PartAdapter(lora.trunk, trunk_state) if lora.trunk else None]
    for role in CLIENT_ROLES:
        state, spec = role_state(client_state, role), lora.for_role(role)
        if spec is not None and state:
            parts.append(PartAdapter(spec, state))
    return export_adapter(
        Path(cfg.run.dir) / "adapter",
        parts,
        model_type=model_type,
        base_model_name_or_path=str(model_dir),
        metadata={"rounds": cfg.training.rounds, "cut": list(cfg.model.cut)},
    )
