r"""A data party's side: score an encrypted query against its plaintext matrix, without learning the query.

Layout (the diagonal method of Halevi and Shoup, for a tall matrix, with baby-step/giant-step)
-----------------------------------------------------------------------------------------------
A CKKS ciphertext holds ``n = N/2`` slots. Let ``M`` be a block of ``R`` rows of the party's
``rows x d`` matrix and ``q`` the ``d``-dimensional query. We want ``y[j] = sum_k M[j,k] q[k]``
for ``j < R``, all in the slots of ONE ciphertext.

*Query.* The querier encrypts ``Q[t] = q[t mod d]`` for ``t < R + d - 1`` (zeros after). A left
rotation by ``i`` gives ``rot(Q, i)[j] = q[(j + i) mod d]`` for every ``j < R`` as long as
``R + d - 1 <= n``; if ``d`` divides ``n`` the replication fills all slots, the rotations are
consistent cyclically and ``R = n``. So a block has ``R = n`` rows if ``d | n``, else
``R = n - d + 1`` (3713 rows for ``N = 8192``, ``d = 384``).

*Diagonals.* With ``diag_i[j] = M[j, (j + i) mod d]`` (the i-th generalised diagonal)::

    y = sum_{i < d} diag_i * rot(Q, i)                                     (d rotations)

*Baby-step/giant-step.* Write ``i = g*b + k`` with ``k < b`` (baby) and ``g < G = ceil(d/b)``
(giant). Since ``diag * rot(X, s) = rot(rot(diag, -s) * X, s)``::

    y = sum_{g < G} rot( sum_{k < b} rot(diag_{g*b+k}, -g*b) * rot(Q, k),  g*b )

The ``b - 1`` baby rotations ``rot(Q, k)`` are computed once per query and shared by all blocks;
each block needs ``d`` plaintext multiplications and ``G - 1`` giant rotations. The
pre-rotated diagonals are plaintexts: the party encodes them once (slots ``j + g*b``, ``j < R``)
and caches them. With ``b = G = sqrt(d)`` that is about ``2*sqrt(d)`` rotations instead of ``d``.

*Rotation keys.* A rotation by ``s`` needs the Galois key for element ``3**s mod 2N``. Done as
written, BSGS rotates by ``1 .. b-1`` and ``b, 2b, .. (G-1)b``: ``b + G - 2 ~ 2*sqrt(d)`` keys
(38 for ``d = 384``; about 0.7 MB each at ``N = 8192``, 27 MB in all). Here the rotations are
chained instead, with the same count: ``rot(Q, k) = rot(rot(Q, k-1), 1)`` and, by Horner's rule,
``y = S_0 + rot(S_1 + rot(S_2 + ..., b), b)`` where ``S_g`` is the inner sum. So only the keys
for steps ``1`` and ``b`` are needed (:attr:`HEParams.rotation_steps`), and the public context
stays about 1.9 MB. Key-switching noise adds up along a chain, far below the 1e-3 tolerance.

*Levels.* The query is encrypted at the two-prime level ``(q0, q1)`` at scale ``2^s``; products
have scale ``2^2s``; the sum is rescaled once by ``q1``, so each response is a one-prime
ciphertext at scale ``2^2s / q1``. Higher levels of the parameter chain are unused.

Cost per query: ``b - 1 + blocks * (G - 1)`` rotations and ``blocks * d`` plaintext
multiplications; cached plaintexts take ``blocks * d * N * 2 * 8`` bytes (50 MB per block at
``N = 8192``, ``d = 384``). A larger ``baby_steps`` (chosen in :meth:`SecretContext.create`)
trades per-query baby rotations for fewer giant rotations per block; ``sqrt(blocks * d)`` is
optimal for a store of ``blocks`` blocks. Diagonals that encode to zero are skipped (SEAL
refuses transparent products); an all-zero block is answered with a fresh encryption of zeros.
Scores must stay below ``2^(b0 - 2s + b1 - 1)`` in magnitude (``2^19`` by default).

What the parties and the querier learn
--------------------------------------
A party sees only ciphertexts. The querier decrypts ``M q`` (all scores of every row), and a
querier who sends ``d`` chosen queries (or one that is not a replicated vector) can solve for
``M``. The mitigations are query budgets and score noise (``noise``, a :class:`ScoreNoise`):
the party quantises its rows to the integer grid of :mod:`crypto.he.grid` and adds an integer
discrete Gaussian draw (from ``randbytes``, default ``os.urandom``) to each encrypted integer
score, as a plaintext addition, before it leaves; the querier rounds the decryption to
``s + z``. The DP statement is about that rounded integer and assumes an honest (unit-norm,
quantised) query. CKKS offers no circuit privacy: the unrounded decryption's residual error
(about ``2^-22`` in cosine units) is not flooded and is outside the statement.
:func:`gaussian_noise_std` gives the classic Gaussian-mechanism calibration.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tenseal.sealapi as sealapi

from crypto.he.common import HEError, HEParams
from crypto.he.context import PublicContext
from crypto.he.grid import PRECISION_BITS, ScoreNoise
from crypto.he.query import DEFAULT_MAX_CIPHERTEXT_BYTES, load_query, pack_scores

__all__ = ["EncryptedScorer", "gaussian_noise_std"]


def gaussian_noise_std(epsilon: float, delta: float, sensitivity: float = 2.0) -> float:
    """Gaussian-mechanism std ``sensitivity * sqrt(2 ln(1.25/delta)) / epsilon`` (valid for ``epsilon < 1``).

    A score of unit vectors moves by at most 2 when one document changes, hence the default.
    """
    if not (0 < epsilon < 1 and 0 < delta < 1 and sensitivity > 0):
        raise ValueError("need 0 < epsilon < 1, 0 < delta < 1 and sensitivity > 0")
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def check_grid(params: HEParams, noise: ScoreNoise) -> None:
    """HEError unless ``params`` carry ``noise``'s integer scores exactly: fine enough to round
    (:data:`~crypto.he.grid.PRECISION_BITS`) and wide enough for the largest noised score."""
    grid = noise.grid
    if grid.dim != params.dim:
        raise HEError(f"score grid is for dim {grid.dim}, the HE parameters for dim {params.dim}")
    result_bits = 2 * params.scale_bits - params.coeff_mod_bit_sizes[1]
    if grid.bits > result_bits - PRECISION_BITS:
        raise HEError(
            f"HE parameters too imprecise for a {grid.bits}-bit score grid: response scale 2^{result_bits} "
            f"rounds exactly only up to {result_bits - PRECISION_BITS} bits"
        )
    room = params.coeff_mod_bit_sizes[0] - result_bits - 1  # decrypted values must stay below 2^room
    if noise.max_abs >= 2 ** (grid.bits + room):
        raise HEError(f"noised scores up to {noise.max_abs} grid steps overflow the HE parameters (2^{room})")


def block_diagonals(params: HEParams, block: np.ndarray) -> np.ndarray:
    """Pre-rotated diagonals of one block: ``out[i]`` is the slot vector multiplied with ``rot(Q, i mod b)``.

    ``out[g*b + k][(j + g*b) mod n] = M[j, (j + g*b + k) mod d]`` for ``j < R``; zeros elsewhere.
    """
    rows, d, n, b = block.shape[0], params.dim, params.slot_count, params.baby_steps
    j = np.arange(rows)
    diagonals = block[j[:, None], (j[:, None] + np.arange(d)[None, :]) % d]  # (rows, d): column i is diag_i
    out = np.zeros((d, n))
    for i in range(d):
        out[i, (j + (i // b) * b) % n] = diagonals[:, i]
    return out


class EncryptedScorer:
    """Scores encrypted queries against a plaintext ``rows x dim`` matrix (a party's document embeddings).

    Without ``noise`` the rows are scored as given (float scores). With ``noise`` they are
    clipped to unit norm and quantised to ``noise.grid`` (``e_int / 2^doc_bits``), and every
    answer adds ``z / 2^T`` to each score, ``z`` drawn by ``noise.sampler`` from ``randbytes``
    (inject it only in tests); the querier must quantise its query on the same grid
    (``encrypt_query(..., grid=)``) and round (``decrypt_scores(..., grid=)``).

    ``public_ctx`` fixes the CKKS parameters and layout; :meth:`score` may take the public
    context of another querier with the same :class:`HEParams` (the cached encodings depend
    only on the parameters). With ``cache_plaintexts=False`` diagonals are encoded on every
    query instead (no memory for them, about 4x slower).
    """

    def __init__(
        self,
        public_ctx: PublicContext,
        matrix: np.ndarray,
        *,
        noise: ScoreNoise | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
        max_query_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES,
        cache_plaintexts: bool = True,
    ) -> None:
        params = public_ctx.params
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] != params.dim:
            raise ValueError(f"matrix must have shape (rows >= 1, {params.dim}), got {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise ValueError("matrix has non-finite values")
        if noise is not None:
            check_grid(params, noise)
            matrix = noise.grid.quantize_docs(matrix) / 2.0**noise.grid.doc_bits  # exact dyadic floats
        self.public_ctx = public_ctx
        self.params = params
        self.noise = noise
        self.max_query_bytes = max_query_bytes
        self._randbytes = randbytes
        self._matrix = matrix
        self._plaintexts: list[list[Any | None] | None] = [None] * params.n_blocks(matrix.shape[0])
        self._cache = cache_plaintexts
        if cache_plaintexts:
            self._plaintexts = [self._encode_block(i) for i in range(self.n_blocks)]

    @property
    def n_rows(self) -> int:
        """Rows (documents) scored per query; the querier passes it to ``decrypt_scores``."""
        return self._matrix.shape[0]

    @property
    def n_blocks(self) -> int:
        """Ciphertexts per response."""
        return len(self._plaintexts)

    def _block_rows(self, block: int) -> int:
        return min(self.params.block_rows, self.n_rows - block * self.params.block_rows)

    def _encode_block(self, block: int) -> list[Any | None]:
        """The block's pre-rotated diagonals as plaintexts; ``None`` for one that encodes to zero."""
        keys = self.public_ctx._keys
        start = block * self.params.block_rows
        parms_id, scale = keys.working.parms_id(), self.params.scale
        out: list[Any | None] = []
        for vector in block_diagonals(self.params, self._matrix[start : start + self._block_rows(block)]):
            plain = sealapi.Plaintext()
            keys.encoder.encode(vector.tolist(), parms_id, scale, plain)
            out.append(None if plain.is_zero() else plain)  # SEAL refuses products that are transparent
        return out

    def score(self, query: bytes, public_ctx: PublicContext | None = None) -> list[bytes]:
        """Score one query message; returns one scores message per block (send them all, in order).

        Raises :class:`HEError` for a query that is oversized, malformed, for other parameters or
        for another key id than ``public_ctx`` (default: the constructor's).
        """
        ctx = self.public_ctx if public_ctx is None else public_ctx
        if ctx.params != self.params:
            raise HEError("public context has other HE parameters than this scorer")
        keys = ctx._keys
        ciphertext = load_query(keys, ctx.key_id, query, self.max_query_bytes)
        rotated = self._baby_steps(keys, ciphertext)
        out = []
        for block in range(self.n_blocks):
            plaintexts = self._plaintexts[block] if self._cache else self._encode_block(block)
            result = self._score_block(keys, rotated, plaintexts)
            self._add_noise(keys, result, self._block_rows(block))
            out.append(pack_scores(ctx.key_id, block, self._block_rows(block), result))
        return out

    def _baby_steps(self, keys: Any, query: Any) -> list[Any]:
        """``rot(Q, k)`` for ``k < b``, chained rotations by 1."""
        rotated = [query]
        for _ in range(1, self.params.baby_steps):
            nxt = sealapi.Ciphertext()
            keys.evaluator.rotate_vector(rotated[-1], 1, keys.galois_keys, nxt)
            rotated.append(nxt)
        return rotated

    def _score_block(self, keys: Any, rotated: list[Any], plaintexts: list[Any | None]) -> Any:
        """Horner over giant steps: ``acc = S_g + rot(acc, b)`` for ``g = G-1 .. 0``; then rescale.

        Zero diagonals are skipped; an all-zero block gets a fresh encryption of zeros.
        """
        ev, b = keys.evaluator, self.params.baby_steps
        scratch, acc = sealapi.Ciphertext(), None
        for g in reversed(range(self.params.giant_steps)):
            inner = None
            for k, plain in enumerate(plaintexts[g * b : (g + 1) * b]):
                if plain is None:
                    continue
                if inner is None:
                    inner = sealapi.Ciphertext()
                    ev.multiply_plain(rotated[k], plain, inner)
                else:
                    ev.multiply_plain(rotated[k], plain, scratch)
                    ev.add_inplace(inner, scratch)
            if acc is None:
                acc = inner
            else:
                ev.rotate_vector_inplace(acc, b, keys.galois_keys)
                if inner is not None:
                    ev.add_inplace(acc, inner)
        if acc is None:
            return self._encrypt_zeros(keys)
        ev.rescale_to_next_inplace(acc)
        return acc

    def _encrypt_zeros(self, keys: Any) -> Any:
        """A fresh public-key encryption of zeros at the response level and scale."""
        plain, out = sealapi.Plaintext(), sealapi.Ciphertext()
        keys.encoder.encode([0.0] * self.params.slot_count, keys.last.parms_id(), keys.response_scale, plain)
        sealapi.Encryptor(keys.seal, keys.tenseal.public_key().data).encrypt(plain, out)
        return out

    def _add_noise(self, keys: Any, ciphertext: Any, rows: int) -> None:
        """Add ``z / 2^T`` (exact in float64: ``|z| < 2^53``) to the first ``rows`` slots."""
        if self.noise is None:
            return
        noise = np.zeros(self.params.slot_count)
        noise[:rows] = self.noise.sampler.sample(rows, self._randbytes) / 2.0**self.noise.grid.bits
        plain = sealapi.Plaintext()
        keys.encoder.encode(noise.tolist(), ciphertext.parms_id(), ciphertext.scale, plain)
        keys.evaluator.add_plain_inplace(ciphertext, plain)
