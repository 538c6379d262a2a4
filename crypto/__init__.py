"""Cryptographic building blocks for SplitFed (secure aggregation, homomorphic search).

A leaf package: it depends only on the standard library, numpy, cryptography and tenseal,
and never imports splitfed, torch or zmq.
"""
