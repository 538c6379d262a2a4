"""Encrypted federated retrieval for RAG (FRAG-style): parties score a CKKS-encrypted query
against their private vector stores; the querier decrypts, merges the global top-k, fetches
only those texts, and generates an answer."""
