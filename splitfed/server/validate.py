"""What the server checks in activations and gradients before they reach the trunk."""

from __future__ import annotations

import torch

from splitfed.config import RunConfig
from splitfed.wire import ErrorCode, Message, WireError, decompress


def check_activations(msg: Message, cfg: RunConfig, *, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A FORWARD's (B, T, D) float32 activations and (B, T) long mask, within the server's limits."""
    mask = msg.tensors.get("mask")
    if mask is None or mask.dtype != torch.uint8 or mask.dim() != 2:
        raise WireError(ErrorCode.BAD_TENSOR, "forward needs 'mask': uint8 (batch, tokens)")
    b, t = mask.shape
    max_b, max_t = cfg.server.max_batch, cfg.server.max_seq
    if not (1 <= b <= max_b and 1 <= t <= max_t):
        raise WireError(ErrorCode.BAD_TENSOR, f"batch x tokens {b} x {t} outside limits 1..{max_b} x 1..{max_t}")
    if bool((mask > 1).any()) or bool((mask.sum(-1) == 0).any()):
        raise WireError(ErrorCode.BAD_TENSOR, "mask must be 0/1 with at least one token per row")
    act = decompress("act", msg.tensors, cfg.transport.compression)
    if tuple(act.shape) != (b, t, hidden):
        raise WireError(ErrorCode.BAD_TENSOR, f"act: expected shape {[b, t, hidden]}, got {list(act.shape)}")
    check_bound("act", act, cfg.server.max_abs_value)
    return act, mask.long()


def check_bound(name: str, x: torch.Tensor, bound: float) -> None:
    """Finite but huge values (3e38) would make the shared trunk non-finite: refuse them."""
    peak = float(x.abs().max()) if x.numel() else 0.0
    if not peak <= bound:
        raise WireError(
            ErrorCode.BAD_TENSOR, f"{name}: |value| up to {peak:.3g} exceeds server.max_abs_value {bound:g}"
        )
