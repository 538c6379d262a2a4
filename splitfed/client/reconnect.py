"""When a client that lost its server retries, and when it gives up (no I/O: the caller passes the clock).

Before the first WELCOME the wait is short: a server that is not there, or refuses the
client, is a setup mistake (``transport.connect_timeout_s``, and `REJECTED_GRACE_S` after a
refused handshake).  Once welcomed, a lost server may be restarting from its checkpoint, so
the client keeps trying for ``max_reconnect_s`` (10 x ``transport.timeout_s`` by default).
"""

from __future__ import annotations

from dataclasses import dataclass

from splitfed.client.link import HandshakeRejected, ServerLost, ServerUnreachable

REJECTED_GRACE_S = 10.0  # how long a client retries a server that refuses its handshake


@dataclass
class ReconnectPolicy:
    name: str
    max_reconnect_s: float
    connect_timeout_s: float
    lost_since: float | None = None
    last_reason: str = ""

    def connected(self) -> None:
        """The server answered: the next loss starts a new wait."""
        self.lost_since = None

    def lost(self, exc: ServerLost, *, now: float, welcomed: bool, started: float) -> bool:
        """Record a loss at `now`; True when its reason is new (worth a warning).

        Raises `ServerLost` naming the wait when the client should give up: at once for an
        unreachable endpoint, else once the wait exceeds its budget."""
        self.lost_since = self.lost_since or (now if welcomed else started)
        budget = self.max_reconnect_s if welcomed else self.connect_timeout_s
        if isinstance(exc, HandshakeRejected):
            budget = min(budget, REJECTED_GRACE_S)  # retried only in case the server is being fixed
        if isinstance(exc, ServerUnreachable) or now - self.lost_since > budget:
            raise ServerLost(f"{self.name} gave up after {now - self.lost_since:.0f} s: {exc}") from None
        new = str(exc) != self.last_reason
        self.last_reason = str(exc)
        return new
