"""When a round closes: membership, collected updates and the round deadline.

A round closes when every connected client has sent its update, or at the deadline with
whatever came in (clients that never joined this run and have not left are waited for
until then).  With no update at all the deadline is simply renewed.
"""

from __future__ import annotations

import logging
import time

from splitfed.aggregation import ClientUpdate

log = logging.getLogger("splitfed.server")


class RoundPolicy:
    def __init__(self, clients: list[str], *, rounds: int, deadline_s: float, start: int = 0, clock=time.monotonic):
        self.clients, self.rounds, self.deadline_s, self.clock = list(clients), rounds, deadline_s, clock
        self.round = start
        self.updates: dict[str, ClientUpdate] = {}
        self.losses: dict[str, float | None] = {}
        self.gone: set[str] = set()  # said bye or were dropped: rounds do not wait for them
        self.started = clock()

    @property
    def done(self) -> bool:
        return self.round >= self.rounds

    def joined(self, name: str) -> None:
        self.gone.discard(name)

    def left(self, name: str) -> None:
        self.gone.add(name)

    def add(self, name: str, update: ClientUpdate, loss: float | None) -> None:
        self.updates[name] = update
        self.losses[name] = loss

    def due(self, live: set[str]) -> list[str] | None:
        """The clients missing from the round if it should close now, else None."""
        expected = set(self.clients)
        waiting_for = (expected & live) - set(self.updates)
        never_joined = expected - live - set(self.updates) - self.gone
        late = self.clock() - self.started > self.deadline_s
        if not self.updates:
            if late:
                self.started = self.clock()
                log.warning("round %d: no update before the deadline; waiting again", self.round)
            return None
        if not late and (waiting_for or never_joined):
            return None
        return sorted(expected - set(self.updates))

    def advance(self) -> None:
        """The round is finished: forget its updates and start the next one."""
        self.updates, self.losses = {}, {}
        self.round += 1
        self.started = self.clock()
