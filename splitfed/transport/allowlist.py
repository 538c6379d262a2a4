"""The server's CURVE allow-list as a ZAP credentials provider.

ZeroMQ's authenticator asks `AllowList.callback` about every CURVE handshake.  A key in the
allow-list (``<keys_dir>/allowed/NAME.key``) is accepted; any other key is refused, and the
first refusal of each key is logged with its fingerprint, so the operator learns which file to
install while a client retrying in a loop costs one log line.  At most `remember` refused keys
are remembered (the oldest is forgotten first): a flood of fresh keys cannot grow the memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from splitfed.transport.keys import key_fingerprint

log = logging.getLogger("splitfed.transport")
MAX_REMEMBERED_REFUSALS = 4096


class AllowList:
    """Accepts the public keys of `clients` (z85 key -> party name); logs each refused key once."""

    def __init__(
        self, clients: Mapping[str, str], *, where: str = "the allow-list", remember: int = MAX_REMEMBERED_REFUSALS
    ):
        if remember < 1:
            raise ValueError(f"remember: expected an integer >= 1, got {remember!r}")
        self.clients = dict(clients)
        self.where, self.remember = where, remember
        self.refused: dict[str, int] = {}  # z85 key -> handshakes refused (the latest `remember` keys)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: whether the client with CURVE public key `key` (z85) may connect."""
        z85 = key.decode("ascii", errors="replace") if isinstance(key, bytes) else str(key)
        if z85 in self.clients:
            return True
        n = self.refused.pop(z85, 0) + 1
        self.refused[z85] = n  # re-inserted: the dict is ordered by last refusal
        if len(self.refused) > self.remember:
            del self.refused[next(iter(self.refused))]
        if n == 1:
            log.warning(
                "refused a client whose key is not in %s: fingerprint %s (if it is one of yours, install its "
                "public key file with `splitfed keys allow` and restart the server)",
                self.where,
                key_fingerprint(z85) if len(z85) == 40 else "(malformed key)",
            )
        return False
