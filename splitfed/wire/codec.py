"""Encode and decode messages: JSON header + raw tensor frames, validated before use."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from splitfed.wire.messages import PROTOCOL_VERSION, ErrorCode, Header, MsgType, TensorSpec, WireError

# dtype allow-list: wire name -> torch dtype
WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int64": torch.int64,
}
_NAME_OF = {v: k for k, v in WIRE_DTYPES.items()}
MAX_HEADER_BYTES = 64 * 1024
MAX_TENSORS = 4096
_HEADER_KEYS = {"v", "type", "session", "round", "step", "meta", "tensors"}


@dataclass(frozen=True)
class Message:
    header: Header
    tensors: dict[str, torch.Tensor]

    @property
    def type(self) -> MsgType:
        return self.header.type


def encode(header: Header, tensors: Mapping[str, torch.Tensor] | None = None) -> list:
    """Frames for `header` and `tensors` (the header's tensor specs are filled in here)."""
    tensors = dict(tensors or {})
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
    full = Header(header.type, header.session, header.round, header.step, header.meta, tuple(specs), header.version)
    return [json.dumps(full.to_json(), allow_nan=False).encode(), *frames]


def _int(obj, key: str, lo: int = 0) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise WireError(ErrorCode.MALFORMED, f"header field {key!r}: expected an integer >= {lo}, got {v!r}")
    return v


def decode_header(raw: bytes) -> Header:
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(ErrorCode.TOO_LARGE, f"header is {len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        obj = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(ErrorCode.MALFORMED, f"header is not UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise WireError(ErrorCode.MALFORMED, f"header must be a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - _HEADER_KEYS
    if unknown:
        raise WireError(ErrorCode.MALFORMED, f"unknown header fields {sorted(unknown)}")
    if obj.get("v") != PROTOCOL_VERSION:
        raise WireError(ErrorCode.VERSION, f"protocol version {PROTOCOL_VERSION} expected, got {obj.get('v')!r}")
    try:
        mtype = MsgType(obj.get("type"))
    except ValueError:
        raise WireError(
            ErrorCode.UNKNOWN_TYPE, f"unknown message type {obj.get('type')!r}; known: {[t.value for t in MsgType]}"
        ) from None
    session = obj.get("session", "")
    meta = obj.get("meta", {})
    if not isinstance(session, str) or len(session) > 128:
        raise WireError(ErrorCode.MALFORMED, "header field 'session': expected a string of at most 128 characters")
    if not isinstance(meta, dict):
        raise WireError(ErrorCode.MALFORMED, f"header field 'meta': expected an object, got {type(meta).__name__}")
    specs_raw = obj.get("tensors", [])
    if not isinstance(specs_raw, list) or len(specs_raw) > MAX_TENSORS:
        raise WireError(ErrorCode.MALFORMED, f"header field 'tensors': expected a list of at most {MAX_TENSORS} specs")
    specs = []
    for i, s in enumerate(specs_raw):
        if not isinstance(s, dict) or set(s) != {"name", "dtype", "shape"}:
            raise WireError(ErrorCode.MALFORMED, f"tensor spec {i}: expected {{name, dtype, shape}}, got {s!r}")
        name, dtype, shape = s["name"], s["dtype"], s["shape"]
        if not isinstance(name, str) or not name:
            raise WireError(ErrorCode.MALFORMED, f"tensor spec {i}: name must be a non-empty string")
        if dtype not in WIRE_DTYPES:
            raise WireError(
                ErrorCode.BAD_TENSOR, f"tensor {name!r}: dtype {dtype!r} not allowed; allowed {sorted(WIRE_DTYPES)}"
            )
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise WireError(ErrorCode.BAD_TENSOR, f"tensor {name!r}: shape must be a list of <= 8 non-negative ints")
        specs.append(TensorSpec(name, dtype, tuple(shape)))
    if len({s.name for s in specs}) != len(specs):
        raise WireError(ErrorCode.MALFORMED, "duplicate tensor names in header")
    return Header(mtype, session, _int(obj, "round"), _int(obj, "step"), meta, tuple(specs))


def decode(frames: Sequence, *, max_bytes: int) -> Message:
    """Parse and check a message: frame count, header, dtypes, sizes, and no NaN/Inf.

    Raises `WireError`; never returns a partially checked message.
    """
    if not frames:
        raise WireError(ErrorCode.MALFORMED, "empty message: expected a header frame")
    total = sum(len(_buf(f)) for f in frames)
    if total > max_bytes:
        raise WireError(ErrorCode.TOO_LARGE, f"message is {total} bytes, limit {max_bytes}")
    header = decode_header(_buf(frames[0]))
    if len(frames) - 1 != len(header.tensors):
        raise WireError(
            ErrorCode.MALFORMED, f"header lists {len(header.tensors)} tensors but {len(frames) - 1} frames followed"
        )
    tensors = {}
    for spec, frame in zip(header.tensors, frames[1:], strict=True):
        dtype = WIRE_DTYPES[spec.dtype]
        buf = _buf(frame)
        want = math.prod(spec.shape) * torch.empty((), dtype=dtype).element_size()
        if len(buf) != want:
            raise WireError(
                ErrorCode.BAD_TENSOR,
                f"tensor {spec.name!r}: {spec.dtype}{list(spec.shape)} needs {want} bytes, frame has {len(buf)}",
            )
        raw_dtype = torch.int16 if dtype == torch.bfloat16 else dtype
        t = torch.frombuffer(bytearray(buf), dtype=raw_dtype) if want else torch.empty(0, dtype=raw_dtype)
        t = t.view(dtype).reshape(spec.shape)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WireError(ErrorCode.BAD_TENSOR, f"tensor {spec.name!r} contains NaN or Inf")
        tensors[spec.name] = t
    return Message(header, tensors)


def _buf(frame) -> memoryview:
    if isinstance(frame, bytes | bytearray | memoryview):
        return memoryview(frame).cast("B")
    return frame.buffer  # zmq.Frame


def error_frames(code: ErrorCode, detail: str, *, session: str = "", round: int = 0, step: int = 0) -> list:
    return encode(Header(MsgType.ERROR, session, round, step, {"code": code.value, "detail": detail[:2000]}))
