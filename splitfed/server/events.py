"""What goes into `ServerCore` (events) and what comes out (actions).

The core reads no socket, file or clock: the adapter around it (`splitfed.server.runtime`)
turns the network and the passing time into events, and performs the actions the core
returns, in order.  Tests feed events directly and read the actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from splitfed.server.checkpoint import ServerCheckpoint
from splitfed.wire import Message, WireError

# ------------------------------------------------------------------ events


@dataclass(frozen=True)
class Received:
    """A decoded, validated message from a peer."""

    identity: bytes  # the peer's routing id: replies go there
    msg: Message
    now: float  # monotonic seconds
    nbytes: int = 0  # size on the wire
    user: str | None = None  # the peer's CURVE public key (z85); None in insecure mode
    key_owner: str | None = None  # the client that key belongs to (from the allowlist)


@dataclass(frozen=True)
class Tick:
    """Time passed (after every message and every poll timeout): deadlines and timeouts."""

    now: float


@dataclass(frozen=True)
class Banned:
    """The transport banned a peer over its limits: its session (and any step it holds) goes."""

    identity: bytes
    key_owner: str | None
    now: float


@dataclass(frozen=True)
class Idle:
    """No message is waiting on the socket: run the queued generation work (batched)."""

    now: float


Event = Received | Tick | Banned | Idle

# ------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Send:
    identity: bytes
    frames: list


@dataclass(frozen=True)
class Reject:
    """Answer `identity` with an ERROR (counted against its error budget)."""

    identity: bytes
    error: WireError
    step: int = 0


@dataclass(frozen=True)
class Record:
    """One metrics line."""

    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """`steps` trunk steps finished in `round` (for progress bars)."""

    round: int
    steps: int


@dataclass(frozen=True)
class SaveCheckpoint:
    checkpoint: ServerCheckpoint


@dataclass(frozen=True)
class Export:
    """The run is finished: write the merged PEFT adapter."""

    trunk_state: dict
    client_state: dict


Action = Send | Reject | Record | Progress | SaveCheckpoint | Export


class Outbox:
    """Where the core and the parts it drives put their actions during one event.

    Also a metrics sink (`write`), so the aggregator and housekeeping report through it."""

    def __init__(self) -> None:
        self.actions: list[Action] = []

    def put(self, action: Action) -> None:
        self.actions.append(action)

    def write(self, event: str, **fields: Any) -> dict:
        self.actions.append(Record(event, fields))
        return fields

    def take(self) -> list[Action]:
        out, self.actions = self.actions, []
        return out
