"""Message types and the JSON header that precedes the raw tensor frames.

A message on the wire is ``[header, tensor_0, tensor_1, ...]``: the header is UTF-8 JSON
naming the type, protocol version, session, round, step and one spec per tensor frame;
each tensor frame is the tensor's raw bytes (C order).  Nothing is ever pickled.
"""

from __future__ import annotations

import enum
import reprlib
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
DETAIL_BUDGET = 400  # characters of a WireError's detail: it is logged, written to metrics and sent back


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
    TRUNK_OP = "trunk_op"  # torchrun rank 0 -> other ranks: one trunk operation (never valid from a client)
    GENERATE = "generate"  # client -> server: open / step / close a generation stream (activations, mask)
    GENERATED = "generated"  # server -> client: the trunk's output for that prefill or decode step


class ErrorCode(enum.Enum):
    MALFORMED = "malformed"  # frame count, JSON, missing fields
    VERSION = "version"
    UNKNOWN_TYPE = "unknown_type"
    BAD_TENSOR = "bad_tensor"  # dtype, shape, size, NaN/Inf
    TOO_LARGE = "too_large"
    OUT_OF_ORDER = "out_of_order"  # message not allowed at the session's current stage
    UNKNOWN_CLIENT = "unknown_client"
    WRONG_IDENTITY = "wrong_identity"  # the CURVE key belongs to another client than the one claimed
    CONFIG_MISMATCH = "config_mismatch"
    BUDGET = "budget"  # a privacy budget refuses the request
    SERVER = "server"  # the server failed on a valid message


class WireError(Exception):
    """A message was rejected; `code` says why in one word, the text says exactly what.

    The detail is clipped to `DETAIL_BUDGET` characters: it may quote a hostile peer.
    """

    def __init__(self, code: ErrorCode, detail: str):
        detail = clip(str(detail), DETAIL_BUDGET)
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail


def clip(text: str, budget: int) -> str:
    """`text` cut to at most `budget` characters, ending in ``... (+N chars)`` when cut."""
    if len(text) <= budget:
        return text
    keep = max(budget - len(f"... (+{len(text)} chars)"), 0)
    return f"{text[:keep]}... (+{len(text) - keep} chars)"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 4, 4, 4, 4


def short(value: Any, limit: int = 60) -> str:
    """A repr of `value` of at most about `limit` characters, for quoting peer input in an error.

    Never raises and never walks more than a few elements of a container.
    """
    if isinstance(value, str | bytes | bytearray):
        more = len(value) - limit
        text = clip(repr(value[:limit]), limit + 12)  # quotes and escapes lengthen it a little
        return f"{text}... (+{more} chars)" if more > 0 else text
    try:
        text = _REPR.repr(value)
    except Exception:  # e.g. an int too long to print: say what it was, not what it holds
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


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
    meta: Any = field(default_factory=dict)  # decoded: the JSON object; to send: also a `wire.meta` class
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
