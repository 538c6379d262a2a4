"""ZeroMQ ROUTER (server) and DEALER (client) with CURVE by default.

The server accepts only clients whose public keys are in the allow-list; a client whose
key is not there never gets a reply (the handshake fails).  Plaintext needs an explicit
``insecure=True`` and logs a warning.

The server never blocks on a peer: `ServerSocket.send` does not wait.  Each peer has a queue
of at most ``send_hwm`` replies; a reply to a peer whose queue is full (it does not read) or
who is gone is dropped, counted in `ServerSocket.dropped` and `ServerSocket.stats`, and
`send` returns False.  Inbound, each peer may have at most ``recv_hwm`` messages waiting;
beyond that ZeroMQ stops reading from that peer's connection (only that peer waits).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import zmq

from splitfed.transport.keys import allowed_clients, load_keypair, load_public

log = logging.getLogger(__name__)
INSECURE_WARNING = "INSECURE: plaintext transport, no authentication, no encryption (--insecure)"
MAX_TRACKED_PEERS = 4096  # peers whose dropped replies `ServerSocket.dropped` remembers


@dataclass
class Incoming:
    identity: bytes  # ROUTER routing id of the peer
    frames: list  # zmq.Frame list (header first)
    user: str | None  # CURVE public key (z85) of the peer, None in insecure mode


@dataclass
class SendStats:
    """Replies sent and dropped by a `ServerSocket`, over all peers."""

    sent: int = 0
    full: int = 0  # dropped: the peer's queue was full (it does not read)
    gone: int = 0  # dropped: the peer had left (or never was)


class ServerSocket:
    def __init__(
        self,
        endpoint: str,
        *,
        keys_dir: str | os.PathLike | None,
        insecure: bool = False,
        send_hwm: int = 1000,
        recv_hwm: int = 100,
        max_frame_bytes: int | None = None,
        name: str = "server",
    ):
        """`send_hwm` / `recv_hwm`: messages queued per peer out / in; `max_frame_bytes`: a peer
        sending a larger frame is disconnected by ZeroMQ before the frame is read (None: no limit);
        `name`: whose key pair in `keys_dir` this socket uses (``NAME.key_secret``)."""
        for option, value in (("send_hwm", send_hwm), ("recv_hwm", recv_hwm), ("max_frame_bytes", max_frame_bytes)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"ServerSocket {option}: expected an integer >= 1, got {value!r}")
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # full or unknown peer -> error instead of silent drop
        # options a bound socket copies into every accepted connection: set them before bind
        self.sock.setsockopt(zmq.SNDHWM, send_hwm)
        self.sock.setsockopt(zmq.RCVHWM, recv_hwm)
        if max_frame_bytes is not None:
            self.sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self.stats = SendStats()
        self.dropped: dict[bytes, int] = {}  # routing id -> replies dropped (the latest MAX_TRACKED_PEERS peers)
        self.auth = None
        self.clients: dict[str, str] = {}
        if insecure:
            log.warning(INSECURE_WARNING)
        else:
            from zmq.auth.thread import ThreadAuthenticator

            self.clients = allowed_clients(keys_dir)
            public, secret = load_keypair(keys_dir, name)
            self.auth = ThreadAuthenticator(self.ctx)
            self.auth.start()
            self.auth.configure_curve(domain="*", location=str(os.path.join(keys_dir, "allowed")))
            self.sock.curve_secretkey = secret
            self.sock.curve_publickey = public
            self.sock.curve_server = True
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)

    def recv(self, timeout_ms: int) -> Incoming | None:
        if not self.poller.poll(timeout_ms):
            return None
        frames = self.sock.recv_multipart(copy=False)
        user = None
        if self.auth is not None:
            try:
                user = frames[-1].get("User-Id")
            except zmq.ZMQError:
                user = None
        return Incoming(identity=frames[0].bytes, frames=frames[1:], user=user)

    def send(self, identity: bytes, frames: list) -> bool:
        """Queue a reply without waiting; False when it was dropped (peer not reading, or gone)."""
        try:
            # with ROUTER_MANDATORY only the routing-id frame can fail: EAGAIN when the peer's queue
            # is full, EHOSTUNREACH when it is gone; then nothing of the message was queued
            self.sock.send_multipart([identity, *frames], flags=zmq.DONTWAIT, copy=False)
        except zmq.Again:
            self._dropped(identity, "its queue is full: it does not read", full=True)
            return False
        except zmq.ZMQError as exc:
            self._dropped(identity, f"it is gone ({exc})", full=False)
            return False
        self.stats.sent += 1
        return True

    def _dropped(self, identity: bytes, why: str, *, full: bool) -> None:
        if full:
            self.stats.full += 1
        else:
            self.stats.gone += 1
        n = self.dropped.pop(identity, 0) + 1
        self.dropped[identity] = n  # re-inserted: the dict is ordered by last drop
        if len(self.dropped) > MAX_TRACKED_PEERS:
            del self.dropped[next(iter(self.dropped))]
        if _power_of_ten(n):  # 1, 10, 100, ...: a flood costs a handful of lines
            log.log(
                logging.WARNING if full else logging.DEBUG,
                "reply to peer %s dropped, %s (%d dropped so far)",
                identity.hex()[:32],
                why,
                n,
            )

    def close(self) -> None:
        self.sock.close(0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


def _power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


class ClientSocket:
    def __init__(
        self,
        endpoint: str,
        *,
        keys_dir: str | os.PathLike | None,
        name: str,
        insecure: bool = False,
        server_key: bytes | None = None,
    ):
        """`name`: this party's key pair in `keys_dir`; `server_key`: the server's z85 public key
        (default: ``server.key`` in `keys_dir`)."""
        self.endpoint = endpoint
        self.keys_dir, self.name, self.insecure, self.server_key = keys_dir, name, insecure, server_key
        self.ctx = zmq.Context()
        self.sock = None
        self.reconnect()

    def reconnect(self) -> None:
        """Fresh DEALER: drops anything queued for a server that went away."""
        if self.sock is not None:
            self.sock.close(0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.insecure:
            log.warning(INSECURE_WARNING)
        else:
            public, secret = load_keypair(self.keys_dir, self.name)
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_serverkey = self.server_key or load_public(self.keys_dir, "server")
        sock.connect(self.endpoint)
        self.sock = sock
        self.poller = zmq.Poller()
        self.poller.register(sock, zmq.POLLIN)

    def send(self, frames: list) -> None:
        self.sock.send_multipart(frames, copy=False)

    def recv(self, timeout_ms: int) -> list | None:
        if not self.poller.poll(timeout_ms):
            return None
        return self.sock.recv_multipart(copy=False)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        self.ctx.term()
