"""Secure aggregation (SecAgg, Bonawitz et al. 2017; SecAgg+, Bell et al. 2020) of client updates.

The server learns only the sum of the inputs of the clients that finish a round, and still
gets it when clients drop out at any stage, as long as ``threshold`` of them remain. See
``docs/secagg.md``.

- :func:`run_local` - the whole protocol in one process (tests, benchmarks).
- :class:`SecAggClient`, :class:`SecAggServer` - transport-agnostic state machines.
- :mod:`~crypto.secagg.messages` - message dataclasses; :mod:`~crypto.secagg.encoding` - ``encode``/``decode``.
- :mod:`~crypto.secagg.quantize` - floats <-> integers modulo ``2**modulus_bits``.
- :class:`RoundConfig` - the parameters both sides agree on.
"""

from crypto.secagg.client import SecAggClient
from crypto.secagg.common import ProtocolError, SecAggAbort, Stage
from crypto.secagg.config import RoundConfig, default_neighbours, share_threshold
from crypto.secagg.encoding import decode, encode
from crypto.secagg.local import LocalResult, run_local
from crypto.secagg.quantize import QuantizeReport, check_capacity, dequantize_sum, quantize
from crypto.secagg.server import AggregateResult, SecAggServer

__all__ = [
    "AggregateResult",
    "LocalResult",
    "ProtocolError",
    "QuantizeReport",
    "RoundConfig",
    "SecAggAbort",
    "SecAggClient",
    "SecAggServer",
    "Stage",
    "check_capacity",
    "decode",
    "default_neighbours",
    "dequantize_sum",
    "encode",
    "quantize",
    "run_local",
    "share_threshold",
]
