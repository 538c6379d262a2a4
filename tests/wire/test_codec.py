"""Wire codec: exact round trips, and every malformed input is a WireError (never anything else)."""

import contextlib
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitfed.wire import (
    ErrorCode,
    Header,
    MsgType,
    WireError,
    compress,
    decode,
    decode_header,
    decompress,
    encode,
    frames_nbytes,
)
from splitfed.wire.meta import Forward

MAX = 1 << 24


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int64])
def test_round_trip_is_exact(dtype):
    t = (torch.randn(3, 4, 5) * 10).to(dtype)
    msg = decode(
        encode(Header(MsgType.FORWARD, "s", 2, 7, Forward(train=False)), {"x": t, "empty": torch.zeros(0, 3)}),
        max_bytes=MAX,
    )
    assert msg.type == MsgType.FORWARD and msg.header.round == 2 and msg.header.step == 7
    assert msg.header.meta == {"train": False, "base": False} and msg.meta == Forward(train=False)
    assert msg.tensors["x"].dtype == dtype and torch.equal(msg.tensors["x"], t)
    assert msg.tensors["empty"].shape == (0, 3)


def test_frames_nbytes_counts_bytes_whatever_the_frame_type():
    import numpy as np
    import zmq

    tensors = {"x": torch.zeros(3, 4), "h": torch.zeros(5, dtype=torch.bfloat16)}
    frames = encode(Header(MsgType.FORWARD, "s", 1, 2), tensors)
    header = len(frames[0])
    assert frames_nbytes(frames) == header + 48 + 10
    assert frames_nbytes([zmq.Frame(bytes(f)) for f in frames]) == header + 58  # as received with copy=False
    wide = memoryview(np.zeros(3, dtype=np.float64))  # item size 8: 24 bytes, though len() says 3
    assert frames_nbytes([b"ab", bytearray(3), wide, np.zeros((2, 2), dtype=np.int16)]) == 2 + 3 + 24 + 8
    assert frames_nbytes([]) == 0 and frames_nbytes(iter([b"xyz"])) == 3


def test_non_contiguous_and_unsendable():
    t = torch.randn(4, 6).t()
    assert torch.equal(decode(encode(Header(MsgType.FORWARD), {"x": t}), max_bytes=MAX).tensors["x"], t)
    with pytest.raises(ValueError, match="not sendable"):
        encode(Header(MsgType.FORWARD), {"x": torch.zeros(2, dtype=torch.float64)})


def _code(frames):
    with pytest.raises(WireError) as exc:
        decode(frames, max_bytes=1000)
    return exc.value.code


def test_each_rejection_names_its_reason():
    good = encode(Header(MsgType.FORWARD), {"x": torch.zeros(4)})
    assert _code([]) == ErrorCode.MALFORMED
    assert _code([b"\xff\xfe"]) == ErrorCode.MALFORMED
    assert _code([b"[1, 2]"]) == ErrorCode.MALFORMED
    assert _code([good[0]]) == ErrorCode.MALFORMED  # frame missing
    assert _code([good[0], bytes(good[1])[:-1]]) == ErrorCode.BAD_TENSOR
    assert _code([good[0], bytes(2000)]) == ErrorCode.TOO_LARGE
    hdr = json.loads(good[0])
    for change, code in [
        ({"v": 2}, ErrorCode.VERSION),
        ({"type": "nope"}, ErrorCode.UNKNOWN_TYPE),
        ({"round": -1}, ErrorCode.MALFORMED),
        ({"step": True}, ErrorCode.MALFORMED),
        ({"extra": 1}, ErrorCode.MALFORMED),
        ({"meta": []}, ErrorCode.MALFORMED),
        ({"tensors": [{"name": "x", "dtype": "float64", "shape": [4]}]}, ErrorCode.BAD_TENSOR),
        ({"tensors": [{"name": "x", "dtype": "float32", "shape": [-4]}]}, ErrorCode.BAD_TENSOR),
        ({"tensors": [{"name": "x", "dtype": "float32", "shape": [4], "pickle": 1}]}, ErrorCode.MALFORMED),
    ]:
        assert _code([json.dumps({**hdr, **change}).encode(), good[1]]) == code, change
    nan = encode(Header(MsgType.FORWARD), {"x": torch.tensor([0.0, float("inf")])})
    assert _code(nan) == ErrorCode.BAD_TENSOR


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=4))
def test_random_frames_only_ever_raise_wire_errors(frames):
    with contextlib.suppress(WireError):
        decode(frames, max_bytes=MAX)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "type", "session", "round", "step", "meta", "tensors", "x"]),
        st.one_of(
            st.none(),
            st.integers(-3, 3),
            st.text(max_size=5),
            st.lists(st.integers(), max_size=3),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),
    )
)
def test_random_headers_only_ever_raise_wire_errors(obj):
    with contextlib.suppress(WireError):
        decode_header(json.dumps(obj).encode())


@pytest.mark.parametrize("kind, tol", [("fp32", 0.0), ("fp16", 1e-3), ("bf16", 1e-2), ("int8", 1e-2)])
def test_compression_error_and_size(kind, tol):
    x = torch.randn(2, 8, 64)
    wire = compress("act", x, kind)
    back = decompress("act", decode(encode(Header(MsgType.FORWARD), wire), max_bytes=MAX).tensors, kind)
    rel = ((back - x).abs().max() / x.abs().max()).item()
    assert rel <= tol
    nbytes = sum(t.numel() * t.element_size() for t in wire.values())
    assert nbytes == {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[kind] * x.numel() + (64 if kind == "int8" else 0)


def test_decompress_checks_the_agreed_encoding():
    with pytest.raises(WireError, match="expected torch.float16"):
        decompress("act", {"act": torch.zeros(2, 3)}, "fp16")
    with pytest.raises(WireError, match="int8 values"):
        decompress("act", {"act": torch.zeros(2, 3, dtype=torch.int8)}, "int8")
    with pytest.raises(WireError, match="missing tensor"):
        decompress("act", {}, "fp32")
