"""The querier's side: encrypt a query embedding, decrypt the parties' encrypted scores.

Wire formats (SEAL ciphertexts in SEAL's serialisation, zstd-compressed):

- query: ``b"HEQ\\x01"`` + 8-byte key id + one ciphertext at the two-prime level (about 113 KB at
  ``N = 8192``: symmetric encryption with the secret key, so SEAL stores half of it as a seed);
- scores: ``b"HES\\x01"`` + 8-byte key id + u32 block index + u32 rows in the block + one
  ciphertext at the last level (about 131 KB at ``N = 8192``), one message per block.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import tenseal.sealapi as sealapi

from crypto.he.common import KEY_ID_SIZE, HEError, HEParams, seal_from_bytes, seal_to_bytes
from crypto.he.context import SecretContext
from crypto.he.grid import ScoreGrid

__all__ = [
    "DEFAULT_MAX_CIPHERTEXT_BYTES",
    "decrypt_scores",
    "encrypt_query",
    "layout_query",
    "query_key_id",
]

DEFAULT_MAX_CIPHERTEXT_BYTES = 4 * 1024 * 1024
_QUERY_MAGIC = b"HEQ\x01"
_SCORES_MAGIC = b"HES\x01"
_QUERY_HEADER = len(_QUERY_MAGIC) + KEY_ID_SIZE
_SCORES_HEADER = len(_SCORES_MAGIC) + KEY_ID_SIZE + 8


def layout_query(params: HEParams, vector: np.ndarray) -> np.ndarray:
    """The slot vector to encrypt: ``query[t mod dim]`` in slots ``0 .. query_length - 1``, zeros after."""
    out = np.zeros(params.slot_count)
    out[: params.query_length] = vector[np.arange(params.query_length) % params.dim]
    return out


def encrypt_query(secret_ctx: SecretContext, vector: np.ndarray, *, grid: ScoreGrid | None = None) -> bytes:
    """Encrypt a ``dim``-vector for scoring; returns the query message sent to every party.

    With ``grid`` (a noising party's, :mod:`crypto.he.grid`) the vector is clipped to unit norm
    and quantised: ``q_int / 2^query_bits`` is encrypted, so the party's scores are integers.
    """
    params = secret_ctx.params
    vector = np.asarray(vector, dtype=np.float64)
    if vector.shape != (params.dim,):
        raise ValueError(f"query must have shape ({params.dim},), got {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("query has non-finite values")
    if grid is not None:
        if grid.dim != params.dim:
            raise ValueError(f"grid is for dim {grid.dim}, the query has dim {params.dim}")
        vector = grid.quantize_query(vector) / 2.0**grid.query_bits  # exact dyadic floats
    keys = secret_ctx.public_context()._keys
    plain = sealapi.Plaintext()
    keys.encoder.encode(layout_query(params, vector).tolist(), keys.working.parms_id(), params.scale, plain)
    ciphertext = seal_to_bytes(secret_ctx.encryptor.encrypt_symmetric(plain))
    return _QUERY_MAGIC + bytes.fromhex(secret_ctx.key_id) + ciphertext


def query_key_id(query: bytes) -> str:
    """The key id a query message was encrypted under (so a party can pick its cached context)."""
    if not isinstance(query, bytes) or len(query) < _QUERY_HEADER or not query.startswith(_QUERY_MAGIC):
        raise HEError("query: not an encrypted query message")
    return query[len(_QUERY_MAGIC) : _QUERY_HEADER].hex()


def check_ciphertext(ciphertext: Any, parms_id: Sequence[int], scale: float, what: str) -> None:
    """Raise :class:`HEError` unless ``ciphertext`` is a 2-part NTT-form ciphertext at ``parms_id`` and ``scale``."""
    if ciphertext.size() != 2 or not ciphertext.is_ntt_form():
        raise HEError(f"{what}: expected a fresh 2-part ciphertext, got {ciphertext.size()} parts")
    if list(ciphertext.parms_id()) != list(parms_id):
        raise HEError(f"{what}: ciphertext is at the wrong level or for other CKKS parameters")
    if not np.isclose(ciphertext.scale, scale, rtol=1e-9, atol=0.0):
        raise HEError(f"{what}: scale {ciphertext.scale!r} differs from the expected {scale!r}")


def load_query(keys: Any, key_id: str, query: bytes, max_bytes: int) -> Any:
    """Parse and validate a query message for the context ``keys`` with id ``key_id``."""
    if not isinstance(query, bytes):
        raise HEError(f"query: expected bytes, got {type(query).__name__}")
    if len(query) > max_bytes:
        raise HEError(f"query: {len(query)} bytes exceeds max_bytes={max_bytes}")
    got = query_key_id(query)
    if got != key_id:
        raise HEError(f"query: encrypted under key id {got}, this context is {key_id}")
    ciphertext = seal_from_bytes(sealapi.Ciphertext, keys.seal, query[_QUERY_HEADER:], "query")
    check_ciphertext(ciphertext, keys.working.parms_id(), keys.params.scale, "query")
    return ciphertext


def pack_scores(key_id: str, block: int, rows: int, ciphertext: Any) -> bytes:
    """One block's response message."""
    return _SCORES_MAGIC + bytes.fromhex(key_id) + struct.pack(">II", block, rows) + seal_to_bytes(ciphertext)


def decrypt_scores(
    secret_ctx: SecretContext,
    ciphertexts: Sequence[bytes],
    n_rows: int,
    *,
    max_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES,
    grid: ScoreGrid | None = None,
) -> np.ndarray:
    """Decrypt one party's response (blocks in order) to its ``n_rows`` scores, a float64 array.

    With ``grid`` (the party's, and the query encrypted on it) every value is rounded to the
    integer ``s + z`` and returned as ``(s + z) / 2^T``, exact in float64.
    Raises :class:`HEError` if the block count, a block's index, row count or key id, or a
    ciphertext does not match, or a value is off the grid (CKKS error too large for it).
    """
    params, keys = secret_ctx.params, secret_ctx.public_context()._keys
    if n_rows < 1 or len(ciphertexts) != params.n_blocks(n_rows):
        raise HEError(f"scores: {len(ciphertexts)} blocks cannot hold {n_rows} rows")
    out = []
    for block, message in enumerate(ciphertexts):
        if not isinstance(message, bytes) or len(message) < _SCORES_HEADER or not message.startswith(_SCORES_MAGIC):
            raise HEError(f"scores block {block}: not a scores message")
        if len(message) > max_bytes:
            raise HEError(f"scores block {block}: {len(message)} bytes exceeds max_bytes={max_bytes}")
        key_id = message[len(_SCORES_MAGIC) : len(_SCORES_MAGIC) + KEY_ID_SIZE].hex()
        index, rows = struct.unpack_from(">II", message, len(_SCORES_MAGIC) + KEY_ID_SIZE)
        want_rows = min(params.block_rows, n_rows - block * params.block_rows)
        if key_id != secret_ctx.key_id or index != block or rows != want_rows:
            raise HEError(f"scores block {block}: header (key {key_id}, block {index}, rows {rows}) does not match")
        what = f"scores block {block}"
        ciphertext = seal_from_bytes(sealapi.Ciphertext, keys.seal, message[_SCORES_HEADER:], what)
        check_ciphertext(ciphertext, keys.last.parms_id(), keys.response_scale, what)
        plain = sealapi.Plaintext()
        secret_ctx.decryptor.decrypt(ciphertext, plain)
        out.append(np.asarray(keys.encoder.decode_double(plain)[:rows]))
    scores = np.concatenate(out)
    if grid is None:
        return scores
    try:
        return grid.round(scores) / 2.0**grid.bits
    except ValueError as exc:
        raise HEError(f"scores: {exc}") from None
