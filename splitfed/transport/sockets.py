"""ZeroMQ ROUTER (server) and DEALER (client) with CURVE by default.

The server accepts only clients whose public keys are in the allow-list; a client whose
key is not there never gets a reply (the handshake fails).  Plaintext needs an explicit
``insecure=True`` and logs a warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import zmq

from splitfed.transport.keys import allowed_clients, load_keypair, load_public

log = logging.getLogger(__name__)
INSECURE_WARNING = "INSECURE: plaintext transport, no authentication, no encryption (--insecure)"


@dataclass
class Incoming:
    identity: bytes  # ROUTER routing id of the peer
    frames: list  # zmq.Frame list (header first)
    user: str | None  # CURVE public key (z85) of the peer, None in insecure mode


class ServerSocket:
    def __init__(self, endpoint: str, *, keys_dir: str | os.PathLike | None, insecure: bool = False):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown peer -> error instead of silent drop
        self.auth = None
        self.clients: dict[str, str] = {}
        if insecure:
            log.warning(INSECURE_WARNING)
        else:
            from zmq.auth.thread import ThreadAuthenticator

            self.clients = allowed_clients(keys_dir)
            public, secret = load_keypair(keys_dir, "server")
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
        try:
            self.sock.send_multipart([identity, *frames], copy=False)
            return True
        except zmq.ZMQError as exc:  # peer gone (EHOSTUNREACH): not our problem to crash on
            log.debug("could not send to peer (it left): %s", exc)
            return False

    def close(self) -> None:
        self.sock.close(0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


class ClientSocket:
    def __init__(self, endpoint: str, *, keys_dir: str | os.PathLike | None, name: str, insecure: bool = False):
        self.endpoint = endpoint
        self.keys_dir, self.name, self.insecure = keys_dir, name, insecure
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
            sock.curve_serverkey = load_public(self.keys_dir, "server")
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
