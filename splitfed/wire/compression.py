"""Activation/gradient compression for what crosses a cut: fp32, fp16, bf16, int8 (per-token scale).

A fifth kind, `INTEGERS`, is no `transport.compression` choice: it carries the discrete LDP
mechanism's release as its grid integers and step (`wire.grid`), exactly.
"""

from __future__ import annotations

from typing import get_args

import torch

from splitfed.config.parties import Compression
from splitfed.wire.grid import decode_grid, encode_grid, step_name
from splitfed.wire.messages import ErrorCode, WireError

COMPRESSIONS: tuple[str, ...] = get_args(Compression)
INTEGERS = "integers"  # the discrete LDP release: grid integers + step, exact (not a compression setting)
_CAST = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compress(name: str, x: torch.Tensor, kind: str, *, step: float = 0.0) -> dict[str, torch.Tensor]:
    """Wire tensors for activation `x` (..., D).  int8 sends ``name`` (int8) and ``name.scale``
    (float32, one per token): x ~= q * scale with scale = max|x| / 127 over the last axis.
    `INTEGERS` sends x / step (x on the grid of `step`) as int16/int32 and ``name.step``."""
    if kind == INTEGERS:
        return encode_grid(name, x, step)
    if kind in _CAST:
        return {name: x.detach().to(_CAST[kind])}
    if kind == "int8":
        x = x.detach().float()
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0
        q = torch.round(x / scale).clamp(-127, 127).to(torch.int8)
        return {name: q, f"{name}.scale": scale.squeeze(-1)}
    raise ValueError(f"compression must be one of {COMPRESSIONS}, got {kind!r}")


def decompress(name: str, tensors: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """float32 tensor back from `compress`'s output; checks the dtypes match `kind`."""
    if kind == INTEGERS:
        return decode_grid(name, tensors)
    if name not in tensors:
        raise WireError(ErrorCode.BAD_TENSOR, f"missing tensor {name!r}")
    t = tensors[name]
    if kind in _CAST:
        if t.dtype != _CAST[kind]:
            raise WireError(ErrorCode.BAD_TENSOR, f"tensor {name!r}: expected {_CAST[kind]} ({kind}), got {t.dtype}")
        return t.float()
    if kind == "int8":
        scale = tensors.get(f"{name}.scale")
        if t.dtype != torch.int8 or scale is None or scale.dtype != torch.float32:
            raise WireError(
                ErrorCode.BAD_TENSOR, f"tensor {name!r}: int8 compression needs int8 values + float32 scale"
            )
        if tuple(scale.shape) != tuple(t.shape[:-1]):
            raise WireError(ErrorCode.BAD_TENSOR, f"{name}.scale shape {tuple(scale.shape)} != {tuple(t.shape[:-1])}")
        return t.float() * scale.unsqueeze(-1)
    raise ValueError(f"compression must be one of {COMPRESSIONS}, got {kind!r}")


def wire_names(name: str, kind: str) -> set[str]:
    if kind == INTEGERS:
        return {name, step_name(name)}
    return {name, f"{name}.scale"} if kind == "int8" else {name}
