"""The client side of SecAgg / SecAgg+ as an explicit state machine.

Drive it with the messages the server relays; every call returns the message to send back::

    client = SecAggClient(config, my_id, signing_key=..., identity_keys=..., vector=ints)
    send(client.advertise())                      # ADVERTISE_KEYS -> AdvertiseKeys
    send(client.handle(receive()))                # KeyDirectory   -> ShareKeys
    send(client.handle(receive()))                # ShareInbox     -> MaskedInput
    send(client.handle(receive()))                # UnmaskRequest  -> UnmaskResponse; stage DONE

``handle`` raises :class:`ProtocolError` for an invalid message (the client is unchanged and
can take a valid one) and :class:`SecAggAbort` when continuing would be unsafe (the client
moves to ``Stage.ABORTED`` and forgets its secrets).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import numpy as np

from crypto import aead, kex, prg, shamir
from crypto import sign as signatures
from crypto.secagg.common import (
    ProtocolError,
    SecAggAbort,
    Stage,
    advert_payload,
    mask_info,
    self_mask_digest,
    share_associated_data,
    share_info,
)
from crypto.secagg.config import RoundConfig
from crypto.secagg.messages import (
    AdvertiseKeys,
    ClientMessage,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    RevealedShare,
    ServerMessage,
    ShareInbox,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from crypto.secagg.quantize import word_dtype

__all__ = ["SecAggClient", "expand_mask", "verify_advert"]


def _randbelow_from(randbytes: Callable[[int], bytes]) -> Callable[[int], int]:
    """A uniform ``randbelow(upper)`` built on ``randbytes`` by rejection sampling."""

    def randbelow(upper: int) -> int:
        nbits = upper.bit_length()
        nbytes = (nbits + 7) // 8
        while True:
            value = int.from_bytes(randbytes(nbytes), "big") >> (8 * nbytes - nbits)
            if value < upper:
                return value

    return randbelow


def verify_advert(advert: AdvertiseKeys, identity_keys: Mapping[int, bytes]) -> None:
    """Raise :class:`ProtocolError` unless ``advert`` is signed by its sender's identity key."""
    public = identity_keys.get(advert.sender)
    if public is None:
        raise ProtocolError(f"AdvertiseKeys from client {advert.sender}: no identity key is known for that id")
    payload = advert_payload(advert.round_id, advert.sender, advert.encryption_key, advert.mask_key)
    try:
        signatures.verify(public, payload, advert.signature)
    except signatures.SignatureError as exc:
        raise ProtocolError(f"AdvertiseKeys from client {advert.sender}: bad signature ({exc})") from None
    if advert.encryption_key == advert.mask_key:
        raise ProtocolError(f"AdvertiseKeys from client {advert.sender}: the two public keys must differ")


def expand_mask(seed: bytes, config: RoundConfig) -> np.ndarray:
    """The mask vector (self or pairwise) that a 32-byte seed expands to under ``config``."""
    return prg.expand(seed, config.vector_length, bits=config.modulus_bits, dtype=word_dtype(config.modulus_bits))


class SecAggClient:
    """One client's state for one round.

    ``signing_key`` is this client's raw Ed25519 private key; ``identity_keys`` maps every
    client id to its raw Ed25519 public key (distributed out of band). ``vector`` holds
    ``config.vector_length`` integers in ``[0, 2**config.modulus_bits)`` (e.g. from
    :func:`crypto.secagg.quantize.quantize`). ``randbytes`` supplies all secret randomness
    (``os.urandom`` unless injected for tests).
    """

    def __init__(
        self,
        config: RoundConfig,
        client_id: int,
        *,
        signing_key: bytes,
        identity_keys: Mapping[int, bytes],
        vector: np.ndarray,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if client_id not in config.graph:
            raise ValueError(f"client id {client_id} is not in the round's client_ids")
        missing = sorted(v for v in config.graph[client_id] if v not in identity_keys)
        if missing:
            raise ValueError(f"identity_keys lacks the public keys of neighbours {missing}")
        x = np.asarray(vector)
        if x.shape != (config.vector_length,) or x.dtype.kind not in "ui":
            raise ValueError(
                f"vector must be a 1-D integer array of length {config.vector_length}, "
                f"received {x.dtype} array of shape {x.shape}"
            )
        if x.size and (int(x.min()) < 0 or int(x.max()) >= 1 << config.modulus_bits):
            raise ValueError(f"vector entries must lie in [0, 2**{config.modulus_bits})")
        self.config = config
        self.id = client_id
        self._signing_key = signing_key
        self._identity_keys = dict(identity_keys)
        self._randbytes = randbytes
        self._input: np.ndarray | None = x.astype(word_dtype(config.modulus_bits))
        self._stage = Stage.ADVERTISE_KEYS
        self._neighbours = config.graph[client_id]
        self._t = config.share_threshold
        # filled in as the round goes
        self._encryption = kex.generate_key_pair(randbytes)
        self._mask = kex.generate_key_pair(randbytes)
        self._self_seed = bytes(randbytes(prg.SEED_SIZE))
        self._peer_keys: dict[int, AdvertiseKeys] = {}  # neighbours in the directory
        self._held: dict[int, tuple[shamir.Share, shamir.Share]] = {}  # owner -> (self-mask share, key share)
        self._peers: frozenset[int] = frozenset()  # neighbours whose shares arrived: my pairwise masks

    @property
    def stage(self) -> Stage:
        """The stage whose message this client sends next (``DONE``/``ABORTED`` at the end)."""
        return self._stage

    # --- stage 1 -----------------------------------------------------------------------------

    def advertise(self) -> AdvertiseKeys:
        """ADVERTISE_KEYS: return the signed advertisement of this round's two public keys."""
        self._expect_stage(Stage.ADVERTISE_KEYS, "advertise()")
        rid = self.config.round_id
        payload = advert_payload(rid, self.id, self._encryption.public, self._mask.public)
        advert = AdvertiseKeys(
            rid, self.id, self._encryption.public, self._mask.public, signatures.sign(self._signing_key, payload)
        )
        self._stage = Stage.SHARE_KEYS
        return advert

    # --- dispatch ----------------------------------------------------------------------------

    def handle(self, message: ServerMessage) -> ClientMessage:
        """Process the server's message for the current stage and return the reply to send."""
        expected = {
            Stage.SHARE_KEYS: (KeyDirectory, self._on_directory),
            Stage.MASKED_INPUT: (ShareInbox, self._on_inbox),
            Stage.UNMASK: (UnmaskRequest, self._on_unmask),
        }.get(self._stage)
        if expected is None:
            hint = "; call advertise() first" if self._stage is Stage.ADVERTISE_KEYS else ""
            raise ProtocolError(
                f"client {self.id} in stage {self._stage.name} expects no message, "
                f"received {type(message).__name__}{hint}"
            )
        cls, handler = expected
        if not isinstance(message, cls):
            raise ProtocolError(
                f"client {self.id} in stage {self._stage.name} expects {cls.__name__}, "
                f"received {type(message).__name__}"
            )
        if message.round_id != self.config.round_id:
            raise ProtocolError(
                f"{cls.__name__}: round_id {message.round_id.hex()} does not match this round "
                f"{self.config.round_id.hex()}"
            )
        if message.recipient != self.id:
            raise ProtocolError(f"{cls.__name__}: addressed to client {message.recipient}, this is client {self.id}")
        return handler(message)

    # --- stage 2 -----------------------------------------------------------------------------

    def _on_directory(self, msg: KeyDirectory) -> ShareKeys:
        peers: dict[int, AdvertiseKeys] = {}
        for advert in msg.adverts:
            if advert.round_id != self.config.round_id:
                raise ProtocolError(f"KeyDirectory: advert of client {advert.sender} is for another round")
            if advert.sender not in self._neighbours:
                raise ProtocolError(
                    f"KeyDirectory: client {advert.sender} is not a neighbour of client {self.id} "
                    f"(expected ids among {sorted(self._neighbours)})"
                )
            if advert.sender in peers:
                raise ProtocolError(f"KeyDirectory: two adverts from client {advert.sender}")
            verify_advert(advert, self._identity_keys)
            peers[advert.sender] = advert
        keys = [self._encryption.public, self._mask.public]
        keys += [k for a in peers.values() for k in (a.encryption_key, a.mask_key)]
        if len(set(keys)) != len(keys):
            raise ProtocolError("KeyDirectory: public keys repeat across adverts (replayed or copied keys)")
        holders = sorted([*peers, self.id])
        self._require(len(holders), "clients in its key directory (itself included)")

        rng = _randbelow_from(self._randbytes)
        t, n = self._t, len(holders)
        seed_shares = shamir.split(self._self_seed, threshold=t, n=n, rng=rng)
        key_shares = shamir.split(self._mask.private, threshold=t, n=n, rng=rng)
        rid = self.config.round_id
        out = []
        for holder, s_share, k_share in zip(holders, seed_shares, key_shares, strict=True):
            if holder == self.id:
                self._held[self.id] = (s_share, k_share)
                continue
            key = kex.shared_key(self._encryption.private, peers[holder].encryption_key, info=share_info(rid))
            plaintext = s_share.to_bytes() + k_share.to_bytes()
            ad = share_associated_data(rid, self.id, holder)
            out.append(EncryptedShare(self.id, holder, aead.encrypt(key, plaintext, associated_data=ad)))
        self._peer_keys = peers
        self._stage = Stage.MASKED_INPUT
        return ShareKeys(rid, self.id, self_mask_digest(rid, self.id, self._self_seed), tuple(out))

    # --- stage 3 -----------------------------------------------------------------------------

    def _on_inbox(self, msg: ShareInbox) -> MaskedInput:
        rid = self.config.round_id
        held: dict[int, tuple[shamir.Share, shamir.Share]] = {}
        for item in msg.shares:
            sender = item.sender
            if item.recipient != self.id:
                raise ProtocolError(f"ShareInbox: share from client {sender} is addressed to client {item.recipient}")
            if sender not in self._peer_keys:
                raise ProtocolError(
                    f"ShareInbox: share from client {sender}, which is not in this client's key directory "
                    f"(expected ids among {sorted(self._peer_keys)})"
                )
            if sender in held:
                raise ProtocolError(f"ShareInbox: two shares from client {sender}")
            key = kex.shared_key(self._encryption.private, self._peer_keys[sender].encryption_key, info=share_info(rid))
            try:
                plain = aead.decrypt(key, item.ciphertext, associated_data=share_associated_data(rid, sender, self.id))
            except aead.AuthenticationError as exc:
                raise ProtocolError(
                    f"ShareInbox: the share from client {sender} failed authentication ({exc})"
                ) from None
            try:
                s_share = shamir.Share.from_bytes(plain[: shamir.SHARE_SIZE])
                k_share = shamir.Share.from_bytes(plain[shamir.SHARE_SIZE :])
            except ValueError as exc:
                raise ProtocolError(f"ShareInbox: malformed share from client {sender}: {exc}") from None
            if s_share.x != k_share.x:
                raise ProtocolError(f"ShareInbox: the two shares from client {sender} have different x")
            held[sender] = (s_share, k_share)
        self._require(len(held) + 1, "share holders left in its neighbourhood (itself included)")

        assert self._input is not None
        y = self._input.copy()
        y += expand_mask(self._self_seed, self.config)
        for peer in sorted(held):
            seed = kex.shared_key(self._mask.private, self._peer_keys[peer].mask_key, info=mask_info(rid))
            if self.id < peer:
                y += expand_mask(seed, self.config)
            else:
                y -= expand_mask(seed, self.config)
        if self.config.modulus_bits < y.dtype.itemsize * 8:
            y &= y.dtype.type((1 << self.config.modulus_bits) - 1)
        self._held.update(held)
        self._peers = frozenset(held)
        self._input = None  # the plain input is no longer needed
        self._stage = Stage.UNMASK
        return MaskedInput(rid, self.id, y)

    # --- stage 4 -----------------------------------------------------------------------------

    def _on_unmask(self, msg: UnmaskRequest) -> UnmaskResponse:
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        if len(survivors) != len(msg.survivors) or len(dropped) != len(msg.dropped):
            raise ProtocolError("UnmaskRequest: survivors and dropped must not repeat ids")
        both = sorted(survivors & dropped)
        if both:
            self._abort()
            raise SecAggAbort(
                f"client {self.id} refuses to unmask: the server asked for both the self-mask share and the "
                f"mask-key share of client(s) {both}, which would reveal their input"
            )
        if self.id in dropped:
            self._abort()
            raise SecAggAbort(
                f"client {self.id} refuses to unmask: the server lists it as dropped although it sent its "
                "masked input; revealing its own mask-key share could expose its input"
            )
        expected = self._peers | {self.id}
        if survivors | dropped != expected:
            raise ProtocolError(
                f"UnmaskRequest: survivors + dropped must be exactly the share holders {sorted(expected)}, "
                f"received survivors={sorted(survivors)} dropped={sorted(dropped)}"
            )
        self._require(len(survivors), "surviving clients in its neighbourhood (itself included)")
        response = UnmaskResponse(
            self.config.round_id,
            self.id,
            tuple(RevealedShare(u, self._held[u][0].to_bytes()) for u in sorted(survivors)),
            tuple(RevealedShare(v, self._held[v][1].to_bytes()) for v in sorted(dropped)),
        )
        self._forget()
        self._stage = Stage.DONE
        return response

    # --- helpers -----------------------------------------------------------------------------

    def _expect_stage(self, stage: Stage, what: str) -> None:
        if self._stage is not stage:
            raise ProtocolError(f"client {self.id}: {what} is for stage {stage.name}, client is in {self._stage.name}")

    def _require(self, count: int, what: str) -> None:
        if count < self._t:
            self._abort()
            raise SecAggAbort(f"client {self.id} aborts: only {count} {what}, the share threshold is {self._t}")

    def _forget(self) -> None:
        self._held.clear()
        self._input = None
        self._self_seed = b""

    def _abort(self) -> None:
        self._forget()
        self._stage = Stage.ABORTED
