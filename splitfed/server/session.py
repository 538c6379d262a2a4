"""Per-client protocol state on the server: an explicit state machine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from splitfed.wire import ErrorCode, MsgType, WireError


class Stage(enum.Enum):
    READY = "ready"  # may send FORWARD, UPDATE, HEARTBEAT, BYE
    AWAIT_BACKWARD = "await_backward"  # sent a training FORWARD; must send BACKWARD next
    AWAIT_ROUND = "await_round"  # sent UPDATE; waits for ROUND_RESULT
    GENERATE = "generate"  # a generation session (HELLO with generate): streams only, no rounds
    DONE = "done"  # said BYE


# which messages each stage accepts (HELLO is handled before a session exists)
ALLOWED: dict[Stage, frozenset[MsgType]] = {
    Stage.READY: frozenset({MsgType.FORWARD, MsgType.UPDATE, MsgType.HEARTBEAT, MsgType.BYE}),
    Stage.AWAIT_BACKWARD: frozenset({MsgType.BACKWARD, MsgType.HEARTBEAT, MsgType.BYE}),
    Stage.AWAIT_ROUND: frozenset({MsgType.SECAGG, MsgType.HEARTBEAT, MsgType.BYE}),
    Stage.GENERATE: frozenset({MsgType.GENERATE, MsgType.HEARTBEAT, MsgType.BYE}),
    Stage.DONE: frozenset(),
}


@dataclass
class Session:
    name: str  # "client-K"
    client_id: int
    identity: bytes
    session_id: str
    n_samples: int
    stage: Stage = Stage.READY
    last_seen: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0
    generates: bool = False  # a generation session: streams only, never a member of the rounds

    def check(self, mtype: MsgType) -> None:
        if mtype not in ALLOWED[self.stage]:
            allowed = sorted(t.value for t in ALLOWED[self.stage])
            raise WireError(
                ErrorCode.OUT_OF_ORDER,
                f"{self.name}: {mtype.value} not allowed in stage {self.stage.value}; expected one of {allowed}",
            )
