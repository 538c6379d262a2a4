"""Cryptographic building blocks for SplitFed (secure aggregation, homomorphic search).

A leaf package: it depends only on the standard library, numpy, cryptography and tenseal,
and never imports splitfed, torch or zmq.

Primitives (bytes in, bytes out; one idea per module):

- :mod:`crypto.kex` - X25519 key pairs and HKDF-SHA256 key agreement.
- :mod:`crypto.aead` - AES-256-GCM with a random nonce; tampering raises ``AuthenticationError``.
- :mod:`crypto.prg` - ChaCha20 expansion of a 256-bit seed into integers modulo ``2**bits``.
- :mod:`crypto.shamir` - t-of-n Shamir secret sharing over the field of ``2**521 - 1``.
- :mod:`crypto.sign` - Ed25519 signatures; a bad signature raises ``SignatureError``.

Protocols:

- :mod:`crypto.secagg` - secure aggregation (SecAgg / SecAgg+) that survives dropouts.
"""
