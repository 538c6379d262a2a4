"""Homomorphic (CKKS) scoring of an encrypted query against private plaintext vector stores.

For federated retrieval: a querier encrypts its query embedding; each data party scores it
against its own document embeddings without learning the query; only the querier decrypts,
then merges the parties' scores (e.g. a global top-k). The layout and its cost are described
in :mod:`crypto.he.scoring`.

Querier::

    secret = SecretContext.create(dim=384)               # once; keep it (to_bytes/from_bytes)
    send(secret.public_bytes)                            # once per party and session
    query = encrypt_query(secret, q)                     # bytes, to every party
    scores = decrypt_scores(secret, blocks, n_rows)      # per party: its blocks and row count

Party::

    ctx = PublicContext.from_bytes(public_bytes)         # cache by ctx.key_id
    scorer = EncryptedScorer(ctx, embeddings)            # encodes the diagonals once
    blocks = scorer.score(query)                         # list[bytes], plus scorer.n_rows

Score noise (a party's DP mitigation) is integer: ``ScoreNoise.for_std(noise_std, dim)``
gives the public grid and the discrete Gaussian; the party passes ``noise=`` to the scorer
and announces ``noise.grid``; the querier passes ``grid=`` to ``encrypt_query`` and
``decrypt_scores`` (see :mod:`crypto.he.grid`).

Malformed, oversized or mismatched input raises :class:`HEError` (a ``ValueError``).
"""

from crypto.he.common import HEError, HEParams, key_id_of
from crypto.he.context import DEFAULT_MAX_PUBLIC_CONTEXT_BYTES, PublicContext, SecretContext
from crypto.he.grid import ScoreGrid, ScoreNoise
from crypto.he.query import DEFAULT_MAX_CIPHERTEXT_BYTES, decrypt_scores, encrypt_query, query_key_id
from crypto.he.scoring import EncryptedScorer, gaussian_noise_std

__all__ = [
    "DEFAULT_MAX_CIPHERTEXT_BYTES",
    "DEFAULT_MAX_PUBLIC_CONTEXT_BYTES",
    "EncryptedScorer",
    "HEError",
    "HEParams",
    "PublicContext",
    "ScoreGrid",
    "ScoreNoise",
    "SecretContext",
    "decrypt_scores",
    "encrypt_query",
    "gaussian_noise_std",
    "key_id_of",
    "query_key_id",
]
