"""Typed header metadata: one frozen dataclass per message type, checked when a message is decoded.

=============  ===============  ==============================================  =======================
type           direction        meta fields (``?``: optional)                   tensors
=============  ===============  ==============================================  =======================
hello          client->server   client_id, config_hash, model, n_samples,       -
                                config_keys?, roster?
welcome        server->client   round, rounds, done, hidden, compression, mode  client adapter (+trunk/)
forward        client->server   train? (true), base? (false)                    act (+scale/step), mask
activations    server->client   -                                               act (+scale)
backward       client->server   -                                               grad (+scale/step)
gradient       server->client   -                                               grad (+scale)
update         client->server   loss?, secure? (false)                          client adapter (none if
                                                                                secure)
round_result   server->client   round, done                                     client adapter (+trunk/)
secagg         either way       stage, weight? (server's first message)         payload (uint8)
rag_context    querier<->party  request: -; reply: key_id, rows, grid?          context (request)
rag_score      querier<->party  request: key_id; reply: key_id, rows            query / scores.<i>
rag_fetch      querier<->party  request: rows; reply: docs                      -
heartbeat      either way       -                                               -
error          either way       code, detail                                    -
bye            client->server   bytes_out?, bytes_in?                           -
trunk_op       rank 0->ranks    op, clients?, base?, weights?, keys?            the op's tensors
=============  ===============  ==============================================  =======================

`parse_meta` checks a header's JSON ``meta`` against its type's class (`META`): every field's
type and its protocol-fixed bounds, no unknown field, every required field present.  Bounds
that depend on a run's configuration (a client id below the number of clients, ``n_samples``
below ``server.max_samples``) are the receiver's to check.  `meta_json` is the inverse.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from splitfed.wire.compression import Compression
from splitfed.wire.messages import DETAIL_BUDGET, ErrorCode, MsgType, WireError, short

MAX_TEXT_CHARS = 256  # an identifier, hash, fingerprint or name in meta


@dataclass(frozen=True)
class Bounds:
    """Inclusive bounds of a number; None: unbounded on that side."""

    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class MaxChars:
    """At most `n` characters, all printable unless `printable` is false."""

    n: int = MAX_TEXT_CHARS
    printable: bool = True


Count = Annotated[int, Bounds(0)]
Ident = Annotated[str, MaxChars()]
ServerMode = Literal["shared", "per_client"]  # config.parties.ServerMode (wire does not import config)
StageName = Literal["ADVERTISE_KEYS", "SHARE_KEYS", "MASKED_INPUT", "UNMASK", "DONE", "ABORTED"]  # secagg Stage
ErrorCodeName = Literal[tuple(c.value for c in ErrorCode)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class Hello:
    client_id: Count
    config_hash: Ident
    model: Ident  # base-model fingerprint
    n_samples: Annotated[int, Bounds(1)]
    config_keys: dict[str, Ident] | None = None  # dotted config key -> digest of its value
    roster: Ident | None = None  # secure-aggregation roster digest
    generate: bool | None = None  # a generation session (streams only): it takes no part in the rounds


@dataclass(frozen=True)
class Welcome:
    round: Count
    rounds: Count
    done: bool
    hidden: Annotated[int, Bounds(1)]
    compression: Compression
    mode: ServerMode


@dataclass(frozen=True)
class Forward:
    train: bool = True
    base: bool = False  # evaluate the public base model (trunk adapter off); needs train false


@dataclass(frozen=True)
class Empty:
    """ACTIVATIONS, BACKWARD, GRADIENT, HEARTBEAT: no metadata."""


@dataclass(frozen=True)
class Update:
    loss: float | None = None  # the round's mean training loss (None with privacy on)
    secure: bool = False  # the adapter goes through secure aggregation: no tensors here


@dataclass(frozen=True)
class RoundResult:
    round: Count
    done: bool


@dataclass(frozen=True)
class SecAgg:
    stage: StageName
    weight: Annotated[float, Bounds(0.0, 1.0)] | None = None  # server -> client, with the round config


@dataclass(frozen=True)
class RagContext:
    key_id: Ident | None = None  # reply: the id the party caches the context under
    rows: Count | None = None  # reply: documents the party holds
    grid: list[Count] | None = None  # reply: [query_bits, doc_bits] of a noised party's score grid


@dataclass(frozen=True)
class RagScore:
    key_id: Ident | None = None  # request: which cached context scores the query
    rows: Count | None = None  # reply: rows scored


@dataclass(frozen=True)
class RagDoc:
    row: Count
    doc_id: str
    title: str
    text: str


@dataclass(frozen=True)
class RagFetch:
    rows: list[Count] | None = None  # request: the rows wanted
    docs: list[RagDoc] | None = None  # reply: those documents


@dataclass(frozen=True)
class Error:
    code: ErrorCodeName
    detail: Annotated[str, MaxChars(DETAIL_BUDGET, printable=False)] = ""  # may hold newlines


@dataclass(frozen=True)
class TrunkOp:
    """torchrun rank 0 -> other ranks (`splitfed.server.ops`); a restore's optimizer state
    travels as JSON in a uint8 frame, not here."""

    op: Literal["infer", "forward", "backward", "average", "restore", "prefill", "decode", "release", "ping", "stop"]
    clients: list[Ident] | None = None  # infer, forward, backward, average, prefill, decode: whose tensors, in order
    streams: list[Ident] | None = None  # prefill, decode, release: the generation streams' cache keys
    base: bool | None = None  # infer: the trunk with its adapter off
    weights: list[Count] | None = None  # average: each client's weight
    keys: list[Ident] | None = None  # restore: the adapter states' keys


@dataclass(frozen=True)
class Generate:
    """A generation stream, one per client batch of prompts: ``open`` sends the prompt's
    activations (B, T, D) and mask (B, T); each ``step`` one position, (B, 1, D) and the mask's
    new column (B, 1); ``close`` frees the server's cache.  The header's step counts the stream's
    messages.  `positions`: open only, the most positions the stream will hold (prompt + new)."""

    op: Literal["open", "step", "close"]
    stream: Annotated[int, Bounds(0, 2**31 - 1)]
    positions: Annotated[int, Bounds(1, 2**31 - 1)] | None = None


@dataclass(frozen=True)
class Generated:
    stream: Annotated[int, Bounds(0, 2**31 - 1)]


@dataclass(frozen=True)
class Bye:
    bytes_out: Count | None = None
    bytes_in: Count | None = None


META: dict[MsgType, type] = {
    MsgType.HELLO: Hello,
    MsgType.WELCOME: Welcome,
    MsgType.FORWARD: Forward,
    MsgType.ACTIVATIONS: Empty,
    MsgType.BACKWARD: Empty,
    MsgType.GRADIENT: Empty,
    MsgType.UPDATE: Update,
    MsgType.ROUND_RESULT: RoundResult,
    MsgType.SECAGG: SecAgg,
    MsgType.RAG_CONTEXT: RagContext,
    MsgType.RAG_SCORE: RagScore,
    MsgType.RAG_FETCH: RagFetch,
    MsgType.HEARTBEAT: Empty,
    MsgType.ERROR: Error,
    MsgType.BYE: Bye,
    MsgType.TRUNK_OP: TrunkOp,
    MsgType.GENERATE: Generate,
    MsgType.GENERATED: Generated,
}


# ---------------------------------------------------------------------- the one generic checker
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


def _split(tp) -> tuple[Any, tuple]:
    """(the bare type, its Annotated extras)."""
    if get_origin(tp) is Annotated:
        return tp.__origin__, tp.__metadata__
    return tp, ()


def describe(tp) -> str:
    """What a value of annotation `tp` must be, in words."""
    base, extras = _split(tp)
    origin, args = get_origin(base), get_args(base)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin is list:
        return "a list"
    if origin is dict:
        return "an object"
    if dataclasses.is_dataclass(base):
        return f"an object {{{', '.join(f.name for f in dataclasses.fields(base))}}}"
    word = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[base]
    for x in extras:
        if isinstance(x, Bounds) and x.hi is None:
            word += f" >= {x.lo}"
        elif isinstance(x, Bounds):
            word += f" in [{x.lo}, {x.hi}]"
        elif isinstance(x, MaxChars):
            word = f"a {'printable ' if x.printable else ''}string of at most {x.n} characters"
    return word


class _Refused(Exception):
    """A field does not fit: `text` says which and why (`parse_meta` prefixes the message type)."""

    def __init__(self, text: str):
        self.text = text


def _mismatch(where: str, tp, value: Any) -> _Refused:
    return _Refused(f" field {where!r}: expected {describe(tp)}, got {short(value)}")


def _check(tp, value: Any, where: str) -> Any:
    base, extras = _split(tp)
    origin, args = get_origin(base), get_args(base)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        if _fits_shallow(inner, value):
            return _check(inner, value, where)
        raise _mismatch(where, tp, value)
    if not _fits_shallow(base, value):
        raise _mismatch(where, tp, value)
    if origin is list:
        return [_check(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        return {k: _check(args[1], v, f"{where}[{short(k)}]") for k, v in value.items()}
    if dataclasses.is_dataclass(base):
        return _build(base, value, where)
    if base is float:
        value = float(value)  # an integer literal is a number too
    for x in extras:
        if isinstance(x, Bounds) and not ((x.lo is None or value >= x.lo) and (x.hi is None or value <= x.hi)):
            raise _mismatch(where, tp, value)
        if isinstance(x, MaxChars) and (len(value) > x.n or (x.printable and not value.isprintable())):
            raise _mismatch(where, tp, value)
    return value


def _fits_shallow(base, value: Any) -> bool:
    """Whether `value` is of the JSON kind `base` names (containers: not their items)."""
    base, _ = _split(base)
    origin, args = get_origin(base), get_args(base)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if origin is list:
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if dataclasses.is_dataclass(base):
        return isinstance(value, dict)
    if base is float:
        return (type(value) is float and math.isfinite(value)) or type(value) is int
    return type(value) is base  # bool is no int here, nor int a bool


def _build(cls: type, obj: dict, where: str = ""):
    """`cls` from JSON object `obj` (`where`: its path inside meta, "" for meta itself)."""
    hints, names = _hints(cls), [f.name for f in dataclasses.fields(cls)]
    at = f" field {where!r}" if where else ""
    unknown = next((k for k in obj if k not in hints), None)
    if unknown is not None:
        raise _Refused(f"{at}: unknown field {short(unknown)}; known: {names}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        path = f"{where}.{f.name}" if where else f.name
        if f.name in obj:
            kwargs[f.name] = _check(hints[f.name], obj[f.name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _Refused(f": missing field {path!r} ({describe(hints[f.name])})")
    return cls(**kwargs)


def parse_meta(mtype: MsgType, obj: Any):
    """The `META` instance for a `mtype` header's JSON ``meta`` object; `WireError` (MALFORMED)
    naming the field, what it must be and what came."""
    if not isinstance(obj, dict):
        raise WireError(ErrorCode.MALFORMED, f"{mtype.value} meta: expected an object, got {short(obj)}")
    try:
        return _build(META[mtype], obj)
    except _Refused as exc:
        raise WireError(ErrorCode.MALFORMED, f"{mtype.value} meta{exc.text}") from None


def meta_json(mtype: MsgType, meta) -> dict[str, Any]:
    """The JSON ``meta`` object of typed `meta` (a `META[mtype]` instance); None fields are left out.

    Raises ValueError if `meta` is of another type or would not pass `parse_meta` (a local bug)."""
    if type(meta) is not META[mtype]:
        raise ValueError(f"{mtype.value} carries {META[mtype].__name__} metadata, got {type(meta).__name__}")
    obj = {k: v for k, v in _plain(meta).items() if v is not None}
    try:
        parse_meta(mtype, obj)
    except WireError as exc:
        raise ValueError(f"unsendable metadata: {exc.detail}") from None
    return obj


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
