"""Build one part of a split model straight from a Hugging Face checkpoint directory.

The full model is only ever instantiated on the ``meta`` device (no memory); the part's
own tensors are then read from the safetensors files by key, so the server process never
reads an embedding or LM-head tensor and a client never reads the trunk's blocks.

Checkpoint keys are mapped to the model's parameter names the way ``from_pretrained``
maps them (transformers' conversion mapping: renamed heads such as GPT-NeoX's
``embed_out``, per-expert MoE weights fused into one tensor, a missing or extra
base-model prefix), and cast to the requested dtype, so bf16, fp16 and sharded
checkpoints load as they are.
"""

from __future__ import annotations

import copy
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from splitfed.errors import SplitfedError
from splitfed.models.layout import detect_layout, validate_cut
from splitfed.models.parts import Bottom, SplitPart, Top
from splitfed.models.split import build_parts

ROLES = ("bottom", "trunk", "top")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
BIN_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
CONVERT_HINT = (
    "convert once with transformers: AutoModelForCausalLM.from_pretrained(dir)"
    ".save_pretrained(dir, safe_serialization=True)"
)


class CheckpointError(SplitfedError, FileNotFoundError, ValueError):
    """The checkpoint directory lacks a config or a tensor a part needs, or a file is malformed.

    Both a `FileNotFoundError` (as before) and a `ValueError` (bad input, one-line CLI error).
    """


# --------------------------------------------------------------------------- files and headers


def safetensors_header(path: Path) -> dict[str, dict]:
    """The JSON header of a safetensors file (``name -> {dtype, shape, data_offsets}``,
    plus ``__metadata__``), read without loading any tensor."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000 or n > os.fstat(f.fileno()).st_size - 8:
                raise ValueError(f"header length {n} does not fit the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:  # also json.JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None
    return header


def tensor_files(ckpt: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file that holds it (single file or sharded with an index).

    Raises `CheckpointError` naming the directory when there are no safetensors weights
    (only pickled ``.bin`` weights: how to convert them), the index is malformed, or a
    shard it names is missing.
    """
    index = ckpt / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{ckpt}: unreadable {INDEX_FILE} (expected a 'weight_map' object: {exc})") from None
        missing = sorted({f for f in weight_map.values() if not (ckpt / f).is_file()})
        if missing:
            raise CheckpointError(
                f"{ckpt}: {INDEX_FILE} names shard file(s) that are missing: {', '.join(missing[:3])}"
                + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            )
        return {k: ckpt / f for k, f in weight_map.items()}
    single = ckpt / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(_no_weights_message(ckpt))
    return {k: single for k in safetensors_header(single) if k != "__metadata__"}


def _no_weights_message(ckpt: Path) -> str:
    if any((ckpt / f).is_file() for f in BIN_FILES):
        return (
            f"{ckpt}: only pytorch_model.bin weights, which splitfed does not read (pickle can run code); "
            + CONVERT_HINT
        )
    others = sorted(p.name for p in ckpt.glob("*.safetensors"))
    if others:
        return (
            f"{ckpt}: found {', '.join(others[:3])} but no {SINGLE_FILE} or {INDEX_FILE}; "
            "expected a directory written by save_pretrained"
        )
    return f"{ckpt}: no weights; expected {SINGLE_FILE} or {INDEX_FILE} (a directory written by save_pretrained)"


# --------------------------------------------------------------------------- checkpoint key -> model key


@dataclass
class Source:
    """Where one model tensor comes from: checkpoint keys, fused by `converter` when it is set."""

    keys: list[tuple[str | None, str]]  # (converter source pattern, checkpoint key), in checkpoint order
    converter: object | None = None


def source_plan(model: torch.nn.Module, checkpoint_keys) -> dict[str, Source]:
    """Map each model tensor name to the checkpoint key(s) it is loaded from, as
    ``from_pretrained`` would (transformers' conversion mapping); `model` may be on meta."""
    meta = model.state_dict()
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            dot_natural_key,
            rename_source_key,
        )
    except ImportError:  # another transformers: keys as they are
        return {k: Source([(None, k)]) for k in checkpoint_keys if k in meta}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    prefix = getattr(model, "base_model_prefix", None) or None
    plan: dict[str, Source] = {}
    for key in sorted(checkpoint_keys, key=dot_natural_key):
        target, pattern = rename_source_key(key, renamings, converters, prefix, meta)
        if target not in meta and key in meta:
            target, pattern = key, None
        if target not in meta:
            continue  # not a tensor of this model class (e.g. rotary inv_freq saved by old versions)
        source = plan.setdefault(target, Source([], by_pattern.get(pattern) if pattern is not None else None))
        source.keys.append((pattern, key))
    return plan


def materialize(target: str, source: Source, tensors: dict[str, torch.Tensor], config) -> torch.Tensor:
    """The model tensor `target` from its checkpoint tensors (fusing them when converted)."""
    if source.converter is None:
        return tensors[source.keys[0][1]]
    conv = copy.deepcopy(source.converter)
    for pattern, key in source.keys:
        conv.add_tensor(target, key, pattern, tensors[key])
    out = conv.convert(target, model=None, config=config)
    if target not in out:
        raise CheckpointError(f"converting {[k for _, k in source.keys][:3]} did not give {target!r}")
    value = out[target]
    return value[0] if isinstance(value, list) else value


def _read(files: dict[str, Path], keys: list[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for k in keys:
        by_file.setdefault(files[k], []).append(k)
    out: dict[str, torch.Tensor] = {}
    for path, ks in by_file.items():
        try:
            with safe_open(path, "pt") as f:
                for k in ks:
                    out[k] = f.get_tensor(k)
        except Exception as exc:  # OSError, or safetensors' own SafetensorError for a malformed file
            raise CheckpointError(f"{path}: cannot read tensors ({exc})") from None
    return out


def refuse_quantized(ckpt: Path, config) -> None:
    qc = getattr(config, "quantization_config", None)
    if qc:
        method = qc.get("quant_method", "?") if isinstance(qc, dict) else getattr(qc, "quant_method", "?")
        raise CheckpointError(
            f"{ckpt}: quantized checkpoint (quantization_config.quant_method={method!r}); "
            "splitfed reads plain float weights: save a dequantized copy first"
        )


def load_skeleton(ckpt: Path, *, dtype: torch.dtype = torch.float32):
    """(config, the full causal LM on the meta device): no weights read, no memory used."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (ckpt / "config.json").is_file():
        raise CheckpointError(f"{ckpt}: no config.json; expected a directory written by save_pretrained")
    config = AutoConfig.from_pretrained(ckpt)
    refuse_quantized(ckpt, config)
    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return config, skeleton


def load_part(
    checkpoint: str | os.PathLike,
    role: str,
    cut: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
) -> SplitPart:
    """Build the `role` part ("bottom", "trunk" or "top") of the model saved in `checkpoint`.

    Only that part's tensors are read; `part.loaded_keys` lists their checkpoint keys.
    Floating-point weights are cast to `dtype` whatever their dtype on disk.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    ckpt = Path(checkpoint)
    config, skeleton = load_skeleton(ckpt, dtype=dtype)
    layout = detect_layout(skeleton)
    cut = validate_cut(cut, layout.num_layers)
    part = build_parts(skeleton, layout, cut, roles=(role,))[role]
    files = tensor_files(ckpt)
    plan = source_plan(skeleton, files)
    del skeleton

    tied = bool(getattr(config, "tie_word_embeddings", False))
    wanted: dict[str, str] = {}  # local name -> model key
    shapes: dict[str, torch.Size] = {}
    for local, tensor in part.state_dict().items():
        if tensor.device.type != "meta":
            continue  # buffers computed at construction (rotary frequencies, causal masks)
        key = part.full_name(local)
        if key not in plan and tied and local.startswith("lm_head."):
            key = f"{layout.embed}.{local.split('.', 1)[1]}"
        if key not in plan:
            raise CheckpointError(f"{ckpt}: tensor {key!r} needed by the {role} is not in the checkpoint")
        wanted[local] = key
        shapes[local] = tensor.shape
    read_keys = sorted({k for key in wanted.values() for _, k in plan[key].keys})
    tensors = _read(files, read_keys)
    built = {key: materialize(key, plan[key], tensors, config) for key in set(wanted.values())}
    del tensors
    state = {}
    for local, key in wanted.items():
        t = built[key]
        if t.shape != shapes[local]:
            raise CheckpointError(
                f"{ckpt}: tensor {key!r} has shape {tuple(t.shape)} in the checkpoint, "
                f"but config.json gives {tuple(shapes[local])}"
            )
        state[local] = t.to(dtype) if t.is_floating_point() else t
    part.load_state_dict(state, strict=False, assign=True)
    still_meta = [n for n, t in part.state_dict().items() if t.device.type == "meta"]
    if still_meta:
        raise CheckpointError(f"{ckpt}: {role} tensors left unloaded: {still_meta[:5]}")
    part.loaded_keys = read_keys
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
