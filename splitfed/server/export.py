"""The run's result on the server: one standard PEFT adapter from the trunk adapter and the clients' aggregate."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from splitfed.config import RunConfig
from splitfed.models.client_adapter import export_split_adapter


def export_run_adapter(
    cfg: RunConfig,
    *,
    trunk_state: Mapping[str, torch.Tensor],
    client_state: Mapping[str, torch.Tensor],
    model_type: str,
    model_dir: str | Path,
) -> Path:
    """Write ``<run.dir>/adapter`` (atomically): loads with ``PeftModel.from_pretrained``."""
    return export_split_adapter(
        Path(cfg.run.dir) / "adapter",
        cfg.lora.to_split_lora(),
        trunk_state=trunk_state,
        client_state=client_state,
        model_type=model_type,
        base_model=model_dir,
        metadata={"rounds": cfg.training.rounds, "cut": list(cfg.model.cut), "party": "server"},
    )
