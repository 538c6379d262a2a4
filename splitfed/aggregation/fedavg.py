"""Weighted FedAvg of adapter state dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

State = Mapping[str, torch.Tensor]


class Aggregator(Protocol):
    """Combines the clients' adapter states of one round into one state."""

    def aggregate(self, updates: Mapping[str, tuple[State, int]]) -> dict[str, torch.Tensor]: ...


def weighted_mean(updates: Mapping[str, tuple[State, int]]) -> dict[str, torch.Tensor]:
    """sum_k n_k * state_k / sum_k n_k, computed in float64 and returned as float32."""
    if not updates:
        raise ValueError("nothing to aggregate: no client update this round")
    keys = None
    for name, (state, n) in updates.items():
        if n <= 0:
            raise ValueError(f"{name}: sample count must be positive, got {n}")
        if keys is None:
            keys = set(state)
        elif set(state) != keys:
            raise ValueError(f"{name}: adapter keys differ from the other clients'")
    total = float(sum(n for _, n in updates.values()))
    out = {}
    for key in sorted(keys):
        acc = sum(state[key].double() * (n / total) for state, n in updates.values())
        out[key] = acc.float()
    return out


class FedAvg:
    """Plain (non-secure) federated averaging weighted by sample count."""

    def aggregate(self, updates: Mapping[str, tuple[State, int]]) -> dict[str, torch.Tensor]:
        return weighted_mean(updates)
