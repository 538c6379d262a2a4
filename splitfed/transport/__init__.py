"""ZeroMQ transport: ROUTER on the server, DEALER per client, CURVE keys and allow-list."""

from typing import TYPE_CHECKING

from splitfed.transport.keys import (
    allowed_clients,
    client_name,
    generate_keys,
    identity_keys,
    load_keypair,
    load_public,
    load_signing_key,
)

# The sockets and the serving loop pull in torch (through the wire codec); key handling does
# not, so `splitfed keys ...` starts in a fraction of a second.  They load on first use.
_LAZY = {
    "LinkState": "splitfed.transport.linkstate",
    **dict.fromkeys(
        ["UNLIMITED", "Ban", "BanReason", "PeerLimits", "RequestLoop", "TokenBucket", "request_step"],
        "splitfed.transport.service",
    ),
    **dict.fromkeys(
        ["INSECURE_WARNING", "ClientSocket", "Incoming", "ListenError", "NotSent", "SendStats", "ServerSocket"],
        "splitfed.transport.sockets",
    ),
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'splitfed.transport' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
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
