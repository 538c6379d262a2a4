"""The server side of SecAgg / SecAgg+ as an explicit state machine.

The server relays keys and encrypted shares between clients, sums the masked inputs and,
from the shares the survivors reveal, removes the masks. It learns the sum of the surviving
clients' inputs modulo ``2**modulus_bits`` and nothing about any single input. Drive it
stage by stage; the transport decides when a stage is over (everyone answered, or a timeout)::

    server = SecAggServer(config, identity_keys=...)
    for stage in ("ADVERTISE_KEYS", "SHARE_KEYS", "MASKED_INPUT"):
        for message in incoming_until(server.ready or timeout):
            server.receive(message)                # ProtocolError: drop this message, carry on
        for client_id, reply in server.finish_stage().items():
            send(client_id, reply)                 # KeyDirectory / ShareInbox / UnmaskRequest
    for message in incoming_until(server.ready or timeout):
        server.receive(message)                    # UnmaskResponse
    result = server.finish()                       # AggregateResult(sum_mod, survivors, dropped)

``finish_stage`` and ``finish`` raise :class:`SecAggAbort` (and move to ``Stage.ABORTED``)
when too few clients remain to continue securely.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from crypto import kex, shamir
from crypto.secagg.client import expand_mask, verify_advert
from crypto.secagg.common import (
    ProtocolError,
    SecAggAbort,
    Stage,
    mask_info,
    self_mask_digest,
)
from crypto.secagg.config import RoundConfig
from crypto.secagg.messages import (
    AdvertiseKeys,
    ClientMessage,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    ShareInbox,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from crypto.secagg.quantize import word_dtype

__all__ = ["AggregateResult", "SecAggServer"]

_EXPECTED = {
    Stage.ADVERTISE_KEYS: AdvertiseKeys,
    Stage.SHARE_KEYS: ShareKeys,
    Stage.MASKED_INPUT: MaskedInput,
    Stage.UNMASK: UnmaskResponse,
}


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """What the server learns: the sum of the survivors' inputs modulo ``2**modulus_bits``.

    ``survivors`` are the clients whose masked inputs are included; ``dropped`` the clients
    that shared keys but whose inputs are not (their masks were removed).
    """

    sum_mod: np.ndarray = field(repr=False)
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


class SecAggServer:
    """The server's state for one round. ``identity_keys`` maps client id -> raw Ed25519 public key."""

    def __init__(self, config: RoundConfig, *, identity_keys: Mapping[int, bytes]) -> None:
        missing = sorted(set(config.client_ids) - set(identity_keys))
        if missing:
            raise ValueError(f"identity_keys lacks the public keys of clients {missing}")
        self.config = config
        self._identity_keys = dict(identity_keys)
        self._graph = config.graph
        self._t = config.share_threshold
        self._dtype = word_dtype(config.modulus_bits)
        self._stage = Stage.ADVERTISE_KEYS
        self._expected: frozenset[int] = frozenset(config.client_ids)
        self._inbox: dict[int, ClientMessage | None] = {}  # masked inputs are summed on arrival, not kept
        self._adverts: dict[int, AdvertiseKeys] = {}  # U1
        self._directory: dict[int, frozenset[int]] = {}  # recipient -> neighbours listed in its KeyDirectory
        self._share_keys: dict[int, ShareKeys] = {}  # U2
        self._peers: dict[int, frozenset[int]] = {}  # client in U2 -> clients it exchanged shares with
        self._sum: np.ndarray | None = None
        self._survivors: frozenset[int] = frozenset()  # U3
        self._requests: dict[int, UnmaskRequest] = {}

    @property
    def stage(self) -> Stage:
        """The stage whose client messages the server is collecting."""
        return self._stage

    @property
    def expected(self) -> frozenset[int]:
        """Clients from which a message is expected in the current stage."""
        return self._expected if self._stage in _EXPECTED else frozenset()

    @property
    def received(self) -> frozenset[int]:
        """Clients whose message for the current stage has been accepted."""
        return frozenset(self._inbox)

    @property
    def ready(self) -> bool:
        """True when every expected client has answered (the stage can be closed without waiting)."""
        return self._stage in _EXPECTED and len(self._inbox) == len(self._expected)

    # --- receiving ---------------------------------------------------------------------------

    def receive(self, message: ClientMessage) -> None:
        """Validate and store one client message of the current stage; raises :class:`ProtocolError` if invalid."""
        cls = _EXPECTED.get(self._stage)
        if cls is None:
            raise ProtocolError(f"server in stage {self._stage.name} accepts no messages")
        if not isinstance(message, cls):
            raise ProtocolError(
                f"server in stage {self._stage.name} expects {cls.__name__}, received {type(message).__name__}"
            )
        if message.round_id != self.config.round_id:
            raise ProtocolError(
                f"{cls.__name__}: round_id {message.round_id.hex()} does not match {self.config.round_id.hex()}"
            )
        sender = message.sender
        if sender not in self._expected:
            raise ProtocolError(
                f"{cls.__name__} from client {sender}: not expected in stage {self._stage.name} "
                f"(unknown id, dropped earlier, or excluded)"
            )
        if sender in self._inbox:
            raise ProtocolError(f"{cls.__name__} from client {sender}: duplicate message in stage {self._stage.name}")
        if isinstance(message, AdvertiseKeys):
            verify_advert(message, self._identity_keys)
        elif isinstance(message, ShareKeys):
            self._check_share_keys(message)
        elif isinstance(message, MaskedInput):
            self._add_masked_input(message)
        else:
            self._check_unmask_response(message)
        self._inbox[sender] = None if isinstance(message, MaskedInput) else message

    def _check_share_keys(self, msg: ShareKeys) -> None:
        recipients = [s.recipient for s in msg.shares]
        if any(s.sender != msg.sender for s in msg.shares):
            raise ProtocolError(f"ShareKeys from client {msg.sender}: an EncryptedShare names another sender")
        expected = self._directory[msg.sender]
        if len(recipients) != len(set(recipients)) or set(recipients) != expected:
            raise ProtocolError(
                f"ShareKeys from client {msg.sender}: expected one share for each of {sorted(expected)}, "
                f"received shares for {sorted(recipients)}"
            )

    def _add_masked_input(self, msg: MaskedInput) -> None:
        v = msg.vector
        if v.dtype != self._dtype or v.shape != (self.config.vector_length,):
            raise ProtocolError(
                f"MaskedInput from client {msg.sender}: expected {self._dtype} vector of length "
                f"{self.config.vector_length}, received {v.dtype} of length {v.shape[0]}"
            )
        bits = self.config.modulus_bits
        if bits < v.dtype.itemsize * 8 and v.size and int(v.max()) >= 1 << bits:
            raise ProtocolError(f"MaskedInput from client {msg.sender}: entries must be < 2**{bits}")
        if self._sum is None:
            self._sum = v.astype(self._dtype, copy=True)
        else:
            self._sum += v

    def _check_unmask_response(self, msg: UnmaskResponse) -> None:
        request = self._requests[msg.sender]
        for name, got, want in (
            ("self_mask_shares", msg.self_mask_shares, request.survivors),
            ("key_shares", msg.key_shares, request.dropped),
        ):
            owners = tuple(s.owner for s in got)
            if owners != want:
                raise ProtocolError(
                    f"UnmaskResponse from client {msg.sender}: {name} must be for {list(want)}, received {list(owners)}"
                )
            for s in got:
                try:
                    shamir.Share.from_bytes(s.share)
                except ValueError as exc:
                    raise ProtocolError(f"UnmaskResponse from client {msg.sender}: {name}: {exc}") from None

    # --- closing stages ----------------------------------------------------------------------

    def finish_stage(self) -> dict[int, KeyDirectory | ShareInbox | UnmaskRequest]:
        """Close ADVERTISE_KEYS, SHARE_KEYS or MASKED_INPUT; return the message to send to each remaining client."""
        closers = {
            Stage.ADVERTISE_KEYS: self._close_advertise,
            Stage.SHARE_KEYS: self._close_share_keys,
            Stage.MASKED_INPUT: self._close_masked_input,
        }
        closer = closers.get(self._stage)
        if closer is None:
            hint = "; call finish() to close UNMASK" if self._stage is Stage.UNMASK else ""
            raise ProtocolError(f"finish_stage() cannot close stage {self._stage.name}{hint}")
        return closer()

    def _close_advertise(self) -> dict[int, KeyDirectory]:
        self._adverts = {u: m for u, m in self._inbox.items() if isinstance(m, AdvertiseKeys)}
        alive = self._prune(set(self._adverts), "advertised keys")
        self._adverts = {u: self._adverts[u] for u in sorted(alive)}
        self._directory = {u: frozenset(self._graph[u] & alive) for u in alive}
        rid = self.config.round_id
        out = {u: KeyDirectory(rid, u, tuple(self._adverts[v] for v in sorted(self._directory[u]))) for u in alive}
        self._next(Stage.SHARE_KEYS, alive)
        return out

    def _close_share_keys(self) -> dict[int, ShareInbox]:
        sent = {u: m for u, m in self._inbox.items() if isinstance(m, ShareKeys)}
        alive = self._prune(set(sent), "shared keys")
        inbox: dict[int, list[EncryptedShare]] = {u: [] for u in alive}
        for u in sorted(alive):
            for item in sent[u].shares:
                if item.recipient in alive:
                    inbox[item.recipient].append(item)
        self._share_keys = {u: sent[u] for u in alive}
        self._peers = {u: frozenset(s.sender for s in items) for u, items in inbox.items()}
        rid = self.config.round_id
        out = {u: ShareInbox(rid, u, tuple(items)) for u, items in inbox.items()}
        self._next(Stage.MASKED_INPUT, alive)
        return out

    def _close_masked_input(self) -> dict[int, UnmaskRequest]:
        survivors = frozenset(self._inbox)
        self._check_count(len(survivors), "sent their masked input")
        for u in sorted(self._share_keys):  # survivors must be unmaskable, dropped clients' masks removable
            holders = self._peers[u] | {u} if u in survivors else self._peers[u]
            alive = len(holders & survivors)
            if alive < self._t and (u in survivors or self._peers[u] & survivors):
                self._abort()
                raise SecAggAbort(
                    f"cannot finish: only {alive} of the share holders of client {u} sent their masked input, "
                    f"the share threshold is {self._t}"
                )
        self._survivors = survivors
        rid = self.config.round_id
        self._requests = {
            u: UnmaskRequest(
                rid, u, tuple(sorted((self._peers[u] | {u}) & survivors)), tuple(sorted(self._peers[u] - survivors))
            )
            for u in sorted(survivors)
        }
        self._next(Stage.UNMASK, set(survivors))
        return dict(self._requests)

    def finish(self) -> AggregateResult:
        """Close UNMASK: reconstruct the needed secrets, remove every mask, return the aggregate."""
        if self._stage is not Stage.UNMASK:
            raise ProtocolError(f"finish() closes stage UNMASK, server is in {self._stage.name}")
        responses = {u: m for u, m in self._inbox.items() if isinstance(m, UnmaskResponse)}
        self._check_count(len(responses), "answered the unmask request")
        survivors = self._survivors
        dropped = frozenset(self._share_keys) - survivors
        seed_shares: dict[int, list[shamir.Share]] = {u: [] for u in survivors}
        key_shares: dict[int, list[shamir.Share]] = {v: [] for v in dropped}
        for responder in sorted(responses):
            msg = responses[responder]
            for s in msg.self_mask_shares:
                seed_shares[s.owner].append(shamir.Share.from_bytes(s.share))
            for s in msg.key_shares:
                key_shares[s.owner].append(shamir.Share.from_bytes(s.share))
        rid = self.config.round_id
        seeds = {u: self._reconstruct(u, seed_shares[u], "self-mask seed") for u in sorted(survivors)}
        for u, seed in seeds.items():
            if self_mask_digest(rid, u, seed) != self._share_keys[u].self_mask_digest:
                self._abort()
                raise SecAggAbort(f"the reconstructed self-mask seed of client {u} does not match its commitment")
        mask_keys = {}
        for v in sorted(dropped):
            if not self._peers[v] & survivors:
                continue  # no survivor carries a mask shared with v
            private = self._reconstruct(v, key_shares[v], "mask key")
            if kex.public_key(private) != self._adverts[v].mask_key:
                self._abort()
                raise SecAggAbort(f"the reconstructed mask key of client {v} does not match its advertised key")
            mask_keys[v] = private

        total = self._sum if self._sum is not None else np.zeros(self.config.vector_length, self._dtype)
        for seed in seeds.values():
            total -= expand_mask(seed, self.config)
        for v, private in mask_keys.items():
            for u in sorted(self._peers[v] & survivors):
                seed = kex.shared_key(private, self._adverts[u].mask_key, info=mask_info(rid))
                mask = expand_mask(seed, self.config)
                if u < v:  # u added this mask, so take it off; u > v subtracted it
                    total -= mask
                else:
                    total += mask
        if self.config.modulus_bits < total.dtype.itemsize * 8:
            total &= total.dtype.type((1 << self.config.modulus_bits) - 1)
        self._sum = None
        self._stage = Stage.DONE
        self._inbox = {}
        return AggregateResult(total.astype(np.uint64), tuple(sorted(survivors)), tuple(sorted(dropped)))

    # --- helpers -----------------------------------------------------------------------------

    def _reconstruct(self, owner: int, shares: list[shamir.Share], what: str) -> bytes:
        if len(shares) < self._t:
            self._abort()
            raise SecAggAbort(
                f"cannot reconstruct the {what} of client {owner}: {len(shares)} of its share holders answered, "
                f"the share threshold is {self._t}"
            )
        try:
            secret = shamir.combine(shares[: self._t], threshold=self._t)
        except ValueError as exc:
            self._abort()
            raise SecAggAbort(f"cannot reconstruct the {what} of client {owner}: {exc}") from None
        if len(secret) != kex.KEY_SIZE:
            self._abort()
            raise SecAggAbort(f"the reconstructed {what} of client {owner} has {len(secret)} bytes, expected 32")
        return secret

    def _prune(self, alive: set[int], what: str) -> set[int]:
        """Drop clients whose neighbourhood among ``alive`` is below the share threshold, then check the count."""
        self._check_count(len(alive), what)
        changed = True
        while changed:
            starved = {u for u in alive if len(self._graph[u] & alive) + 1 < self._t}
            changed = bool(starved)
            alive -= starved
        self._check_count(len(alive), f"{what} with enough neighbours left")
        return alive

    def _check_count(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            self._abort()
            raise SecAggAbort(
                f"aborting round: only {count} client(s) {what}, the threshold is {self.config.threshold}"
            )

    def _next(self, stage: Stage, expected: set[int] | frozenset[int]) -> None:
        self._stage = stage
        self._expected = frozenset(expected)
        self._inbox = {}

    def _abort(self) -> None:
        self._stage = Stage.ABORTED
        self._sum = None
        self._inbox = {}
