"""Encode and decode messages: JSON header + raw tensor frames, validated before use.

Decoding treats every byte as hostile: it raises nothing but `WireError`, never recurses,
allocates or computes in proportion to a number the peer wrote, and quotes peer input in
error details only through `short`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from splitfed.wire.messages import (
    DETAIL_BUDGET,
    PROTOCOL_VERSION,
    ErrorCode,
    Header,
    MsgType,
    TensorSpec,
    WireError,
    clip,
    short,
)
from splitfed.wire.meta import Error, meta_json, parse_meta

# dtype allow-list: wire name -> torch dtype
WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
}
_NAME_OF = {v: k for k, v in WIRE_DTYPES.items()}
_ITEMSIZE = {k: v.itemsize for k, v in WIRE_DTYPES.items()}
MAX_HEADER_BYTES = 64 * 1024
MAX_TENSORS = 4096
MAX_DEPTH = 32  # nesting of JSON arrays/objects, the header object itself counting 1
MAX_INT_DIGITS = 40  # an integer literal longer than this is refused unparsed (a 128-bit value still parses)
MAX_SESSION_CHARS = 128
MAX_NAME_CHARS = 256
MAX_RANK = 8
MAX_DIM = 2**31
MAX_ELEMENTS = 2**40  # bound on the product of a shape's non-zero dims: strides and byte counts stay in int64
MAX_COUNTER = 2**63 - 1  # round and step
_MSG_TYPES = {t.value: t for t in MsgType}
_HEADER_KEYS = {"v", "type", "session", "round", "step", "meta", "tensors"}
_SPEC_KEYS = {"name", "dtype", "shape"}


@dataclass(frozen=True)
class Message:
    header: Header
    tensors: dict[str, torch.Tensor]

    @property
    def type(self) -> MsgType:
        return self.header.type

    @cached_property
    def meta(self) -> Any:
        """The header's ``meta`` as its type's class (`wire.meta.META`).  `decode` has checked it;
        for a message built by hand the check runs here, raising `WireError`."""
        return parse_meta(self.header.type, self.header.meta)


def encode(header: Header, tensors: Mapping[str, torch.Tensor] | None = None) -> list:
    """Frames for `header` and `tensors` (the header's tensor specs are filled in here).

    ``header.meta`` is the type's `wire.meta` class (checked: ValueError if it would not decode)
    or, unchecked, a JSON object."""
    tensors = dict(tensors or {})
    meta = meta_json(header.type, header.meta) if dataclasses.is_dataclass(header.meta) else header.meta
    specs, frames = [], []
    for name, t in tensors.items():
        t = t.detach()
        if t.dtype not in _NAME_OF:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} is not sendable; allowed {sorted(WIRE_DTYPES)}")
        t = t.contiguous().cpu()
        specs.append(TensorSpec(name, _NAME_OF[t.dtype], tuple(t.shape)))
        # bfloat16 has no numpy dtype: send its bits
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        frames.append(raw.numpy().reshape(-1).view("uint8").data)  # zero-copy 1-D byte view
    full = Header(header.type, header.session, header.round, header.step, meta, tuple(specs), header.version)
    return [json.dumps(full.to_json(), allow_nan=False).encode(), *frames]


def _refuse_int(literal: str) -> int:
    digits = len(literal) - literal.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise WireError(ErrorCode.MALFORMED, f"header has an integer of {digits} digits, limit {MAX_INT_DIGITS}")
    return int(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise WireError(ErrorCode.MALFORMED, f"header has a number out of float range: {short(literal)}")
    return value


def _refuse_constant(literal: str):
    raise WireError(ErrorCode.MALFORMED, f"header has {literal}, which JSON does not allow")


def _unique_keys(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise WireError(ErrorCode.MALFORMED, f"header has duplicate key {short(dup)}")
    return obj


_JSON = json.JSONDecoder(
    parse_int=_refuse_int,
    parse_float=_finite_float,
    parse_constant=_refuse_constant,
    object_pairs_hook=_unique_keys,
)
# byte -> nesting step as an int8: +1 for '[' and '{', -1 for ']' and '}', 0 for anything else
_NEST_STEP = bytes(1 if b in b"[{" else 255 if b in b"]}" else 0 for b in range(256))


def _nesting_depth(raw: bytes) -> int:
    """How deep arrays/objects nest in JSON text `raw`, counting brackets outside strings only.

    Exact for any text `json` accepts, and for the prefix it accepts before an error; a few
    vectorised passes over the bytes, never recursive.
    """
    # without escaped backslashes, then escaped quotes, every '"' left opens or closes a string
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    inside = np.cumsum(np.frombuffer(text, dtype=np.uint8) == ord('"'), dtype=np.int32) & 1
    steps = np.frombuffer(text.translate(_NEST_STEP), dtype=np.int8) * (1 - inside)
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def _too_deep(raw: bytes) -> bool:
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:  # the common case: a small header cannot be
        return False
    return _nesting_depth(raw) > MAX_DEPTH


def _counter(obj: dict, key: str) -> int:
    v = obj.get(key)
    if type(v) is not int or not 0 <= v <= MAX_COUNTER:
        raise WireError(ErrorCode.MALFORMED, f"header field {key!r}: expected an integer in [0, 2**63), got {short(v)}")
    return v


def _spec(i: int, s) -> TensorSpec:
    """Tensor spec `i`, every field type-checked before it is used."""
    if not isinstance(s, dict) or s.keys() != _SPEC_KEYS:
        raise WireError(ErrorCode.MALFORMED, f"tensor spec {i}: expected {{name, dtype, shape}}, got {short(s)}")
    name, dtype, shape = s["name"], s["dtype"], s["shape"]
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise WireError(
            ErrorCode.MALFORMED,
            f"tensor spec {i}: name must be a non-empty printable string of at most {MAX_NAME_CHARS} characters,"
            f" got {short(name)}",
        )
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise WireError(
            ErrorCode.BAD_TENSOR,
            f"tensor {short(name)}: dtype {short(dtype)} not allowed; allowed {sorted(WIRE_DTYPES)}",
        )
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise WireError(
            ErrorCode.BAD_TENSOR,
            f"tensor {short(name)}: shape must be a list of <= {MAX_RANK} ints, got {short(shape)}",
        )
    extent = 1  # product of the non-zero dims, checked as it grows
    for d in shape:
        if type(d) is not int or not 0 <= d <= MAX_DIM:
            raise WireError(
                ErrorCode.BAD_TENSOR,
                f"tensor {short(name)}: shape must be non-negative ints <= 2**31, got {short(shape)}",
            )
        extent *= max(d, 1)
        if extent > MAX_ELEMENTS:
            raise WireError(
                ErrorCode.BAD_TENSOR, f"tensor {short(name)}: shape {short(shape)} spans more than 2**40 elements"
            )
    return TensorSpec(name, dtype, tuple(shape))


def _decode_header(raw) -> Header:
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(ErrorCode.TOO_LARGE, f"header is {len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    raw = bytes(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(ErrorCode.MALFORMED, f"header is not UTF-8 JSON ({exc})") from None
    if _too_deep(raw):
        raise WireError(ErrorCode.MALFORMED, f"header is not UTF-8 JSON (nested deeper than {MAX_DEPTH} levels)")
    try:
        obj = _JSON.decode(text)
    except json.JSONDecodeError as exc:
        raise WireError(ErrorCode.MALFORMED, f"header is not UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise WireError(ErrorCode.MALFORMED, f"header must be a JSON object, got {type(obj).__name__}")
    unknown = obj.keys() - _HEADER_KEYS
    if unknown:
        raise WireError(ErrorCode.MALFORMED, f"unknown header fields {short(sorted(unknown))}")
    version = obj.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise WireError(ErrorCode.VERSION, f"protocol version {PROTOCOL_VERSION} expected, got {short(version)}")
    mtype = obj.get("type")
    if not isinstance(mtype, str) or mtype not in _MSG_TYPES:
        raise WireError(
            ErrorCode.UNKNOWN_TYPE, f"unknown message type {short(mtype)}; known: {[t.value for t in MsgType]}"
        )
    session = obj.get("session", "")
    if not isinstance(session, str) or len(session) > MAX_SESSION_CHARS or not session.isprintable():
        raise WireError(
            ErrorCode.MALFORMED,
            f"header field 'session': expected a printable string of at most {MAX_SESSION_CHARS} characters",
        )
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise WireError(ErrorCode.MALFORMED, f"header field 'meta': expected an object, got {type(meta).__name__}")
    specs_raw = obj.get("tensors", [])
    if not isinstance(specs_raw, list) or len(specs_raw) > MAX_TENSORS:
        raise WireError(ErrorCode.MALFORMED, f"header field 'tensors': expected a list of at most {MAX_TENSORS} specs")
    specs = tuple(_spec(i, s) for i, s in enumerate(specs_raw))
    if len({s.name for s in specs}) != len(specs):
        raise WireError(ErrorCode.MALFORMED, "duplicate tensor names in header")
    return Header(_MSG_TYPES[mtype], session, _counter(obj, "round"), _counter(obj, "step"), meta, specs)


def _decode(frames: Sequence, max_bytes: int) -> Message:
    if not frames:
        raise WireError(ErrorCode.MALFORMED, "empty message: expected a header frame")
    if len(frames) > MAX_TENSORS + 1:
        raise WireError(ErrorCode.MALFORMED, f"message has {len(frames)} frames, limit {MAX_TENSORS + 1}")
    bufs = [_buf(f) for f in frames]
    total = frames_nbytes(bufs)
    if total > max_bytes:
        raise WireError(ErrorCode.TOO_LARGE, f"message is {total} bytes, limit {max_bytes}")
    header = _decode_header(bufs[0])
    if len(bufs) - 1 != len(header.tensors):
        raise WireError(
            ErrorCode.MALFORMED, f"header lists {len(header.tensors)} tensors but {len(bufs) - 1} frames followed"
        )
    tensors = {}
    for spec, buf in zip(header.tensors, bufs[1:], strict=True):
        # shape is checked: <= MAX_RANK dims in [0, MAX_DIM], extent <= MAX_ELEMENTS; so `want` is small
        want = math.prod(spec.shape) * _ITEMSIZE[spec.dtype]
        if buf.nbytes != want:
            raise WireError(
                ErrorCode.BAD_TENSOR,
                f"tensor {short(spec.name)}: {spec.dtype}{list(spec.shape)} needs {want} bytes, frame has {buf.nbytes}",
            )
        dtype = WIRE_DTYPES[spec.dtype]
        raw_dtype = torch.int16 if dtype == torch.bfloat16 else dtype
        t = torch.frombuffer(bytearray(buf), dtype=raw_dtype) if want else torch.empty(0, dtype=raw_dtype)
        t = t.view(dtype).reshape(spec.shape)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WireError(ErrorCode.BAD_TENSOR, f"tensor {short(spec.name)} contains NaN or Inf")
        tensors[spec.name] = t
    msg = Message(header, tensors)
    _ = msg.meta  # checked last: frame and tensor errors are reported first, as before meta was typed
    return msg


_UNEXPECTED = "undecodable message"  # the guard's detail: a check above is missing


def decode_header(raw) -> Header:
    """The checked header of a message whose first frame is `raw`; raises only `WireError`."""
    try:
        return _decode_header(raw)
    except WireError:
        raise
    except Exception as exc:  # defence in depth: every known cause is checked above
        raise WireError(ErrorCode.MALFORMED, f"{_UNEXPECTED} ({type(exc).__name__})") from exc


def decode(frames: Sequence, *, max_bytes: int) -> Message:
    """Parse and check a message: frame count, header, dtypes, sizes, no NaN/Inf, and the
    metadata against its type's class (`Message.meta`).

    Raises `WireError` and nothing else; never returns a partially checked message.
    """
    try:
        return _decode(frames, max_bytes)
    except WireError:
        raise
    except Exception as exc:  # defence in depth: every known cause is checked above
        raise WireError(ErrorCode.MALFORMED, f"{_UNEXPECTED} ({type(exc).__name__})") from exc


def frames_nbytes(frames: Iterable) -> int:
    """Bytes in `frames`, whatever each is: bytes, bytearray, memoryview (of any item size),
    ``zmq.Frame``, or another object exposing the buffer protocol (a numpy array)."""
    return sum(memoryview(f).nbytes for f in frames)


def _buf(frame) -> memoryview:
    if isinstance(frame, bytes | bytearray | memoryview):
        return memoryview(frame).cast("B")
    return frame.buffer  # zmq.Frame


def error_frames(code: ErrorCode, detail: str, *, session: str = "", round: int = 0, step: int = 0) -> list:
    return encode(Header(MsgType.ERROR, session, round, step, Error(code.value, clip(detail, DETAIL_BUDGET))))
