"""The trunk's side of split generation: one KV cache per open stream, and the cached forwards.

A prefill runs a stream's prompt activations through the trunk and keeps the stream's cache; a
decode step runs one new position per row.  Decode steps of several streams run as ONE trunk
forward: their caches are stacked (each left-padded to the longest with masked positions, see
`splitfed.models.kv`), the step runs once, and the caches are split back, each with its own
length.  Padding positions are masked out, so each stream gets what it would get alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from splitfed.models.kv import KVCache, stack_caches, unstack_cache
from splitfed.models.placement import autocast, to_device

Step = tuple[str, torch.Tensor, torch.Tensor]  # (stream, act (B, 1, D), full mask (B, L + 1))


class StreamCaches:
    def __init__(self, trunk: torch.nn.Module, *, device: torch.device, dtype: torch.dtype):
        self.trunk, self.device, self.dtype = trunk, device, dtype
        self.caches: dict[str, KVCache] = {}

    def __contains__(self, stream: str) -> bool:
        return stream in self.caches

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.caches.values())

    @torch.no_grad()
    def _run(self, act: torch.Tensor, mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
        self.trunk.eval()
        with autocast(self.device, self.dtype):
            out = self.trunk(to_device(act, self.device), mask, cache=cache)
        return out.to(act.device, torch.float32)

    def prefill(self, stream: str, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A new stream's prompt: (B, T, D) activations and (B, T) mask -> the trunk's (B, T, D)."""
        if stream in self.caches:
            raise RuntimeError(f"stream {stream} is already open")
        cache = KVCache()
        out = self._run(act, to_device(mask, self.device), cache)
        self.caches[stream] = cache
        return out

    def decode(self, steps: Sequence[Step]) -> list[torch.Tensor]:
        """One new position of each stream, as one forward; each stream's (B, 1, D) output, in order."""
        for stream, _, mask in steps:
            if stream not in self.caches:
                raise RuntimeError(f"stream {stream} is not open")
            if mask.shape[1] != self.caches[stream].length + 1:
                raise RuntimeError(
                    f"stream {stream}: a mask of {mask.shape[1]} positions after {self.caches[stream].length}"
                )
        masks = [to_device(m, self.device) for _, _, m in steps]
        if len(steps) == 1:
            return [self._run(steps[0][1], masks[0], self.caches[steps[0][0]])]
        names = [s for s, _, _ in steps]
        caches = [self.caches[s] for s in names]
        rows, lengths = [c.rows for c in caches], [c.length + 1 for c in caches]
        cached, merged = stack_caches(caches, [m[:, :-1] for m in masks])
        full = torch.cat([merged, torch.cat([m[:, -1:] for m in masks])], dim=1)
        out = self._run(torch.cat([a for _, a, _ in steps]), full, cached)
        for name, cache in zip(names, unstack_cache(cached, rows, lengths), strict=True):
            self.caches[name] = cache
        return list(torch.split(out, rows))

    def release(self, streams: Sequence[str]) -> None:
        for stream in streams:
            self.caches.pop(stream, None)
