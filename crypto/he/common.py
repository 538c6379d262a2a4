"""Parameters, the error class and byte framing shared by the querier and the data parties.

SEAL objects travel in SEAL's own serialisation format (a 16-byte header, then zstd-compressed
data), wrapped in small length-prefixed frames with a 4-byte magic/version. TenSEAL's
``sealapi`` binding only saves to and loads from file paths, so :func:`seal_to_bytes` and
:func:`seal_from_bytes` go through a private temporary file (in ``/dev/shm`` where it exists).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

__all__ = [
    "HEError",
    "HEParams",
    "KEY_ID_SIZE",
    "key_id_of",
    "pack_frames",
    "seal_from_bytes",
    "seal_to_bytes",
    "unpack_frames",
]

KEY_ID_SIZE = 8
"""A key id is the first 8 bytes (16 hex digits) of the SHA-256 of the public context bytes."""

_SEAL_MAGIC = b"\x5e\xa1"
_SEAL_HEADER_SIZE = 16
_TMP_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_SUPPORTED_DEGREES = (4096, 8192, 16384, 32768)

T = TypeVar("T")


class HEError(ValueError):
    """Invalid homomorphic-encryption input: malformed, oversized, wrong parameters or wrong key id."""


def key_id_of(public_bytes: bytes) -> str:
    """The key id of a serialised public context: ``sha256(public_bytes).hexdigest()[:16]``."""
    return hashlib.sha256(public_bytes).hexdigest()[: 2 * KEY_ID_SIZE]


@dataclass(frozen=True)
class HEParams:
    """CKKS parameters and the diagonal-method layout they imply (see :mod:`crypto.he.scoring`).

    ``dim`` is the embedding dimension d, ``baby_steps`` the baby-step count b; the giant-step
    count is ``ceil(d / b)``.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    dim: int
    baby_steps: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(int(b) for b in self.coeff_mod_bit_sizes))
        n, bits, s = self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.scale_bits
        if n not in _SUPPORTED_DEGREES:
            raise ValueError(f"poly_modulus_degree must be one of {_SUPPORTED_DEGREES}, got {n}")
        if len(bits) < 3 or not all(20 <= b <= 60 for b in bits):
            raise ValueError(f"coeff_mod_bit_sizes needs >= 3 primes of 20..60 bits, got {bits}")
        # Scoring runs at the level with two primes (q0, q1): the product of two encodings has
        # scale 2^(2s) and must fit below q0*q1; after rescaling by q1 the scale 2^(2s - b1)
        # needs >= 20 bits of precision and q0 needs >= 10 bits of headroom above it.
        result_bits = 2 * s - bits[1]
        if not (s >= 20 and result_bits >= 20 and bits[0] - result_bits >= 10):
            raise ValueError(f"scale_bits={s} does not fit coeff_mod_bit_sizes={bits}")
        if not 1 <= self.dim <= self.slot_count // 2:
            raise ValueError(f"dim must be in [1, {self.slot_count // 2}], got {self.dim}")
        if not 1 <= self.baby_steps <= self.dim:
            raise ValueError(f"baby_steps must be in [1, dim={self.dim}], got {self.baby_steps}")

    @classmethod
    def default_baby_steps(cls, dim: int) -> int:
        """``ceil(sqrt(dim))``: balances baby- and giant-step rotations for a single block."""
        return math.isqrt(dim - 1) + 1 if dim > 1 else 1

    @property
    def slot_count(self) -> int:
        """CKKS slots per ciphertext, ``poly_modulus_degree / 2``."""
        return self.poly_modulus_degree // 2

    @property
    def giant_steps(self) -> int:
        """Number of giant steps, ``ceil(dim / baby_steps)``."""
        return -(-self.dim // self.baby_steps)

    @property
    def block_rows(self) -> int:
        """Matrix rows scored per ciphertext: all slots when ``dim`` divides them, else ``slots - dim + 1``."""
        n = self.slot_count
        return n if n % self.dim == 0 else n - self.dim + 1

    @property
    def query_length(self) -> int:
        """Slots the replicated query fills (``block_rows + dim - 1``, capped at the slot count)."""
        return min(self.slot_count, self.block_rows + self.dim - 1)

    @property
    def rotation_steps(self) -> tuple[int, ...]:
        """Left-rotation steps the scorer uses: 1 (baby steps, chained) and ``baby_steps`` (giant steps, Horner)."""
        steps = set()
        if self.baby_steps > 1:
            steps.add(1)
        if self.giant_steps > 1:
            steps.add(self.baby_steps)
        return tuple(sorted(steps))

    @property
    def galois_elements(self) -> tuple[int, ...]:
        """SEAL Galois elements of :attr:`rotation_steps`: ``3**step mod 2N``."""
        return tuple(pow(3, step, 2 * self.poly_modulus_degree) for step in self.rotation_steps)

    @property
    def scale(self) -> float:
        """The CKKS encoding scale ``2**scale_bits`` of queries and plaintext diagonals."""
        return float(2**self.scale_bits)

    def n_blocks(self, n_rows: int) -> int:
        """Ciphertexts needed for the scores of ``n_rows`` rows."""
        return -(-n_rows // self.block_rows)

    def to_json(self) -> bytes:
        """Canonical JSON encoding (sorted keys, no spaces)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> HEParams:
        """Parse :meth:`to_json` output; raises :class:`HEError` on anything else."""
        try:
            raw: Any = json.loads(data)
            fields = {"poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits", "dim", "baby_steps"}
            if not isinstance(raw, dict) or set(raw) != fields:
                raise ValueError("unexpected fields")
            ints = [raw[k] for k in fields - {"coeff_mod_bit_sizes"}] + list(raw["coeff_mod_bit_sizes"])
            if not all(type(v) is int for v in ints):
                raise ValueError("parameters must be integers")
            return cls(**{**raw, "coeff_mod_bit_sizes": tuple(raw["coeff_mod_bit_sizes"])})
        except (ValueError, TypeError, KeyError) as exc:
            raise HEError(f"invalid HE parameters: {exc}") from None


def pack_frames(magic: bytes, *parts: bytes) -> bytes:
    """``magic`` then each part prefixed by its big-endian u32 length."""
    return magic + b"".join(struct.pack(">I", len(p)) + p for p in parts)


def unpack_frames(magic: bytes, data: bytes, count: int, what: str) -> list[bytes]:
    """Inverse of :func:`pack_frames` for exactly ``count`` parts; raises :class:`HEError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise HEError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(magic):
        raise HEError(f"{what}: bad magic (not a {what} of this version)")
    parts, pos = [], len(magic)
    for _ in range(count):
        if pos + 4 > len(data):
            raise HEError(f"{what}: truncated")
        (size,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if pos + size > len(data):
            raise HEError(f"{what}: truncated")
        parts.append(data[pos : pos + size])
        pos += size
    if pos != len(data):
        raise HEError(f"{what}: {len(data) - pos} trailing bytes")
    return parts


def seal_to_bytes(obj: Any) -> bytes:
    """Serialise a SEAL object (or ``Serializable``) that only offers ``save(path)``."""
    fd, path = tempfile.mkstemp(dir=_TMP_DIR, prefix="he-")
    try:
        os.close(fd)
        obj.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def seal_from_bytes(factory: Callable[[], T], seal_context: Any, data: bytes, what: str) -> T:
    """Load a SEAL object (``factory()``, then ``load(context, path)``) from ``data``.

    Checks the SEAL header first (magic and that its size field equals ``len(data)``); SEAL's
    own loader then validates the object against ``seal_context``. Raises :class:`HEError`.
    """
    if len(data) < _SEAL_HEADER_SIZE or data[:2] != _SEAL_MAGIC or data[2] != _SEAL_HEADER_SIZE:
        raise HEError(f"{what}: not a SEAL object")
    if int.from_bytes(data[8:16], "little") != len(data):
        raise HEError(f"{what}: SEAL header size does not match the data ({len(data)} bytes)")
    obj = factory()
    fd, path = tempfile.mkstemp(dir=_TMP_DIR, prefix="he-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        obj.load(seal_context, path)  # type: ignore[attr-defined]
    except Exception as exc:  # SEAL raises std::logic_error / invalid_argument -> ValueError/RuntimeError
        raise HEError(f"{what}: cannot be loaded ({exc})") from None
    finally:
        os.unlink(path)
    return obj
