"""Validate a user's own Hugging Face causal-LM directory before anything is loaded.

`inspect_model_dir` checks, cheaply (config.json, safetensors headers, a ``meta``-device
skeleton; no weight is read), that a directory holds a decoder-only model of a family the
split cuts exactly, with safetensors weights that cover it and, for a client, a tokenizer.
Every problem is a `ModelDirError` naming the directory and what is missing or wrong.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from splitfed.models.checkpoint import (
    CheckpointError,
    safetensors_header,
    source_plan,
    tensor_files,
)
from splitfed.models.pretrained import TOKENIZER_FILES

#: model_types whose split reproduces the unsplit logits and LoRA gradients exactly
#: (tests/models/test_split_exactness.py runs every one of them).
SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "llama",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "mistral",
    "mixtral",
    "gemma",
    "phi",
    "phi3",
    "smollm3",
    "olmo",
    "olmo2",
    "stablelm",
    "starcoder2",
    "gpt2",
    "gpt_bigcode",
    "gpt_neox",
)

CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")

# safetensors dtype codes of floating-point tensors -> torch names
_FLOAT_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


class ModelDirError(CheckpointError):
    """A model directory is unusable; the message names the directory and what is wrong."""


@dataclass(frozen=True)
class ModelInfo:
    """What `inspect_model_dir` found in a model directory."""

    path: Path
    model_type: str
    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    dtype: str  # the weights' dtype on disk (the one most parameters have)
    sharded: bool
    has_tokenizer: bool
    has_chat_template: bool


def _read_json(path: Path, what: str, d: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{d}: {what} is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{d}: {what} is not a JSON object")
    return data


def _is_encoder_decoder(model_type: str, config: dict) -> bool:
    """From config.json, or (key absent) the default of transformers' config class for `model_type`."""
    if "is_encoder_decoder" in config:
        return bool(config["is_encoder_decoder"])
    if model_type in SUPPORTED_MODEL_TYPES:
        return False
    try:
        from transformers import AutoConfig

        return bool(AutoConfig.for_model(model_type).is_encoder_decoder)
    except Exception:  # unknown to this transformers, or a config class that needs arguments
        return False


def _check_family(d: Path, config: dict) -> tuple[str, str]:
    """(model_type, architecture) or a ModelDirError for a model splitfed cannot cut."""
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    if not model_type or not isinstance(model_type, str):
        raise ModelDirError(f"{d}: config.json has no model_type; expected a transformers config (save_pretrained)")
    arch = str(archs[0]) if archs else model_type
    if _is_encoder_decoder(model_type, config):
        raise ModelDirError(
            f"{d}: {arch} (model_type={model_type!r}) is an encoder-decoder model; "
            "splitfed needs a decoder-only causal LM"
        )
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelDirError(
            f"{d}: unsupported architecture {arch} (model_type={model_type!r}); "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if config.get("quantization_config"):
        qc = config["quantization_config"]
        method = qc.get("quant_method", "?") if isinstance(qc, dict) else "?"
        raise ModelDirError(
            f"{d}: quantized weights (quantization_config.quant_method={method!r}); "
            "splitfed reads plain float weights: save a dequantized copy"
        )
    return model_type, arch


def _headers(d: Path, files: dict[str, Path]) -> dict[str, dict]:
    """Checkpoint key -> its header entry ({dtype, shape, data_offsets}); checks the index against the shards."""
    entries: dict[str, dict] = {}
    for f in sorted(set(files.values())):
        try:
            header = safetensors_header(f)
        except CheckpointError as exc:
            raise ModelDirError(f"{d}: {exc}") from None
        for key, path in files.items():
            if path != f:
                continue
            if key not in header:
                raise ModelDirError(f"{d}: the index maps {key!r} to {f.name}, which does not contain it")
            entries[key] = header[key]
    return entries


def _dominant_dtype(entries: dict[str, dict]) -> str:
    count: dict[str, int] = {}
    for e in entries.values():
        name = _FLOAT_DTYPES.get(e.get("dtype", ""))
        if name:
            count[name] = count.get(name, 0) + math.prod(e.get("shape") or [1])
    return max(count, key=count.__getitem__) if count else "unknown"


def _has_chat_template(d: Path) -> bool:
    if any((d / f).is_file() for f in CHAT_TEMPLATE_FILES):
        return True
    try:
        return bool(json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def _skeleton(d: Path):
    from splitfed.models.checkpoint import load_skeleton

    try:
        return load_skeleton(d)
    except CheckpointError as exc:
        raise ModelDirError(str(exc)) from None
    except (ValueError, KeyError, TypeError, OSError, AttributeError) as exc:
        import transformers

        raise ModelDirError(
            f"{d}: transformers {transformers.__version__} cannot build the model from config.json ({exc})"
        ) from None


def _check_coverage(d: Path, skeleton, layout, entries: dict[str, dict], tied: bool) -> None:
    """Every weight the model needs is in the checkpoint, with the shape config.json gives."""
    plan = source_plan(skeleton, entries)
    missing: list[str] = []
    for name, tensor in skeleton.state_dict().items():
        if tensor.device.type != "meta":
            continue  # buffers computed at construction
        source = plan.get(name)
        if source is None:
            if tied and name.startswith(f"{layout.lm_head}."):
                continue
            missing.append(name)
            continue
        if source.converter is None:
            key = source.keys[0][1]
            shape = tuple(entries[key].get("shape") or ())
            if shape != tuple(tensor.shape):
                raise ModelDirError(
                    f"{d}: tensor {key!r} has shape {shape} on disk but config.json gives {tuple(tensor.shape)}"
                )
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelDirError(f"{d}: the weights lack {', '.join(map(repr, missing[:3]))}{more}")


def inspect_model_dir(path: str | os.PathLike, *, need_tokenizer: bool = True) -> ModelInfo:
    """Check that `path` is a usable model directory and describe it; no weight is loaded.

    `need_tokenizer`: a client tokenizes and needs the tokenizer files, the server does not.
    Raises `ModelDirError` (a `ValueError` and a `FileNotFoundError`) naming the directory.
    """
    d = Path(path).expanduser()
    if not d.exists():
        raise ModelDirError(f"{d}: no such directory; expected a Hugging Face model directory")
    if not d.is_dir():
        raise ModelDirError(f"{d}: not a directory; expected a Hugging Face model directory")
    if not (d / "config.json").is_file():
        raise ModelDirError(
            f"{d}: no config.json; expected a Hugging Face model directory "
            "(config.json, model.safetensors or a sharded index, tokenizer files)"
        )
    config = _read_json(d / "config.json", "config.json", d)
    model_type, arch = _check_family(d, config)
    try:
        files = tensor_files(d)
    except CheckpointError as exc:
        raise ModelDirError(str(exc)) from None
    entries = _headers(d, files)
    has_tokenizer = any((d / f).is_file() for f in TOKENIZER_FILES)
    if need_tokenizer and not has_tokenizer:
        raise ModelDirError(
            f"{d}: no tokenizer (expected {', '.join(TOKENIZER_FILES[:-1])} or {TOKENIZER_FILES[-1]}); "
            "a client tokenizes with the model's own tokenizer"
        )

    from splitfed.models.layout import UnsupportedModelError, detect_layout

    cfg, skeleton = _skeleton(d)
    try:
        layout = detect_layout(skeleton)
    except UnsupportedModelError as exc:
        raise ModelDirError(f"{d}: {exc}") from None
    _check_coverage(d, skeleton, layout, entries, bool(getattr(cfg, "tie_word_embeddings", False)))
    return ModelInfo(
        path=d,
        model_type=model_type,
        architecture=arch if config.get("architectures") else type(skeleton).__name__,
        num_layers=layout.num_layers,
        hidden_size=int(cfg.hidden_size),
        vocab_size=int(cfg.vocab_size),
        dtype=_dominant_dtype(entries),
        sharded=(d / "model.safetensors.index.json").is_file(),
        has_tokenizer=has_tokenizer,
        has_chat_template=_has_chat_template(d),
    )
