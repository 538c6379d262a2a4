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
from splitfed.transport.linkstate import LinkState
from splitfed.transport.service import UNLIMITED, Ban, BanReason, PeerLimits, RequestLoop, TokenBucket, request_step
from splitfed.transport.sockets import (
    INSECURE_WARNING,
    ClientSocket,
    Incoming,
    ListenError,
    NotSent,
    SendStats,
    ServerSocket,
)

__all__ = [
    "INSECURE_WARNING",
    "UNLIMITED",
    "Ban",
    "BanReason",
    "ClientSocket",
    "Incoming",
    "LinkState",
    "ListenError",
    "NotSent",
    "PeerLimits",
    "RequestLoop",
    "SendStats",
    "ServerSocket",
    "TokenBucket",
    "allowed_clients",
    "client_name",
    "generate_keys",
    "identity_keys",
    "load_signing_key",
    "load_keypair",
    "load_public",
    "request_step",
]
