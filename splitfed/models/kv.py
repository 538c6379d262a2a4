"""One part's key/value cache for split generation, and stacking sessions into one batch.

A `KVCache` holds, for each decoder layer of one part, the keys and values of every cached
position (sliding-window layers included: the mask applies the window, so a cache keeps its
full history and stacking never has to reason about per-layer windows).  Layers are keyed by
their index in the FULL model, as each decoder layer calls
``past_key_values.update(k, v, self.layer_idx)``.

Only what the Hugging Face layers and the mask builders of `transformers.masking_utils` ask of
a cache is implemented: ``update``, ``get_seq_length``, ``get_query_offset`` and
``get_mask_sizes``.  It is deliberately not a `transformers.Cache`, so the mask builders never
look for hybrid (sliding / linear / dummy) layer lists and every layer sees the same
``kv_length = length + T`` with offset 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class KVCache:
    """Keys and values of one part, shape (rows, kv_heads, length, head_dim) per layer.

    ``length`` advances only when the part that owns the cache calls `advance` after a
    forward, so the masks of a forward are built against the length before it.
    """

    is_compileable = False  # read by the mask builders

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self._length = 0
        self._rows = 0

    # -------------------------------------------------------------- what the layers call
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Append one layer's new K/V; returns the layer's cached + new K/V."""
        if layer_idx in self.keys:
            key_states = torch.cat([self.keys[layer_idx], key_states], dim=-2)
            value_states = torch.cat([self.values[layer_idx], value_states], dim=-2)
        self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._length

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self._length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self._length + query_length, 0

    # -------------------------------------------------------------- bookkeeping
    def advance(self, rows: int, tokens: int) -> None:
        """Record that a forward of `rows` x `tokens` new positions went through the part."""
        if self._length and rows != self._rows:
            raise ValueError(f"KVCache holds {self._rows} rows, a forward brought {rows}")
        self._rows, self._length = rows, self._length + tokens
        for i, k in self.keys.items():
            if k.shape[0] != rows or k.shape[-2] != self._length:
                raise RuntimeError(f"layer {i} cached {tuple(k.shape)}, expected {rows} rows x {self._length}")

    @property
    def length(self) -> int:
        """Positions cached (padding included)."""
        return self._length

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def layers(self) -> list[int]:
        return sorted(self.keys)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.keys, self.values) for t in d.values())

    @classmethod
    def _build(cls, keys: dict, values: dict, rows: int, length: int) -> KVCache:
        cache = cls()
        cache.keys, cache.values, cache._rows, cache._length = keys, values, rows, length
        return cache

    def __repr__(self) -> str:
        return f"KVCache(rows={self._rows}, length={self._length}, layers={self.layers})"


def stack_caches(caches: Sequence[KVCache], masks: Sequence[torch.Tensor]) -> tuple[KVCache, torch.Tensor]:
    """Merge sessions into one cache: left-pad each to the longest (padding masked 0), concat rows.

    `masks[i]` is session i's (rows_i, length_i) 2-D mask over its cached positions.  Returns
    the merged cache and the merged (sum rows, max length) mask.
    """
    if not caches or len(caches) != len(masks):
        raise ValueError(f"need one mask per cache, got {len(caches)} caches and {len(masks)} masks")
    layers = caches[0].layers
    for i, (c, m) in enumerate(zip(caches, masks, strict=True)):
        if c.layers != layers:
            raise ValueError(f"cache {i} holds layers {c.layers}, cache 0 holds {layers}")
        if tuple(m.shape) != (c.rows, c.length):
            raise ValueError(f"mask {i} has shape {tuple(m.shape)}, its cache holds ({c.rows}, {c.length})")
    length = max(c.length for c in caches)

    def pad(t: torch.Tensor, n: int, dim_from_end: int) -> torch.Tensor:
        return F.pad(t, (0, 0) * (dim_from_end - 1) + (n, 0)) if n else t

    keys = {i: torch.cat([pad(c.keys[i], length - c.length, 2) for c in caches]) for i in layers}
    values = {i: torch.cat([pad(c.values[i], length - c.length, 2) for c in caches]) for i in layers}
    mask = torch.cat([pad(m, length - m.shape[1], 1) for m in masks])
    return KVCache._build(keys, values, sum(c.rows for c in caches), length), mask


def unstack_cache(cache: KVCache, rows: Sequence[int], lengths: Sequence[int]) -> list[KVCache]:
    """Inverse of `stack_caches` after a step: session i gets its `rows[i]` rows and the last
    `lengths[i]` positions (its own length, the stacked left padding stripped)."""
    if len(rows) != len(lengths) or sum(rows) != cache.rows:
        raise ValueError(f"rows {list(rows)} do not split a cache of {cache.rows} rows")
    if any(n > cache.length or n < 0 for n in lengths):
        raise ValueError(f"lengths {list(lengths)} exceed the cache's {cache.length} positions")
    out, start = [], 0
    for r, n in zip(rows, lengths, strict=True):
        cut = slice(cache.length - n, cache.length)
        keys = {i: k[start : start + r, :, cut].contiguous() for i, k in cache.keys.items()}
        values = {i: v[start : start + r, :, cut].contiguous() for i, v in cache.values.items()}
        out.append(KVCache._build(keys, values, r, n))
        start += r
    return out
