"""Build one part of a split model straight from a Hugging Face checkpoint directory.

The full model is only ever instantiated on the ``meta`` device (no memory); the part's
own tensors are then read from the safetensors files by key, so the server process never
reads an embedding or LM-head tensor and a client never reads the trunk's blocks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from splitfed.models.layout import detect_layout, validate_cut
from splitfed.models.parts import Bottom, SplitPart, Top
from splitfed.models.split import build_parts

ROLES = ("bottom", "trunk", "top")


class CheckpointError(FileNotFoundError):
    """The checkpoint directory lacks a config or a tensor a part needs."""


def _tensor_files(ckpt: Path) -> dict[str, Path]:
    """key -> safetensors file that holds it."""
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: ckpt / f for k, f in weight_map.items()}
    single = ckpt / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(
            f"{ckpt}: expected model.safetensors or model.safetensors.index.json (save with save_pretrained)"
        )
    from safetensors import safe_open

    with safe_open(single, "pt") as f:
        return {k: single for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def _read(files: dict[str, Path], keys: list[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for k in keys:
        by_file.setdefault(files[k], []).append(k)
    out: dict[str, torch.Tensor] = {}
    for path, ks in by_file.items():
        with safe_open(path, "pt") as f:
            for k in ks:
                out[k] = f.get_tensor(k)
    return out


def load_part(
    checkpoint: str | os.PathLike,
    role: str,
    cut: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
) -> SplitPart:
    """Build the `role` part ("bottom", "trunk" or "top") of the model saved in `checkpoint`.

    Only that part's tensors are read; `part.loaded_keys` lists them.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    ckpt = Path(checkpoint)
    if not (ckpt / "config.json").is_file():
        raise CheckpointError(f"{ckpt}: no config.json; expected a directory written by save_pretrained")
    config = AutoConfig.from_pretrained(ckpt)
    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
    layout = detect_layout(skeleton)
    cut = validate_cut(cut, layout.num_layers)
    part = build_parts(skeleton, layout, cut, roles=(role,))[role]
    del skeleton

    files = _tensor_files(ckpt)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    wanted: dict[str, str] = {}  # local name -> checkpoint key
    for local, tensor in part.state_dict().items():
        if tensor.device.type != "meta":
            continue  # buffers computed at construction (rotary frequencies, causal masks)
        key = part.full_name(local)
        if key not in files and tied and local.startswith("lm_head."):
            key = f"{layout.embed}.{local.split('.', 1)[1]}"
        if key not in files:
            raise CheckpointError(f"{ckpt}: tensor {key!r} needed by the {role} is not in the checkpoint")
        wanted[local] = key
    tensors = _read(files, sorted(set(wanted.values())))
    state = {
        local: tensors[key].to(dtype) if tensors[key].is_floating_point() else tensors[key]
        for local, key in wanted.items()
    }
    part.load_state_dict(state, strict=False, assign=True)
    still_meta = [n for n, t in part.state_dict().items() if t.device.type == "meta"]
    if still_meta:
        raise CheckpointError(f"{ckpt}: {role} tensors left unloaded: {still_meta[:5]}")
    part.loaded_keys = sorted(set(wanted.values()))
    part.eval()
    return part


def load_client_parts(
    checkpoint: str | os.PathLike, cut: tuple[int, int], *, dtype=torch.float32
) -> tuple[Bottom, Top]:
    """Bottom and Top for a client process; re-ties embedding and LM head when the model ties them."""
    bottom = load_part(checkpoint, "bottom", cut, dtype=dtype)
    top = load_part(checkpoint, "top", cut, dtype=dtype)
    if getattr(bottom.config, "tie_word_embeddings", False) and hasattr(top.lm_head, "weight"):
        top.lm_head.weight = bottom.embed.weight
    return bottom, top
