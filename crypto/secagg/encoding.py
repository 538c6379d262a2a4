"""The byte encoding of the protocol's messages (:mod:`~crypto.secagg.messages`).

:func:`encode` and :func:`decode` turn any message (and a
:class:`~crypto.secagg.config.RoundConfig`) into bytes and back: a 4-byte magic/version, a
1-byte type tag, the 16-byte ``round_id``, then big-endian fixed-size fields and
length-prefixed lists. Vectors travel as raw little-endian uint32 (``modulus_bits <= 32``)
or uint64. :func:`decode` raises :class:`ProtocolError` on any malformed input.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from crypto import kex, shamir, sign
from crypto.secagg.common import ROUND_ID_SIZE, ProtocolError
from crypto.secagg.config import GRAPH_SEED_SIZE, RoundConfig
from crypto.secagg.messages import (
    DIGEST_SIZE,
    SHARE_CIPHERTEXT_SIZE,
    AdvertiseKeys,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    Message,
    RevealedShare,
    ShareInbox,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = ["decode", "encode"]

_MAGIC = b"SAG\x01"


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def raw(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    def u8(self, v: int) -> None:
        self.parts.append(struct.pack(">B", v))

    def u16(self, v: int) -> None:
        self.parts.append(struct.pack(">H", v))

    def u32(self, v: int) -> None:
        self.parts.append(struct.pack(">I", v))

    def ids(self, values: tuple[int, ...]) -> None:
        self.u32(len(values))
        self.parts.append(np.asarray(values, dtype=">u4").tobytes())

    def value(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.view = memoryview(data)
        self.pos = 0
        self.what = what

    def raw(self, size: int, name: str) -> bytes:
        if size > len(self.view) - self.pos:
            raise ProtocolError(
                f"{self.what}: field '{name}' needs {size} bytes, only {len(self.view) - self.pos} left"
            )
        out = self.view[self.pos : self.pos + size]
        self.pos += size
        return out.tobytes()

    def u8(self, name: str) -> int:
        return self.raw(1, name)[0]

    def u16(self, name: str) -> int:
        return struct.unpack(">H", self.raw(2, name))[0]

    def u32(self, name: str) -> int:
        return struct.unpack(">I", self.raw(4, name))[0]

    def count(self, name: str, item_size: int) -> int:
        n = self.u32(name)
        if n * item_size > len(self.view) - self.pos:
            raise ProtocolError(
                f"{self.what}: '{name}' claims {n} items of {item_size} bytes, only {len(self.view) - self.pos} left"
            )
        return n

    def ids(self, name: str) -> tuple[int, ...]:
        n = self.count(name, 4)
        return tuple(int(i) for i in np.frombuffer(self.raw(4 * n, name), dtype=">u4"))

    def done(self) -> None:
        if self.pos != len(self.view):
            raise ProtocolError(f"{self.what}: {len(self.view) - self.pos} unexpected trailing bytes")


_ADVERT_SIZE = 4 + 2 * kex.KEY_SIZE + sign.SIGNATURE_SIZE
_ENC_SHARE_SIZE = 8 + SHARE_CIPHERTEXT_SIZE
_REVEALED_SIZE = 4 + shamir.SHARE_SIZE


def _put_advert(w: _Writer, a: AdvertiseKeys) -> None:
    w.u32(a.sender)
    w.raw(a.encryption_key)
    w.raw(a.mask_key)
    w.raw(a.signature)


def _get_advert(r: _Reader, round_id: bytes) -> AdvertiseKeys:
    sender = r.u32("sender")
    enc, mask = r.raw(kex.KEY_SIZE, "encryption_key"), r.raw(kex.KEY_SIZE, "mask_key")
    return AdvertiseKeys(round_id, sender, enc, mask, r.raw(sign.SIGNATURE_SIZE, "signature"))


def _put_shares(w: _Writer, shares: tuple[EncryptedShare, ...]) -> None:
    w.u32(len(shares))
    for s in shares:
        w.u32(s.sender)
        w.u32(s.recipient)
        w.raw(s.ciphertext)


def _get_shares(r: _Reader) -> tuple[EncryptedShare, ...]:
    out = []
    for _ in range(r.count("shares", _ENC_SHARE_SIZE)):
        sender, recipient = r.u32("sender"), r.u32("recipient")
        out.append(EncryptedShare(sender, recipient, r.raw(SHARE_CIPHERTEXT_SIZE, "ciphertext")))
    return tuple(out)


def _put_revealed(w: _Writer, shares: tuple[RevealedShare, ...]) -> None:
    w.u32(len(shares))
    for s in shares:
        w.u32(s.owner)
        w.raw(s.share)


def _get_revealed(r: _Reader, name: str) -> tuple[RevealedShare, ...]:
    out = []
    for _ in range(r.count(name, _REVEALED_SIZE)):
        owner = r.u32("owner")
        out.append(RevealedShare(owner, r.raw(shamir.SHARE_SIZE, "share")))
    return tuple(out)


def _encode_body(w: _Writer, m: Message) -> None:
    if isinstance(m, RoundConfig):
        w.ids(m.client_ids)
        for v in (m.threshold, m.vector_length, m.modulus_bits, m.neighbours):
            w.u32(v)
        w.raw(m.graph_seed)
    elif isinstance(m, AdvertiseKeys):
        _put_advert(w, m)
    elif isinstance(m, KeyDirectory):
        w.u32(m.recipient)
        w.u32(len(m.adverts))
        for a in m.adverts:
            if a.round_id != m.round_id:
                raise ProtocolError("KeyDirectory.adverts: every advert must carry the directory's round_id")
            _put_advert(w, a)
    elif isinstance(m, ShareKeys):
        w.u32(m.sender)
        w.raw(m.self_mask_digest)
        _put_shares(w, m.shares)
    elif isinstance(m, ShareInbox):
        w.u32(m.recipient)
        _put_shares(w, m.shares)
    elif isinstance(m, MaskedInput):
        w.u32(m.sender)
        w.u8(m.vector.dtype.itemsize)
        w.u32(m.vector.shape[0])
        w.raw(m.vector.astype(m.vector.dtype.newbyteorder("<"), copy=False).tobytes())
    elif isinstance(m, UnmaskRequest):
        w.u32(m.recipient)
        w.ids(m.survivors)
        w.ids(m.dropped)
    elif isinstance(m, UnmaskResponse):
        w.u32(m.sender)
        _put_revealed(w, m.self_mask_shares)
        _put_revealed(w, m.key_shares)
    else:
        raise TypeError(f"cannot encode {type(m).__name__}")


def _decode_config(r: _Reader, round_id: bytes) -> RoundConfig:
    ids = r.ids("client_ids")
    threshold, length, bits, k = (r.u32(n) for n in ("threshold", "vector_length", "modulus_bits", "neighbours"))
    seed = r.raw(GRAPH_SEED_SIZE, "graph_seed")
    try:
        return RoundConfig(round_id, ids, threshold, length, bits, k, seed)
    except ValueError as exc:
        raise ProtocolError(f"RoundConfig: {exc}") from exc


def _decode_masked(r: _Reader, round_id: bytes) -> MaskedInput:
    sender = r.u32("sender")
    width = r.u8("word size")
    if width not in (4, 8):
        raise ProtocolError(f"MaskedInput: word size must be 4 or 8 bytes, received {width}")
    n = r.count("vector", width)
    dt = np.dtype(f"<u{width}")
    vec = np.frombuffer(r.raw(n * width, "vector"), dtype=dt).astype(dt.newbyteorder("="), copy=False)
    return MaskedInput(round_id, sender, vec)


def _decode_directory(r: _Reader, round_id: bytes) -> KeyDirectory:
    recipient = r.u32("recipient")
    n = r.count("adverts", _ADVERT_SIZE)
    return KeyDirectory(round_id, recipient, tuple(_get_advert(r, round_id) for _ in range(n)))


_DECODERS: dict[int, tuple[type, Callable[[_Reader, bytes], Message]]] = {
    0: (RoundConfig, _decode_config),
    1: (AdvertiseKeys, _get_advert),
    2: (KeyDirectory, _decode_directory),
    3: (ShareKeys, lambda r, rid: ShareKeys(rid, r.u32("sender"), r.raw(DIGEST_SIZE, "digest"), _get_shares(r))),
    4: (ShareInbox, lambda r, rid: ShareInbox(rid, r.u32("recipient"), _get_shares(r))),
    5: (MaskedInput, _decode_masked),
    6: (UnmaskRequest, lambda r, rid: UnmaskRequest(rid, r.u32("recipient"), r.ids("survivors"), r.ids("dropped"))),
    7: (
        UnmaskResponse,
        lambda r, rid: UnmaskResponse(
            rid, r.u32("sender"), _get_revealed(r, "self_mask_shares"), _get_revealed(r, "key_shares")
        ),
    ),
}
_TAGS = {cls: tag for tag, (cls, _) in _DECODERS.items()}


def encode(message: Message) -> bytes:
    """Serialise a protocol message or a :class:`RoundConfig` to bytes."""
    tag = _TAGS.get(type(message))
    if tag is None:
        raise TypeError(f"cannot encode {type(message).__name__}")
    w = _Writer()
    w.raw(_MAGIC)
    w.u8(tag)
    w.raw(message.round_id)
    _encode_body(w, message)
    return w.value()


def decode(data: bytes) -> Message:
    """Parse :func:`encode` output; raises :class:`ProtocolError` for anything malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected bytes, received {type(data).__name__}")
    r = _Reader(bytes(data), "message")
    magic = r.raw(len(_MAGIC), "magic")
    if magic != _MAGIC:
        raise ProtocolError(f"message: expected magic {_MAGIC!r} (secagg v1), received {magic!r}")
    tag = r.u8("type")
    if tag not in _DECODERS:
        raise ProtocolError(f"message: unknown type tag {tag} (known: {sorted(_DECODERS)})")
    cls, decoder = _DECODERS[tag]
    r.what = cls.__name__
    round_id = r.raw(ROUND_ID_SIZE, "round_id")
    message = decoder(r, round_id)
    r.done()
    return message
