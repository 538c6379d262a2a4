"""Where a part runs and in what precision.

Devices are named as in the config: ``auto`` (CUDA when present, else CPU), ``cpu``,
``cuda`` or ``cuda:N``.  Reduced precision follows the usual mixed-precision recipe: the
frozen base weights are stored in the reduced dtype (half the memory) and run under
autocast; the trainable LoRA weights, their gradients and the optimizer state stay float32.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from splitfed.config.fields import ConfigError
from splitfed.config.parties import DEVICE_EXPECTED, valid_device

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(spec: str, *, key: str = "device") -> torch.device:
    """The torch device for a config value; a clear error when it cannot be had here."""
    if not valid_device(spec):
        raise ConfigError(f"{key} must be {DEVICE_EXPECTED}, got {spec!r}", key=key)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{key} = {spec!r} but no CUDA device is visible to this process (use 'auto' or 'cpu')", key=key
        )
    index = int(spec.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{key} = {spec!r} but only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device, *, key: str = "dtype") -> torch.dtype:
    """The torch dtype for a config value, refused where the device cannot compute in it."""
    if name not in DTYPES:
        raise ConfigError(f"{key} must be one of {sorted(DTYPES)}, got {name!r}", key=key)
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{key} = 'bfloat16' but {device} does not support it (use 'float16' or 'float32')", key=key)
    return dtype


def place(module: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Move `module` to `device`; frozen floating-point parameters take `dtype`, trainable ones
    (the LoRA adapter) and buffers (rotary frequencies) stay as they are (float32)."""
    module.to(device)
    if dtype != torch.float32:
        for p in module.parameters():
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(dtype)
    return module


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`; a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor decoded from the wire, onto `device`.  For CUDA it goes through pinned
    memory so the copy is asynchronous with respect to the host."""
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
