"""Message types and the JSON header that precedes the raw tensor frames.

A message on the wire is ``[header, tensor_0, tensor_1, ...]``: the header is UTF-8 JSON
naming the type, protocol version, session, round, step and one spec per tensor frame;
each tensor frame is the tensor's raw bytes (C order).  Nothing is ever pickled.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1


class MsgType(enum.Enum):
    HELLO = "hello"  # client -> server: client id, config hash
    WELCOME = "welcome"  # server -> client: session, round, client adapter to start from
    FORWARD = "forward"  # client -> server: activations at the first cut + attention mask
    ACTIVATIONS = "activations"  # server -> client: activations at the second cut
    BACKWARD = "backward"  # client -> server: d loss / d activations at the second cut
    GRADIENT = "gradient"  # server -> client: d loss / d activations at the first cut
    UPDATE = "update"  # client -> server: client adapter after the round's local steps
    ROUND_RESULT = "round_result"  # server -> client: aggregated client adapter, next round
    SECAGG = "secagg"  # either way: one secure-aggregation protocol message (bytes in a uint8 frame)
    RAG_CONTEXT = "rag_context"  # querier -> party: CKKS public context (cached by key id) / ack
    RAG_SCORE = "rag_score"  # querier -> party: encrypted query; party -> querier: encrypted scores
    RAG_FETCH = "rag_fetch"  # querier -> party: row indices (<= k); party -> querier: those documents
    HEARTBEAT = "heartbeat"  # either way: still here
    ERROR = "error"  # either way: what was wrong with the last message
    BYE = "bye"  # client -> server: leaving


class ErrorCode(enum.Enum):
    MALFORMED = "malformed"  # frame count, JSON, missing fields
    VERSION = "version"
    UNKNOWN_TYPE = "unknown_type"
    BAD_TENSOR = "bad_tensor"  # dtype, shape, size, NaN/Inf
    TOO_LARGE = "too_large"
    OUT_OF_ORDER = "out_of_order"  # message not allowed at the session's current stage
    UNKNOWN_CLIENT = "unknown_client"
    CONFIG_MISMATCH = "config_mismatch"
    BUDGET = "budget"  # a privacy budget refuses the request
    SERVER = "server"  # the server failed on a valid message


class WireError(Exception):
    """A message was rejected; `code` says why in one word, the text says exactly what."""

    def __init__(self, code: ErrorCode, detail: str):
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # one of codec.WIRE_DTYPES
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Header:
    type: MsgType
    session: str = ""
    round: int = 0
    step: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: tuple[TensorSpec, ...] = ()
    version: int = PROTOCOL_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "type": self.type.value,
            "session": self.session,
            "round": self.round,
            "step": self.step,
            "meta": self.meta,
            "tensors": [t.to_json() for t in self.tensors],
        }
