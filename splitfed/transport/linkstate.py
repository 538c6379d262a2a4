"""What a client's DEALER has seen of its server, and what to tell the user when it gets nowhere.

ZeroMQ hides connection trouble: a DEALER connects and reconnects silently, and a server that
refuses the CURVE handshake simply never answers.  The socket monitor reports what happens;
`LinkEvents` keeps count (pure: it takes event numbers) and `explain` turns the counts into one
sentence naming the endpoint and what to check.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import zmq


class LinkState(enum.Enum):
    UNREACHED = "unreached"  # no TCP connection (nothing listens, wrong host/port, firewall)
    CONNECTED = "connected"  # TCP connected, the ZeroMQ/CURVE handshake not complete
    READY = "ready"  # handshake complete: messages flow
    REFUSED = "refused"  # the server refused our key (not in its allow-list); ZeroMQ does not retry
    HANDSHAKE_FAILED = "handshake_failed"  # failed otherwise: wrong server key, or CURVE on one side only


#: The monitor events `LinkEvents.record` understands.
MONITORED = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass
class LinkEvents:
    """Monitor events over every socket of one `ClientSocket`, and the current socket's state.

    `handshakes` counts every completed handshake; the other counts start again at each one and
    with each fresh socket (they describe the current socket's trouble since it last worked)."""

    handshakes: int = 0
    connects: int = 0
    refused: int = 0
    failed: int = 0
    state: LinkState = LinkState.UNREACHED

    def record(self, event: int) -> None:
        if event == zmq.EVENT_CONNECTED:
            self.connects += 1
            self.state = LinkState.CONNECTED
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.handshakes += 1
            self.connects = self.refused = self.failed = 0
            self.state = LinkState.READY
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.refused += 1
            self.state = LinkState.REFUSED
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            self.failed += 1
            self.state = LinkState.HANDSHAKE_FAILED
        elif event == zmq.EVENT_DISCONNECTED and self.state in (LinkState.CONNECTED, LinkState.READY):
            self.state = LinkState.UNREACHED  # ZeroMQ reconnects by itself (a refused socket it does not)

    def new_socket(self) -> None:
        """A fresh socket starts unconnected, with no trouble yet."""
        self.connects = self.refused = self.failed = 0
        self.state = LinkState.UNREACHED


@dataclass(frozen=True)
class KeyRef:
    """A key file as the user knows it: its path and its fingerprint."""

    path: str
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.path} (fingerprint {self.fingerprint})"


def explain(events: LinkEvents, endpoint: str, *, waited_s: float, own: KeyRef | None, server: KeyRef | None) -> str:
    """Why nothing came back from `endpoint` in `waited_s` seconds, and what to check.

    `own`: this party's public key file; `server`: the server key it trusts (None: plaintext)."""
    if events.state == LinkState.READY:
        return f"the server at {endpoint} accepted the connection but did not answer within {waited_s:.0f} s"
    if events.refused:
        what = f"this client's key {own}" if own else "this client's key"
        return (
            f"the server at {endpoint} refused {what}: it is not in the server's allow-list; send that public "
            "key file to the server's operator, who installs it with `splitfed keys allow` and restarts the server"
        )
    if events.failed:
        if server is None:
            return (
                f"reached {endpoint} but the handshake failed: this client runs --insecure (plaintext) and the "
                "server does not, or it is not a splitfed server; use CURVE on both sides or --insecure on both"
            )
        return (
            f"reached {endpoint} but the CURVE handshake failed: the server key {server} is probably not this "
            "server's public key; compare that fingerprint with the server operator's server.key (also check "
            "that the server is not running --insecure)"
        )
    if events.connects:
        return (
            f"reached {endpoint} but no handshake completed in {waited_s:.0f} s: is that port a splitfed server "
            "(and not another program)?"
        )
    return (
        f"no server at {endpoint} after {waited_s:.0f} s: check that `splitfed server` is running there (it "
        "listens only once its model is loaded), that host and port match transport.endpoint, and that no "
        "firewall blocks the port"
    )
