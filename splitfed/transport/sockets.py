"""ZeroMQ ROUTER (server) and DEALER (client) with CURVE by default.

The server accepts only clients whose public keys are in the allow-list; a client whose
key is not there never gets a reply (the handshake fails; the server logs the key's fingerprint
once).  Plaintext needs an explicit ``insecure=True`` and logs a warning.  A server that cannot
bind raises `ListenError`; a client watches its DEALER with a socket monitor (`ClientSocket.events`)
so that a refused key or a wrong server key can be told apart from a server that is not there.

The server never blocks on a peer: `ServerSocket.send` does not wait.  Each peer has a queue
of at most ``send_hwm`` replies; a reply to a peer whose queue is full (it does not read) or
who is gone is dropped, counted in `ServerSocket.dropped` and `ServerSocket.stats`, and
`send` returns False.  Inbound, each peer may have at most ``recv_hwm`` messages waiting;
beyond that ZeroMQ stops reading from that peer's connection (only that peer waits).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from splitfed.checks import is_int
from splitfed.errors import SplitfedError
from splitfed.transport.allowlist import AllowList
from splitfed.transport.keys import allowed_clients, key_fingerprint, load_keypair, load_public
from splitfed.transport.linkstate import MONITORED, KeyRef, LinkEvents, LinkState, explain

log = logging.getLogger(__name__)
INSECURE_WARNING = "INSECURE: plaintext transport, no authentication, no encryption (--insecure)"
MAX_TRACKED_PEERS = 4096  # peers whose dropped replies `ServerSocket.dropped` remembers
SEND_TIMEOUT_MS = 10_000  # longest a client waits for room to queue a message


class ListenError(SplitfedError, ConnectionError):
    """A server socket cannot listen on its endpoint (address in use, not this host's, ...)."""


class NotSent(SplitfedError, ConnectionError):
    """A client could not queue a message: it has no connection that takes it (see the text)."""


_BIND_HINTS = {
    errno.EADDRINUSE: "address already in use (another server, or another program, holds the port: stop it "
    "or choose another port in the endpoint)",
    errno.EADDRNOTAVAIL: "address not available (the host is not an address of this machine: use its own "
    "address, or 0.0.0.0 for every interface)",
    errno.EACCES: "permission denied (ports below 1024 need privileges: choose a higher port)",
}


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
            if value is not None and (not is_int(value) or value < 1):
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
        self.allow_list: AllowList | None = None
        self.dropped: dict[bytes, int] = {}  # routing id -> replies dropped (the latest MAX_TRACKED_PEERS peers)
        self.auth = None
        self.clients: dict[str, str] = {}
        if insecure:
            log.warning(INSECURE_WARNING)
        else:
            from zmq.auth.thread import ThreadAuthenticator

            self.clients = allowed_clients(keys_dir)
            public, secret = load_keypair(keys_dir, name)
            self.allow_list = AllowList(self.clients, where=f"the allow-list {Path(keys_dir) / 'allowed'}")
            self.auth = ThreadAuthenticator(self.ctx)
            self.auth.start()
            self.auth.configure_curve_callback(domain="*", credentials_provider=self.allow_list)
            self.sock.curve_secretkey = secret
            self.sock.curve_publickey = public
            self.sock.curve_server = True
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            why = _BIND_HINTS.get(exc.errno, str(exc))
            raise ListenError(f"cannot listen on {endpoint}: {why}") from None
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
        self.events = LinkEvents()
        self._public = self._server_public = None  # z85 keys, once loaded
        self.ctx = zmq.Context()
        self.sock = None
        self.monitor = None
        self.reconnect()

    @property
    def state(self) -> LinkState:
        """What the current DEALER has reached (drains the monitor's events first)."""
        self._drain_events()
        return self.events.state

    def explain(self, waited_s: float) -> str:
        """Why the server has not answered for `waited_s` seconds, and what to check (one sentence)."""
        self._drain_events()
        own = server = None
        if not self.insecure:
            own = KeyRef(str(Path(self.keys_dir) / f"{self.name}.key"), key_fingerprint(self._public))
            if self.server_key is not None:
                server = KeyRef("given for this server", key_fingerprint(self.server_key))
            else:
                server = KeyRef(str(Path(self.keys_dir) / "server.key"), key_fingerprint(self._server_public))
        return explain(self.events, self.endpoint, waited_s=waited_s, own=own, server=server)

    def _drain_events(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor is not None and self.monitor.poll(0):
            self.events.record(recv_monitor_message(self.monitor)["event"])

    def _close_socket(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(0)
            self.monitor = None
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def reconnect(self) -> None:
        """Fresh DEALER: drops anything queued for a server that went away (and retries a refused handshake)."""
        self._drain_events()
        self._close_socket()
        self.events.new_socket()
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.insecure:
            log.warning(INSECURE_WARNING)
        else:
            public, secret = load_keypair(self.keys_dir, self.name)
            self._public, self._server_public = public, self.server_key or load_public(self.keys_dir, "server")
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_serverkey = self._server_public
        self.monitor = sock.get_monitor_socket(MONITORED)
        sock.connect(self.endpoint)
        self.sock = sock
        self.poller = zmq.Poller()
        self.poller.register(sock, zmq.POLLIN)

    def send(self, frames: list, *, timeout_ms: int = SEND_TIMEOUT_MS) -> None:
        """Queue `frames` for the server, waiting at most `timeout_ms` for room.

        A DEALER whose handshake the server refused has no connection and would wait forever;
        `NotSent` says why instead."""
        deadline = time.monotonic() + timeout_ms / 1000
        if self.state == LinkState.REFUSED:  # its pipe may linger a moment, but nothing will leave
            raise NotSent(f"message not sent: {self.explain(timeout_ms / 1000)}")
        while not self.sock.poll(min(100, timeout_ms), zmq.POLLOUT):
            # a refused socket never gets a connection back: no point in waiting out the timeout
            if self.state == LinkState.REFUSED or time.monotonic() >= deadline:
                raise NotSent(f"message not sent: {self.explain(timeout_ms / 1000)}")
        try:
            self.sock.send_multipart(frames, copy=False, flags=zmq.DONTWAIT)
        except zmq.Again:
            raise NotSent(f"message not sent: {self.explain(timeout_ms / 1000)}") from None

    def recv(self, timeout_ms: int) -> list | None:
        if not self.poller.poll(timeout_ms):
            return None
        return self.sock.recv_multipart(copy=False)

    def close(self) -> None:
        self._close_socket()
        self.ctx.term()
