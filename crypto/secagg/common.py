"""Stages, errors and domain-separation labels shared by the secure-aggregation client and server."""

from __future__ import annotations

import hashlib
import struct
from enum import Enum

__all__ = [
    "ROUND_ID_SIZE",
    "ProtocolError",
    "SecAggAbort",
    "Stage",
    "advert_payload",
    "mask_info",
    "self_mask_digest",
    "share_associated_data",
    "share_info",
]

ROUND_ID_SIZE = 16
_LABEL = b"splitfed/secagg/v1/"


class Stage(Enum):
    """Protocol stages. A client or server in a stage is waiting for / producing that stage's messages.

    The four protocol stages, in order, are ``ADVERTISE_KEYS``, ``SHARE_KEYS``, ``MASKED_INPUT``
    and ``UNMASK``; ``DONE`` and ``ABORTED`` are final.
    """

    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    UNMASK = 4
    DONE = 5
    ABORTED = 6


PROTOCOL_STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)


class ProtocolError(ValueError):
    """An incoming message is invalid (wrong type for the stage, size, id, signature, ciphertext...).

    The receiving state machine is left unchanged, so a transport may log the message and drop it.
    """


class SecAggAbort(RuntimeError):
    """The round cannot finish securely (too few clients left, or the server asked for a forbidden reveal).

    The state machine that raised it moves to :attr:`Stage.ABORTED`.
    """


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def advert_payload(round_id: bytes, sender: int, encryption_key: bytes, mask_key: bytes) -> bytes:
    """The bytes a client signs to advertise its two public keys for ``round_id``."""
    return _LABEL + b"advertise" + round_id + _u32(sender) + encryption_key + mask_key


def share_info(round_id: bytes) -> bytes:
    """HKDF ``info`` for the key that encrypts shares between two clients."""
    return _LABEL + b"share-encryption" + round_id


def mask_info(round_id: bytes) -> bytes:
    """HKDF ``info`` for the seed of the pairwise mask between two clients."""
    return _LABEL + b"pairwise-mask" + round_id


def share_associated_data(round_id: bytes, sender: int, recipient: int) -> bytes:
    """AEAD associated data binding an encrypted share to its round, sender and recipient."""
    return _LABEL + b"share" + round_id + _u32(sender) + _u32(recipient)


def self_mask_digest(round_id: bytes, client_id: int, seed: bytes) -> bytes:
    """SHA-256 commitment to a client's self-mask seed; lets the server check a reconstructed seed."""
    return hashlib.sha256(_LABEL + b"self-mask" + round_id + _u32(client_id) + seed).digest()
