"""CKKS key material: the querier's :class:`SecretContext` and the parties' :class:`PublicContext`.

The querier creates a :class:`SecretContext` once (it never leaves the querier) and sends
:attr:`SecretContext.public_bytes` to each party once per session; parties cache the parsed
:class:`PublicContext` by :attr:`~PublicContext.key_id`. The public bytes hold:

- the TenSEAL context made public (parameters and public key; no secret key, no relinearisation
  keys: scoring multiplies ciphertexts only by plaintexts, so it never relinearises);
- the SEAL Galois keys for exactly :attr:`HEParams.rotation_steps` (two steps; about 1.4 MB at
  ``N = 8192`` instead of about 35 MB for TenSEAL's default set);
- the :class:`HEParams` (CKKS parameters and the layout ``dim`` / ``baby_steps``).

Wire format: ``b"HEP\\x01"`` then three u32-length-prefixed frames: params JSON, TenSEAL
public context, SEAL Galois keys.
"""

from __future__ import annotations

from typing import Any

import tenseal as ts
import tenseal.sealapi as sealapi

from crypto.he.common import HEError, HEParams, key_id_of, pack_frames, seal_from_bytes, seal_to_bytes, unpack_frames

__all__ = ["DEFAULT_MAX_PUBLIC_CONTEXT_BYTES", "PublicContext", "SecretContext"]

DEFAULT_MAX_PUBLIC_CONTEXT_BYTES = 32 * 1024 * 1024
_PUBLIC_MAGIC = b"HEP\x01"
_SECRET_MAGIC = b"HEK\x01"


def _working_level(seal_context: Any) -> Any:
    """Context data of the level with two primes (chain index 1), where queries are encrypted."""
    data = seal_context.first_context_data()
    while data.chain_index() > 1:
        data = data.next_context_data()
    return data


def _check_matches(tenseal_ctx: ts.Context, params: HEParams) -> None:
    parms = tenseal_ctx.seal_context().data.key_context_data().parms()
    bits = tuple(m.bit_count() for m in parms.coeff_modulus())
    if parms.poly_modulus_degree() != params.poly_modulus_degree or bits != params.coeff_mod_bit_sizes:
        raise HEError("public context: CKKS parameters do not match its declared HE parameters")
    if parms.scheme().name != "CKKS":
        raise HEError("public context: not a CKKS context")


class _Keys:
    """SEAL handles shared by both context kinds."""

    def __init__(self, tenseal_ctx: ts.Context, params: HEParams, galois_keys: Any) -> None:
        self.tenseal = tenseal_ctx
        self.params = params
        self.seal = tenseal_ctx.seal_context().data
        self.galois_keys = galois_keys
        self.working = _working_level(self.seal)
        self.last = self.seal.last_context_data()
        # scores: products at scale 2^(2s), rescaled by the working level's last prime
        self.response_scale = params.scale**2 / self.working.parms().coeff_modulus()[-1].value()
        self.encoder = sealapi.CKKSEncoder(self.seal)
        self.evaluator = sealapi.Evaluator(self.seal)


class PublicContext:
    """What a data party holds: parameters, public key and the scoring Galois keys; no secret key.

    Build it with :meth:`from_bytes` (a party) or :meth:`SecretContext.public_context` (tests).
    """

    def __init__(self, data: bytes, keys: _Keys) -> None:
        self._data = data
        self._keys = keys
        self.key_id = key_id_of(data)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = DEFAULT_MAX_PUBLIC_CONTEXT_BYTES) -> PublicContext:
        """Parse and validate public context bytes; raises :class:`HEError`.

        Refuses data over ``max_bytes``, anything malformed, a context whose CKKS parameters
        differ from its declared :class:`HEParams`, Galois keys missing a needed rotation, and
        any context that holds a secret key.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise HEError(f"public context: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > max_bytes:
            raise HEError(f"public context: {len(data)} bytes exceeds max_bytes={max_bytes}")
        if data.startswith(_SECRET_MAGIC):
            raise HEError("refusing a secret context: it holds the secret key; send SecretContext.public_bytes")
        params_json, ts_bytes, galois_bytes = unpack_frames(_PUBLIC_MAGIC, data, 3, "public context")
        params = HEParams.from_json(params_json)
        try:
            tenseal_ctx = ts.context_from(ts_bytes)
        except Exception as exc:
            raise HEError(f"public context: TenSEAL context cannot be loaded ({exc})") from None
        if tenseal_ctx.has_secret_key() or tenseal_ctx.is_private():
            raise HEError("refusing a context that contains a secret key: it must never leave the querier")
        if not tenseal_ctx.has_public_key():
            raise HEError("public context: no public key")
        _check_matches(tenseal_ctx, params)
        tenseal_ctx.global_scale = params.scale
        seal = tenseal_ctx.seal_context().data
        galois = seal_from_bytes(sealapi.GaloisKeys, seal, galois_bytes, "public context Galois keys")
        missing = [
            s for s, e in zip(params.rotation_steps, params.galois_elements, strict=True) if not galois.has_key(e)
        ]
        if missing:
            raise HEError(f"public context: no Galois key for rotation steps {missing}")
        return cls(data, _Keys(tenseal_ctx, params, galois))

    @property
    def params(self) -> HEParams:
        """CKKS parameters and layout."""
        return self._keys.params

    def to_bytes(self) -> bytes:
        """The wire bytes (hash them for :attr:`key_id`)."""
        return self._data

    def __repr__(self) -> str:
        return f"PublicContext(key_id={self.key_id!r}, params={self.params!r}, bytes={len(self._data)})"


class SecretContext:
    """The querier's keys, secret key included. Never send it; send :attr:`public_bytes`."""

    def __init__(self, tenseal_ctx: ts.Context, public: PublicContext) -> None:
        if not tenseal_ctx.is_private():
            raise ValueError("SecretContext needs a TenSEAL context with its secret key")
        self._tenseal = tenseal_ctx
        self._public = public
        keys = public._keys
        self.params = keys.params
        self.key_id = public.key_id
        self._secret_key = tenseal_ctx.secret_key().data
        self.encryptor = sealapi.Encryptor(keys.seal, self._secret_key)
        self.decryptor = sealapi.Decryptor(keys.seal, self._secret_key)

    @classmethod
    def create(
        cls,
        *,
        poly_modulus_degree: int = 8192,
        coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60),
        scale_bits: int = 40,
        dim: int = 384,
        baby_steps: int | None = None,
    ) -> SecretContext:
        """Fresh keys for scoring ``dim``-dimensional queries; ``baby_steps`` defaults to ``ceil(sqrt(dim))``.

        Only the Galois keys for the scoring rotations are generated (:attr:`HEParams.rotation_steps`).
        Scoring uses the first two primes only, so ``(60, 40, 60)`` also works, with smaller keys.
        """
        params = HEParams(
            poly_modulus_degree=poly_modulus_degree,
            coeff_mod_bit_sizes=tuple(coeff_mod_bit_sizes),
            scale_bits=scale_bits,
            dim=dim,
            baby_steps=HEParams.default_baby_steps(dim) if baby_steps is None else baby_steps,
        )
        tenseal_ctx = ts.context(
            ts.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_modulus_degree, coeff_mod_bit_sizes=list(coeff_mod_bit_sizes)
        )
        tenseal_ctx.global_scale = params.scale
        keygen = sealapi.KeyGenerator(tenseal_ctx.seal_context().data, tenseal_ctx.secret_key().data)
        galois_bytes = seal_to_bytes(keygen.create_galois_keys(list(params.galois_elements)))
        public_ctx = tenseal_ctx.copy()
        public_ctx.make_context_public()
        ts_public = public_ctx.serialize(save_public_key=True, save_galois_keys=False, save_relin_keys=False)
        public_bytes = pack_frames(_PUBLIC_MAGIC, params.to_json(), ts_public, galois_bytes)
        public = PublicContext.from_bytes(public_bytes, max_bytes=len(public_bytes))
        return cls(tenseal_ctx, public)

    @property
    def public_bytes(self) -> bytes:
        """What the querier sends to each party (once per session; parties cache it by :attr:`key_id`)."""
        return self._public.to_bytes()

    def public_context(self) -> PublicContext:
        """The parsed public half (for scoring in the same process, e.g. tests)."""
        return self._public

    def to_bytes(self) -> bytes:
        """Serialise for the querier's own storage: CONTAINS THE SECRET KEY. Keeps :attr:`key_id`."""
        secret = self._tenseal.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
        )
        return pack_frames(_SECRET_MAGIC, secret, self.public_bytes)

    @classmethod
    def from_bytes(cls, data: bytes) -> SecretContext:
        """Inverse of :meth:`to_bytes`; raises :class:`HEError` on malformed data or mismatched halves."""
        secret, public_bytes = unpack_frames(_SECRET_MAGIC, data, 2, "secret context")
        public = PublicContext.from_bytes(public_bytes, max_bytes=len(public_bytes))
        try:
            tenseal_ctx = ts.context_from(secret)
        except Exception as exc:
            raise HEError(f"secret context: TenSEAL context cannot be loaded ({exc})") from None
        if not tenseal_ctx.is_private():
            raise HEError("secret context: no secret key")
        _check_matches(tenseal_ctx, public.params)
        tenseal_ctx.global_scale = public.params.scale
        probe = ts.ckks_vector(public._keys.tenseal, [1.0])  # public-key encryption of 1.0
        if abs(probe.decrypt(tenseal_ctx.secret_key())[0] - 1.0) > 1e-3:
            raise HEError("secret context: the secret key does not match the public context")
        return cls(tenseal_ctx, public)

    def __repr__(self) -> str:
        return f"SecretContext(key_id={self.key_id!r}, params={self.params!r})"
