"""Atomic round checkpoints of the server: trunk adapter(s), optimizer state, round, client aggregate.

A checkpoint is written into a temporary directory and swapped in with renames; a crash at
any point leaves either the old or the new checkpoint readable (``load`` falls back to the
previous one if the swap was interrupted).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from splitfed.atomic import atomic_dir

STATE = "state.json"


@dataclass
class ServerCheckpoint:
    round_completed: int  # index of the last completed round
    config_hash: str
    trunk: dict[str, dict[str, torch.Tensor]]  # adapter states: "shared" or per client name
    optimizers: dict[str, dict]  # optimizer state dicts, same keys as trunk
    clients: dict[str, torch.Tensor]  # aggregated client adapter (bottom/... and top/... keys)


def save_checkpoint(directory: str | os.PathLike, ckpt: ServerCheckpoint) -> Path:
    from safetensors.torch import save_file

    final = Path(directory)
    with atomic_dir(final, tmp=final.with_name(final.name + ".tmp"), old=final.with_name(final.name + ".old")) as tmp:
        for name, state in ckpt.trunk.items():
            save_file({k: v.contiguous() for k, v in state.items()}, tmp / f"trunk-{name}.safetensors")
        if ckpt.clients:
            save_file({k: v.contiguous() for k, v in ckpt.clients.items()}, tmp / "clients.safetensors")
        torch.save(ckpt.optimizers, tmp / "optimizers.pt")
        meta = {"round_completed": ckpt.round_completed, "config_hash": ckpt.config_hash, "trunk": sorted(ckpt.trunk)}
        (tmp / STATE).write_text(json.dumps(meta, indent=2))  # written last: marks the directory complete
    return final


def load_checkpoint(directory: str | os.PathLike) -> ServerCheckpoint | None:
    """The newest complete checkpoint, or None if there is none."""
    from safetensors.torch import load_file

    final = Path(directory)
    for cand in (final, final.with_name(final.name + ".old")):
        if (cand / STATE).is_file():
            meta = json.loads((cand / STATE).read_text())
            trunk = {name: load_file(cand / f"trunk-{name}.safetensors") for name in meta["trunk"]}
            clients = load_file(cand / "clients.safetensors") if (cand / "clients.safetensors").is_file() else {}
            optimizers = torch.load(cand / "optimizers.pt", weights_only=True)
            return ServerCheckpoint(meta["round_completed"], meta["config_hash"], trunk, optimizers, clients)
    return None
