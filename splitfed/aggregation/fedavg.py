"""Plain FedAvg: clients send their adapters in the clear; the server takes the weighted mean."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from splitfed.aggregation.base import ClientUpdate, Outbox, Request, RoundOutcome, State
from splitfed.aggregation.layout import AdapterLayout
from splitfed.wire import ErrorCode, Message, MsgType, WireError
from splitfed.wire.meta import Update


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
    """Server side of plain federated averaging weighted by sample count (an `Aggregator`)."""

    def __init__(self, layout: AdapterLayout | None = None):
        self.layout = layout
        self._outcome: RoundOutcome | None = None

    def aggregate(self, updates: Mapping[str, tuple[State, int]]) -> dict[str, torch.Tensor]:
        return weighted_mean(updates)

    def accept(self, msg: Message) -> State:
        if self.layout is not None:
            self.layout.check(msg.tensors)
        return dict(msg.tensors)

    def start(self, rnd: int, updates: Mapping[str, ClientUpdate], send: Outbox) -> None:
        self._outcome = RoundOutcome(self.aggregate({name: (u.state, u.n_samples) for name, u in updates.items()}))

    def receive(self, client: str, msg: Message) -> None:
        raise WireError(ErrorCode.OUT_OF_ORDER, "no secure aggregation in progress")

    def poll(self, alive: set[str]) -> RoundOutcome | None:
        out, self._outcome = self._outcome, None
        return out


class PlainUpload:
    """Client side of plain FedAvg (an `Uploader`): the adapter goes in the UPDATE message."""

    def upload(self, request: Request, rnd: int, update: State, loss: float) -> Message:
        return request(MsgType.UPDATE, Update(loss=loss), update, frozenset({MsgType.ROUND_RESULT}))
