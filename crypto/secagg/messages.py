"""The protocol's messages: plain frozen dataclasses that check their own fields.

Every message carries the 16-byte ``round_id``. Client -> server messages carry the
``sender`` id; server -> client messages carry the ``recipient`` id. Their byte encoding is
in :mod:`~crypto.secagg.encoding`.

========================  =================  ==============================================
message                   direction          stage in which it is sent
========================  =================  ==============================================
``AdvertiseKeys``         client -> server   ADVERTISE_KEYS
``KeyDirectory``          server -> client   reply to ADVERTISE_KEYS
``ShareKeys``             client -> server   SHARE_KEYS
``ShareInbox``            server -> client   reply to SHARE_KEYS
``MaskedInput``           client -> server   MASKED_INPUT
``UnmaskRequest``         server -> client   reply to MASKED_INPUT
``UnmaskResponse``        client -> server   UNMASK
========================  =================  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from crypto import aead, kex, shamir, sign
from crypto.secagg.common import ROUND_ID_SIZE, ProtocolError
from crypto.secagg.config import RoundConfig

__all__ = [
    "SHARE_CIPHERTEXT_SIZE",
    "SHARE_PLAINTEXT_SIZE",
    "AdvertiseKeys",
    "ClientMessage",
    "EncryptedShare",
    "KeyDirectory",
    "MaskedInput",
    "Message",
    "RevealedShare",
    "ServerMessage",
    "ShareInbox",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
]

SHARE_PLAINTEXT_SIZE = 2 * shamir.SHARE_SIZE
"""An encrypted share carries the self-mask seed share then the mask-key share."""
SHARE_CIPHERTEXT_SIZE = SHARE_PLAINTEXT_SIZE + aead.OVERHEAD
DIGEST_SIZE = 32


def _check_bytes(msg: str, name: str, value: object, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise ProtocolError(f"{msg}.{name}: expected {size} bytes, received {got}")


def _check_id(msg: str, name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        raise ProtocolError(f"{msg}.{name}: expected a client id in [0, 2**32), received {value!r}")


def _check_tuple(msg: str, name: str, value: object, kind: type) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, kind) for v in value):
        raise ProtocolError(f"{msg}.{name}: expected a tuple of {kind.__name__}")


@dataclass(frozen=True)
class AdvertiseKeys:
    """A client's two fresh X25519 public keys for this round, signed with its Ed25519 identity key.

    ``encryption_key`` encrypts the shares sent between clients; ``mask_key`` seeds pairwise masks.
    ``signature`` signs ``common.advert_payload(round_id, sender, encryption_key, mask_key)``.
    """

    round_id: bytes
    sender: int
    encryption_key: bytes
    mask_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_bytes("AdvertiseKeys", "round_id", self.round_id, ROUND_ID_SIZE)
        _check_id("AdvertiseKeys", "sender", self.sender)
        _check_bytes("AdvertiseKeys", "encryption_key", self.encryption_key, kex.KEY_SIZE)
        _check_bytes("AdvertiseKeys", "mask_key", self.mask_key, kex.KEY_SIZE)
        _check_bytes("AdvertiseKeys", "signature", self.signature, sign.SIGNATURE_SIZE)


@dataclass(frozen=True)
class KeyDirectory:
    """Server -> client: the signed advertisements of the recipient's neighbours that advertised."""

    round_id: bytes
    recipient: int
    adverts: tuple[AdvertiseKeys, ...]

    def __post_init__(self) -> None:
        _check_bytes("KeyDirectory", "round_id", self.round_id, ROUND_ID_SIZE)
        _check_id("KeyDirectory", "recipient", self.recipient)
        _check_tuple("KeyDirectory", "adverts", self.adverts, AdvertiseKeys)


@dataclass(frozen=True)
class EncryptedShare:
    """One client's shares for another, AES-GCM-encrypted under their X25519 ``encryption_key`` agreement.

    The plaintext is ``self-mask seed share || mask-key share`` (2 x 68 bytes); the associated
    data binds round, sender and recipient.
    """

    sender: int
    recipient: int
    ciphertext: bytes

    def __post_init__(self) -> None:
        _check_id("EncryptedShare", "sender", self.sender)
        _check_id("EncryptedShare", "recipient", self.recipient)
        _check_bytes("EncryptedShare", "ciphertext", self.ciphertext, SHARE_CIPHERTEXT_SIZE)


@dataclass(frozen=True)
class ShareKeys:
    """Client -> server: one :class:`EncryptedShare` per neighbour in its directory, and a commitment.

    ``self_mask_digest`` is SHA-256 of the self-mask seed (``common.self_mask_digest``); the
    server uses it to check the seed it reconstructs.
    """

    round_id: bytes
    sender: int
    self_mask_digest: bytes
    shares: tuple[EncryptedShare, ...]

    def __post_init__(self) -> None:
        _check_bytes("ShareKeys", "round_id", self.round_id, ROUND_ID_SIZE)
        _check_id("ShareKeys", "sender", self.sender)
        _check_bytes("ShareKeys", "self_mask_digest", self.self_mask_digest, DIGEST_SIZE)
        _check_tuple("ShareKeys", "shares", self.shares, EncryptedShare)


@dataclass(frozen=True)
class ShareInbox:
    """Server -> client: the encrypted shares addressed to the recipient, relayed unchanged."""

    round_id: bytes
    recipient: int
    shares: tuple[EncryptedShare, ...]

    def __post_init__(self) -> None:
        _check_bytes("ShareInbox", "round_id", self.round_id, ROUND_ID_SIZE)
        _check_id("ShareInbox", "recipient", self.recipient)
        _check_tuple("ShareInbox", "shares", self.shares, EncryptedShare)


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Client -> server: input + self mask + pairwise masks, modulo ``2**modulus_bits`` (uint32 or uint64)."""

    round_id: bytes
    sender: int
    vector: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        _check_bytes("MaskedInput", "round_id", self.round_id, ROUND_ID_SIZE)
        _check_id("MaskedInput", "sender", self.sender)
        v = self.vector
        if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype not in (np.uint32, np.uint64):
            got = f"{v.dtype} array of shape {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__
            raise ProtocolError(f"MaskedInput.vector: expected a 1-D uint32 or uint64 array, received {got}")


@dataclass(frozen=True)
class UnmaskRequest:
    """Server -> client: which peers' self-mask shares (``survivors``) and mask-key shares (``dropped``) to reveal.

    ``survivors`` are the recipient's share holders (itself included) whose masked input
    arrived; ``dropped`` are the others. An honest client refuses an id that is in both.
    """

    round_id: bytes
    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_bytes("UnmaskRequest", "round_id", self.round_id, ROUND_ID_SIZE)
        _check_id("UnmaskRequest", "recipient", self.recipient)
        _check_tuple("UnmaskRequest", "survivors", self.survivors, int)
        _check_tuple("UnmaskRequest", "dropped", self.dropped, int)


@dataclass(frozen=True)
class RevealedShare:
    """A share (68 bytes, ``shamir.Share.to_bytes``) of the secret of client ``owner``."""

    owner: int
    share: bytes

    def __post_init__(self) -> None:
        _check_id("RevealedShare", "owner", self.owner)
        _check_bytes("RevealedShare", "share", self.share, shamir.SHARE_SIZE)


@dataclass(frozen=True)
class UnmaskResponse:
    """Client -> server: the shares asked for by the :class:`UnmaskRequest`."""

    round_id: bytes
    sender: int
    self_mask_shares: tuple[RevealedShare, ...]
    key_shares: tuple[RevealedShare, ...]

    def __post_init__(self) -> None:
        _check_bytes("UnmaskResponse", "round_id", self.round_id, ROUND_ID_SIZE)
        _check_id("UnmaskResponse", "sender", self.sender)
        _check_tuple("UnmaskResponse", "self_mask_shares", self.self_mask_shares, RevealedShare)
        _check_tuple("UnmaskResponse", "key_shares", self.key_shares, RevealedShare)


ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | UnmaskResponse
ServerMessage = KeyDirectory | ShareInbox | UnmaskRequest
Message = ClientMessage | ServerMessage | RoundConfig
