"""Grid integers on the wire: int16/int32 + step round trips exactly; hostile variants are WireErrors."""

import json

import pytest
import torch

from splitfed.wire import INTEGERS, ErrorCode, Header, MsgType, WireError, compress, decode, decompress, encode
from splitfed.wire.compression import wire_names

MAX = 1 << 24


def _through_wire(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return decode(encode(Header(MsgType.FORWARD), tensors), max_bytes=MAX).tensors


@pytest.mark.parametrize(
    "peak, dtype", [(0, torch.int16), (2**15 - 1, torch.int16), (2**15, torch.int32), (2**24 - 1, torch.int32)]
)
def test_round_trip_is_exact_and_int16_is_chosen_when_it_fits(peak, dtype):
    step = 2.0**-7
    k = torch.randint(-3, 4, (2, 5, 8), generator=torch.Generator().manual_seed(0))
    k[0, 0, 0], k[1, 4, 7] = peak, -peak
    x = k.float() * step
    wire = compress("act", x, INTEGERS, step=step)
    assert set(wire) == wire_names("act", INTEGERS) == {"act", "act.step"}
    assert wire["act"].dtype == dtype and torch.equal(wire["act"].long(), k)
    assert wire["act.step"].dtype == torch.float32 and wire["act.step"].dim() == 0 and float(wire["act.step"]) == step
    nbytes = sum(t.numel() * t.element_size() for t in wire.values())
    assert nbytes == (2 if dtype == torch.int16 else 4) * x.numel() + 4
    back = decompress("act", _through_wire(wire), INTEGERS)
    assert back.dtype == torch.float32 and torch.equal(back, x)


@pytest.mark.parametrize("step", [2.0**-140, 2.0**103])
def test_extreme_steps_still_round_trip_exactly(step):
    x = torch.tensor([-(2**24 - 1), -1, 0, 3, 2**24 - 1], dtype=torch.float32) * step
    assert torch.isfinite(x).all()
    assert torch.equal(decompress("g", _through_wire(compress("g", x, INTEGERS, step=step)), INTEGERS), x)


@pytest.mark.parametrize(
    "x, step, match",
    [
        (torch.tensor([0.5, 1.0]), 1.0, "not integer multiples"),
        (torch.tensor([2.0**24]), 1.0, "below 2\\^24"),
        (torch.tensor([float("nan")]), 1.0, "not integer multiples"),
        (torch.tensor([1.0]), 3.0, "power of two"),
        (torch.tensor([1.0]), 0.0, "power of two"),
        (torch.tensor([1.0]), 2.0**104, "power of two"),
    ],
)
def test_the_sender_refuses_what_is_not_on_its_grid(x, step, match):
    with pytest.raises(ValueError, match=match):
        compress("act", x, INTEGERS, step=step)


def _hostile(k: torch.Tensor, step: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"act": k, "act.step": step}


STEP = torch.tensor(0.25)


@pytest.mark.parametrize(
    "tensors, match",
    [
        ({"act": torch.zeros(2, 3, dtype=torch.int16)}, "expected tensors 'act' and 'act.step'"),
        ({"act.step": STEP}, "expected tensors 'act' and 'act.step'"),
        (_hostile(torch.zeros(2, 3), STEP), "expected int16 or int32 .* got torch.float32"),
        (_hostile(torch.zeros(2, 3, dtype=torch.int8), STEP), "expected int16 or int32 .* got torch.int8"),
        (_hostile(torch.zeros(2, 3, dtype=torch.int64), STEP), "expected int16 or int32 .* got torch.int64"),
        (_hostile(torch.zeros(2, dtype=torch.int16), STEP.double()), "expected a float32 scalar, got torch.float64"),
        (_hostile(torch.zeros(2, dtype=torch.int16), STEP.reshape(1)), "expected a float32 scalar, got .*\\[1\\]"),
        (_hostile(torch.zeros(2, dtype=torch.int16), torch.tensor(0.3)), "power of two .* got 0.3"),
        (_hostile(torch.zeros(2, dtype=torch.int16), torch.tensor(3.0)), "power of two .* got 3.0"),
        (_hostile(torch.zeros(2, dtype=torch.int16), torch.tensor(-0.25)), "power of two .* got -0.25"),
        (_hostile(torch.zeros(2, dtype=torch.int16), torch.tensor(0.0)), "power of two .* got 0.0"),
        (_hostile(torch.zeros(2, dtype=torch.int16), torch.tensor(2.0**104)), "power of two"),
        (_hostile(torch.zeros(2, dtype=torch.int16), torch.tensor(float("nan"))), "power of two .* got nan"),
        (_hostile(torch.zeros(2, dtype=torch.int16), torch.tensor(float("inf"))), "power of two .* got inf"),
        (_hostile(torch.tensor([0, 2**24], dtype=torch.int32), STEP), "expected every \\|k\\| < 2\\^24"),
        (_hostile(torch.tensor([-(2**24)], dtype=torch.int32), STEP), "expected every \\|k\\| < 2\\^24"),
        (_hostile(torch.tensor([-(2**31)], dtype=torch.int32), STEP), "expected every \\|k\\| < 2\\^24"),
    ],
)
def test_hostile_integer_releases_are_wire_errors_that_say_what_was_expected(tensors, match):
    with pytest.raises(WireError, match=match) as err:
        decompress("act", tensors, INTEGERS)
    assert err.value.code == ErrorCode.BAD_TENSOR


def test_a_non_finite_step_in_frames_is_refused_by_the_codec_first():
    frames = encode(Header(MsgType.FORWARD), {"act": torch.zeros(2, dtype=torch.int16), "act.step": torch.tensor(1.0)})
    frames[2] = torch.tensor(float("inf")).numpy().tobytes()
    with pytest.raises(WireError, match="NaN or Inf"):
        decode(frames, max_bytes=MAX)


def test_int16_and_int32_frames_must_have_their_exact_size():
    frames = encode(Header(MsgType.FORWARD), {"act": torch.zeros(3, dtype=torch.int32), "act.step": STEP})
    head = json.loads(frames[0])
    head["tensors"][0]["dtype"] = "int16"  # 12 bytes claimed as int16[3]
    with pytest.raises(WireError, match="int16\\[3\\] needs 6 bytes, frame has 12"):
        decode([json.dumps(head).encode(), *frames[1:]], max_bytes=MAX)
