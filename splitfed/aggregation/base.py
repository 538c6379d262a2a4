"""What every way of combining the clients' adapters provides.

Server side, an `Aggregator` takes the round's updates when the round closes and, possibly
over several message exchanges (secure aggregation), produces a `RoundOutcome`.  Client side,
an `Uploader` hands the round's adapter over and returns the server's ROUND_RESULT.  The
runtimes hold one of each and never branch on which kind it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from splitfed.wire import Message, MsgType
from splitfed.wire.meta import SecAgg

State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ClientUpdate:
    """One participant of a round, as the server knows it when the round closes."""

    client_id: int
    n_samples: int  # the FedAvg weight, stated by the client when it joined
    state: State = field(default_factory=dict)  # its adapter in the clear (empty under secure aggregation)


@dataclass(frozen=True)
class RoundOutcome:
    """What a round's aggregation produced."""

    state: dict[str, torch.Tensor] | None  # the new client aggregate; None keeps the previous one
    dropped: tuple[str, ...] = ()  # participants whose input is not in the aggregate


#: send(client name, meta, tensors): one aggregation-protocol message (SECAGG) to a participant
Outbox = Callable[[str, SecAgg, dict[str, torch.Tensor]], None]

#: request(type, meta (that type's `wire.meta` class), tensors, expected reply types) -> the reply,
#: on the client's connection
Request = Callable[[MsgType, Any, State | None, frozenset[MsgType]], Message]


class Aggregator(Protocol):
    """Server side: combines the clients' adapters of one round into one state."""

    def accept(self, msg: Message) -> State:
        """Validate a client's UPDATE; return the adapter to keep for the round.  Raises `WireError`."""
        ...

    def start(self, rnd: int, updates: Mapping[str, ClientUpdate], send: Outbox) -> None:
        """The round closed with these participants: begin combining."""
        ...

    def receive(self, client: str, msg: Message) -> None:
        """One aggregation-protocol message (SECAGG) from a participant.  Raises `WireError`."""
        ...

    def poll(self, alive: set[str]) -> RoundOutcome | None:
        """The outcome once the combination is finished, else None.  `alive`: participants still connected."""
        ...


class Uploader(Protocol):
    """Client side: sends the round's adapter to the aggregation; returns the ROUND_RESULT message."""

    def upload(self, request: Request, rnd: int, update: State, loss: float) -> Message: ...
