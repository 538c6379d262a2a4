"""Opaque byte payloads (protocol messages of other layers, ciphertexts) as 1-D uint8 tensor frames."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from splitfed.wire.messages import ErrorCode, WireError


def bytes_tensor(data: bytes) -> torch.Tensor:
    """`data` as a 1-D uint8 tensor (a copy: the frame may outlive the caller's buffer)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def tensor_bytes(tensors: Mapping[str, torch.Tensor], name: str, *, only: bool = False) -> bytes:
    """The bytes of the 1-D uint8 tensor `name`; with `only`, it must be the message's one tensor.

    Raises `WireError` (bad_tensor) naming what was expected and what came.
    """
    t = tensors.get(name)
    if t is None or t.dtype != torch.uint8 or t.dim() != 1 or (only and len(tensors) != 1):
        got = {k: f"{v.dtype}{list(v.shape)}" for k, v in list(tensors.items())[:4]}
        what = "exactly one" if only else "a"
        raise WireError(ErrorCode.BAD_TENSOR, f"expected {what} 1-D uint8 tensor {name!r}, got {got}")
    return t.numpy().tobytes()
