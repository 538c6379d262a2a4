"""ZeroMQ transport: ROUTER on the server, DEALER per client, CURVE keys and allow-list."""

from splitfed.transport.keys import (
    allowed_clients,
    client_name,
    generate_keys,
    identity_keys,
    load_keypair,
    load_public,
    load_signing_key,
)
from splitfed.transport.service import RequestLoop, request_step
from splitfed.transport.sockets import INSECURE_WARNING, ClientSocket, Incoming, ServerSocket

__all__ = [
    "INSECURE_WARNING",
    "ClientSocket",
    "Incoming",
    "RequestLoop",
    "ServerSocket",
    "allowed_clients",
    "client_name",
    "generate_keys",
    "identity_keys",
    "load_signing_key",
    "load_keypair",
    "load_public",
    "request_step",
]
