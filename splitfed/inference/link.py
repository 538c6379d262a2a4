"""The client's view of the server's trunk during generation: a `DecodeLink`.

Only activations and the 2-D attention mask cross it, never token ids.  The far side keeps
the trunk's `KVCache` between calls; `close` frees it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from splitfed.models.kv import KVCache
from splitfed.models.parts import Trunk


@runtime_checkable
class DecodeLink(Protocol):
    def prefill(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The prompt: (B, T, D) activations and their (B, T) mask -> (B, T, D); starts a cache."""
        ...

    def decode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One new position: (B, 1, D) and the full (B, P + 1) mask so far -> (B, 1, D)."""
        ...

    def close(self) -> None:
        """Free the far side's cache."""
        ...


class LocalDecodeLink:
    """The trunk in this process with its own cache: the in-process baseline of a remote link."""

    def __init__(self, trunk: Trunk) -> None:
        self.trunk = trunk
        self.cache: KVCache | None = None

    @torch.no_grad()
    def prefill(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.cache = KVCache()
        return self.trunk(h, mask, cache=self.cache)

    @torch.no_grad()
    def decode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            raise RuntimeError("decode before prefill (or after close): the trunk holds no cache")
        if h.shape[1] != 1:
            raise ValueError(f"decode takes one new position, got h of shape {tuple(h.shape)}")
        return self.trunk(h, mask, cache=self.cache)

    def close(self) -> None:
        self.cache = None
