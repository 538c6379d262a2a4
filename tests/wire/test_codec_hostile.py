"""Hostile authenticated peers: every input `decode` refuses is refused by its own check.

Each case asserts the error code and a piece of the detail that only the specific check
writes, so that the final guard in `decode` (which answers `malformed` for anything that
slips through) cannot make these tests pass on its own.
"""

import json
import time

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from splitfed.wire import (
    WIRE_DTYPES,
    ErrorCode,
    Header,
    MsgType,
    WireError,
    codec,
    decode,
    decode_header,
    encode,
    error_frames,
)
from splitfed.wire.messages import DETAIL_BUDGET, clip, short

MAX = 1 << 24
GUARD = "undecodable message"  # the detail of the catch-all guard: a specific check is missing


def header(**fields) -> bytes:
    base = {"v": 1, "type": "forward", "session": "", "round": 0, "step": 0, "meta": {}, "tensors": []}
    return json.dumps({**base, **fields}).encode()


def doc_header(text: str) -> bytes:
    """A RAG_FETCH reply carrying one document of `text`."""
    return header(type="rag_fetch", meta={"docs": [{"row": 0, "doc_id": "d", "title": "t", "text": text}]})


def spec(shape, dtype="float32", name="x") -> dict:
    return {"name": name, "dtype": dtype, "shape": shape}


def refused(frames, code: ErrorCode, text: str, *, max_bytes: int = MAX) -> str:
    """Decode `frames`, expecting WireError(`code`) whose detail holds `text`; returns the detail."""
    with pytest.raises(WireError) as exc:
        decode(frames, max_bytes=max_bytes)
    err = exc.value
    assert not err.detail.startswith(GUARD), f"only the catch-all guard caught this: {err.detail}"
    assert err.code == code, err.detail
    assert text in err.detail, err.detail
    assert len(err.detail) <= DETAIL_BUDGET
    return err.detail


# --- JSON structure: nesting, numbers, constants, duplicate keys ------------------------------------


@pytest.mark.parametrize("open_, close", [("[", "]"), ("{", "}")])
def test_deep_nesting_in_meta_is_refused_before_parsing(open_, close):
    deep = open_ * 10_000 + close * 10_000 if open_ == "[" else '{"a":' * 10_000 + "0" + "}" * 10_000
    raw = header().replace(b'"meta": {}', b'"meta": {"x": ' + deep.encode() + b"}")
    refused([raw], ErrorCode.MALFORMED, "nested deeper than 32 levels")


def test_deep_nesting_in_tensors_is_refused_before_parsing():
    raw = header().replace(b'"tensors": []', b'"tensors": ' + b"[" * 10_000 + b"]" * 10_000)
    refused([raw], ErrorCode.MALFORMED, "nested deeper than 32 levels")


def test_nesting_limit_is_exact_and_brackets_in_strings_do_not_count():
    def nested(k):  # header (1) + meta (2) + k lists; no message type's meta nests so: the header alone
        return header(meta={"x": json.loads("[" * k + "]" * k)})

    assert decode_header(nested(codec.MAX_DEPTH - 2)).meta["x"] is not None
    refused([nested(codec.MAX_DEPTH - 1)], ErrorCode.MALFORMED, "nested deeper than 32 levels")
    tricky = '[{"\\"[' * 200  # brackets and escaped quotes inside a string
    assert decode([doc_header(tricky)], max_bytes=MAX).meta.docs[0].text == tricky


@pytest.mark.parametrize("field", ["round", "step", "meta", "shape"])
@pytest.mark.parametrize("sign", ["", "-"])
def test_integer_literals_past_the_digit_limit_are_refused_unparsed(field, sign):
    big = sign + "9" * 5000  # past Python's 4300-digit int conversion limit
    if field == "meta":
        raw = header().replace(b'"meta": {}', f'"meta": {{"n": {big}}}'.encode())
    elif field == "shape":
        raw = header(tensors=[spec([1])]).replace(b'"shape": [1]', f'"shape": [{big}]'.encode())
    else:
        raw = header().replace(f'"{field}": 0'.encode(), f'"{field}": {big}'.encode())
    refused([raw], ErrorCode.MALFORMED, "integer of 5000 digits, limit 40")


def test_digit_limit_boundary():
    forty = "9" * codec.MAX_INT_DIGITS
    raw = header().replace(b'"round": 0', f'"round": {forty}'.encode())
    refused([raw], ErrorCode.MALFORMED, "'round': expected an integer in [0, 2**63)")  # parsed, then range-checked
    raw = header().replace(b'"round": 0', f'"round": {forty}9'.encode())
    refused([raw], ErrorCode.MALFORMED, "integer of 41 digits")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_refused(literal):
    raw = header().replace(b'"meta": {}', f'"meta": {{"a": {literal}}}'.encode())
    refused([raw], ErrorCode.MALFORMED, f"header has {literal}, which JSON does not allow")


@pytest.mark.parametrize("literal", ["1e400", "-1e400"])
def test_floats_out_of_range_are_refused(literal):
    raw = header().replace(b'"meta": {}', f'"meta": {{"a": {literal}}}'.encode())
    refused([raw], ErrorCode.MALFORMED, "number out of float range")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"v": 1, "type": "forward", "round": 1, "round": 2, "step": 0}',
        b'{"v": 1, "type": "forward", "round": 0, "step": 0, "meta": {"a": 1, "a": 2}}',
        b'{"v": 1, "type": "forward", "round": 0, "step": 0, '
        b'"tensors": [{"name": "x", "name": "y", "dtype": "uint8", "shape": [0]}]}',
    ],
)
def test_duplicate_keys_are_refused(raw):
    frames = [raw, b""] if b"tensors" in raw else [raw]
    refused(frames, ErrorCode.MALFORMED, "duplicate key")


def test_header_size_limit_holds_for_a_megabyte_string_in_meta():
    refused([header(meta={"s": "a" * (1 << 20)})], ErrorCode.TOO_LARGE, "limit 65536", max_bytes=1 << 22)
    big = "a" * 60_000  # within the header limit: a document's text is bounded by the header size only
    assert decode([doc_header(big)], max_bytes=MAX).meta.docs[0].text == big


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 65536,
        b"{" * 40 + b'"' + b'\\"' * 32_700,  # one unterminated string of escaped quotes
        b"[" * 40 + b'"\\\\' * 16_370,  # unterminated strings, backslash runs
        b'"[' * 32_768,  # strings and brackets alternating
        b'{"a": ' + b"9" * 65_000 + b"}",  # one vast integer literal
        b'{"v": 1, "type": "forward", "meta": {' + b'"a": 1, ' * 8000 + b'"a": 1}}',  # duplicate keys
    ],
)
def test_worst_case_headers_are_refused_in_linear_time(raw):
    """Each is about 64 KB and takes well under a millisecond; a quadratic step over 64 KB (4e9
    operations) would take seconds at least.  A complexity guard, not a speed target: the best of
    three tries is held to a bar 1,000x above the expected time, so a loaded CI box cannot fail it."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        with pytest.raises(WireError) as exc:
            decode_header(raw[: codec.MAX_HEADER_BYTES])
        best = min(best, time.perf_counter() - start)
    assert best < 1.0 and not exc.value.detail.startswith(GUARD)


# --- header fields ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, code, text",
    [
        ({"v": True}, ErrorCode.VERSION, "got True"),
        ({"v": 1.0}, ErrorCode.VERSION, "got 1.0"),
        ({"v": [1]}, ErrorCode.VERSION, "got [1]"),
        ({"type": ["forward"]}, ErrorCode.UNKNOWN_TYPE, "unknown message type ['forward']"),
        ({"type": {"a": 1}}, ErrorCode.UNKNOWN_TYPE, "unknown message type {'a': 1}"),
        ({"round": 2**63}, ErrorCode.MALFORMED, "'round': expected an integer in [0, 2**63)"),
        ({"step": 1.0}, ErrorCode.MALFORMED, "'step': expected an integer"),
        ({"step": None}, ErrorCode.MALFORMED, "'step': expected an integer"),
        ({"session": "s" * 129}, ErrorCode.MALFORMED, "'session'"),
        ({"session": "a\x00b"}, ErrorCode.MALFORMED, "'session'"),
        ({"session": ["s"]}, ErrorCode.MALFORMED, "'session'"),
        ({"tensors": {"x": 1}}, ErrorCode.MALFORMED, "'tensors'"),
        ({"tensors": [None] * (codec.MAX_TENSORS + 1)}, ErrorCode.MALFORMED, "'tensors'"),
        ({"tensors": [[1, 2]]}, ErrorCode.MALFORMED, "tensor spec 0: expected {name, dtype, shape}"),
        ({"tensors": [spec([1], name="n" * 257)]}, ErrorCode.MALFORMED, "tensor spec 0: name must be"),
        ({"tensors": [spec([1], name="\ud800")]}, ErrorCode.MALFORMED, "tensor spec 0: name must be"),
        ({"tensors": [spec([1], name="")]}, ErrorCode.MALFORMED, "tensor spec 0: name must be"),
        ({"tensors": [spec([1], name=7)]}, ErrorCode.MALFORMED, "tensor spec 0: name must be"),
    ],
)
def test_header_fields_are_type_checked(fields, code, text):
    frames = [header(**fields)]
    if isinstance(fields.get("tensors"), list) and len(fields["tensors"]) == 1:
        frames.append(b"\0" * 4)
    refused(frames, code, text)


def test_too_many_frames_are_refused_before_being_measured():
    refused([header()] + [b""] * (codec.MAX_TENSORS + 1), ErrorCode.MALFORMED, "frames, limit 4097")


# --- tensor specs: dtype and shape -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [[], {}, 5, None, True, "float64", "Float32"])
def test_dtype_must_be_an_allowed_string(dtype):
    refused([header(tensors=[spec([1], dtype=dtype)]), b"\0" * 4], ErrorCode.BAD_TENSOR, "not allowed; allowed")


@pytest.mark.parametrize(
    "shape, text",
    [
        ([0, 2**63], "non-negative ints <= 2**31"),
        ([10**30, 0], "non-negative ints <= 2**31"),
        ([0, 2**62, 4], "non-negative ints <= 2**31"),
        ([0, 2**31 + 1], "non-negative ints <= 2**31"),
        ([-1], "non-negative ints <= 2**31"),
        ([True], "non-negative ints <= 2**31"),
        ([1.5], "non-negative ints <= 2**31"),
        (["3"], "non-negative ints <= 2**31"),
        ([None], "non-negative ints <= 2**31"),
        ([[2]], "non-negative ints <= 2**31"),
        ([1] * 9, "shape must be a list of <= 8 ints"),
        ("3", "shape must be a list of <= 8 ints"),
        ({"0": 1}, "shape must be a list of <= 8 ints"),
        (None, "shape must be a list of <= 8 ints"),
        ([0, 2**31, 2**31], "spans more than 2**40 elements"),
        ([2**21, 0, 2**20], "spans more than 2**40 elements"),
        ([2**31, 2**31, 2**31, 0], "spans more than 2**40 elements"),  # torch: numel multiplication overflow
    ],
)
def test_shape_must_be_small_non_negative_ints(shape, text):
    refused([header(tensors=[spec(shape)]), b""], ErrorCode.BAD_TENSOR, text)


def test_largest_allowed_empty_shape_decodes_without_allocating():
    t = decode([header(tensors=[spec([0, 2**31, 2**9])]), b""], max_bytes=MAX).tensors["x"]
    assert t.shape == (0, 2**31, 2**9) and t.numel() == 0


def test_size_must_match_the_frame_and_the_message_limit():
    refused([header(tensors=[spec([2**31])]), b"\0" * 4], ErrorCode.BAD_TENSOR, "needs 8589934592 bytes, frame has 4")
    refused([header(tensors=[spec([3])]), b"\0" * 4], ErrorCode.BAD_TENSOR, "needs 12 bytes, frame has 4")
    refused([header(tensors=[spec([300])]), b"\0" * 1200], ErrorCode.TOO_LARGE, "limit 1000", max_bytes=1000)


# --- bounded details ----------------------------------------------------------------------------------

ATTACK = "A" * 60_000


@pytest.mark.parametrize(
    "raw",
    [
        header(type=ATTACK),
        header(v=ATTACK),
        header(round=ATTACK),
        header(**{ATTACK: 1}),
        header(tensors=[spec([1], dtype=ATTACK)]),
        header(tensors=[spec([ATTACK])]),
        header(tensors=[spec([1], name=ATTACK)]),
        header(tensors=[{"name": "x", "dtype": "uint8", "shape": [1], "z": ATTACK}]),
        header(tensors=[spec([1], dtype=ATTACK, name="n" * 256)]),
    ],
)
def test_details_quoting_attacker_input_stay_within_the_budget(raw):
    frames = [raw, b"\0"] if b'tensors": [{' in raw else [raw]
    with pytest.raises(WireError) as exc:
        decode(frames, max_bytes=MAX)
    err = exc.value
    assert not err.detail.startswith(GUARD)
    assert len(err.detail) <= DETAIL_BUDGET and len(str(err)) <= DETAIL_BUDGET + 20
    assert "AAAAAAAAAA" * 10 not in err.detail  # the quote is short, not just the whole clipped
    sent = json.loads(error_frames(err.code, err.detail)[0])
    assert len(sent["meta"]["detail"]) <= DETAIL_BUDGET


def test_wire_error_clips_any_detail_with_a_marker():
    err = WireError(ErrorCode.SERVER, "x" * 100_000)
    assert DETAIL_BUDGET - 5 <= len(err.detail) <= DETAIL_BUDGET and err.detail.endswith("chars)")
    assert err.detail.endswith(f"... (+{100_000 - err.detail.index('...')} chars)")
    assert WireError(ErrorCode.SERVER, "short").detail == "short"
    assert clip("abc", 3) == "abc" and len(clip("a" * 1000, 50)) <= 50
    sent = json.loads(error_frames(ErrorCode.SERVER, "y" * 5000)[0])
    assert len(sent["meta"]["detail"]) <= DETAIL_BUDGET


def test_short_is_bounded_and_never_raises():
    assert short("abc") == "'abc'"
    assert short("a" * 100) == repr("a" * 60) + "... (+40 chars)"
    assert len(short([[[[["deep"]]]]] * 1000)) <= 60
    assert len(short({"k" * 500: "v" * 500})) <= 60
    assert short(10**5000) == "<int>"  # too long for repr: the type only

    class Hostile:
        def __repr__(self):
            raise RuntimeError("no")

    assert short(Hostile()).startswith("<Hostile")


def test_guard_turns_an_unforeseen_failure_into_a_wire_error(monkeypatch):
    def broken(raw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(codec, "_decode_header", broken)
    for call in (lambda: decode([header()], max_bytes=MAX), lambda: decode_header(header())):
        with pytest.raises(WireError) as exc:
            call()
        assert exc.value.code == ErrorCode.MALFORMED and exc.value.detail == f"{GUARD} (RuntimeError)"
        assert isinstance(exc.value.__cause__, RuntimeError)


# --- the nesting pre-scan against an independent depth -------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
tricky_text = st.text(alphabet='[]{}"\\ab\n\u00e9', max_size=12)
json_values = st.recursive(
    json_scalars | tricky_text,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6) | tricky_text, kids, max_size=4),
    max_leaves=30,
)


def depth(v) -> int:
    if isinstance(v, list):
        return 1 + max(map(depth, v), default=0)
    if isinstance(v, dict):
        return 1 + max(map(depth, v.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_nesting_prescan_matches_the_parsed_depth(value, ascii_only):
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert codec._nesting_depth(raw) == depth(value)


# --- fuzzing: only WireError, or a fully checked message ------------------------------------------------

small_json = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=6,
)


def check_outcome(frames, max_bytes=MAX):
    """`decode` either refuses with a specific WireError or returns tensors exactly as specified."""
    try:
        msg = decode(frames, max_bytes=max_bytes)
    except WireError as err:
        assert not err.detail.startswith(GUARD), err.detail
        assert len(err.detail) <= DETAIL_BUDGET
        event(f"refused: {err.code.value}")
        return None
    specs = json.loads(bytes(frames[0]))["tensors"] if msg.header.tensors else []
    assert len(msg.tensors) == len(specs) == len(frames) - 1
    for s in specs:
        t = msg.tensors[s["name"]]
        assert t.dtype == WIRE_DTYPES[s["dtype"]] and list(t.shape) == s["shape"]
        if t.is_floating_point():
            assert bool(torch.isfinite(t).all())
    assert 0 <= msg.header.round < 2**63 and 0 <= msg.header.step < 2**63
    json.dumps(msg.header.to_json(), allow_nan=False)  # what was accepted can be logged and sent on
    event(f"accepted with {len(specs)} tensors")
    return msg


@settings(max_examples=800, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=5))
def test_fuzz_random_frames(frames):
    check_outcome(frames)


VALID = [
    encode(
        Header(MsgType.FORWARD, "s1", 1, 2, {"train": True}),
        {"act": torch.randn(2, 3, 4), "mask": torch.ones(2, 3, dtype=torch.uint8)},
    ),
    encode(
        Header(MsgType.UPDATE, "s2", 3, 0, {"n": [1, {"a": "b"}]}),
        {"w": torch.randn(4).to(torch.bfloat16), "i": torch.arange(3)},
    ),
    encode(Header(MsgType.HEARTBEAT)),
]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_bit_flips_of_valid_messages(data):
    frames = [bytearray(bytes(f)) for f in data.draw(st.sampled_from(VALID))]
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(frames) - 1))
        if not frames[i]:
            continue
        bit = data.draw(st.integers(0, len(frames[i]) * 8 - 1))
        frames[i][bit // 8] ^= 1 << (bit % 8)
    if data.draw(st.booleans()):  # sometimes also cut or extend a frame
        i = data.draw(st.integers(0, len(frames) - 1))
        frames[i] = frames[i][: data.draw(st.integers(0, len(frames[i])))] + data.draw(st.binary(max_size=8))
    check_outcome([bytes(f) for f in frames])


RARELY = st.sampled_from([False] * 11 + [True])  # True about once in 12 (hypothesis favours early items)


def mostly(good, odd):
    """`good`, and `odd` about once in 12 draws: most messages get past the early checks."""
    return RARELY.flatmap(lambda rare: odd if rare else good)


odd_dims = st.integers(-(2**70), 2**70) | st.sampled_from([2**31, 2**31 + 1, 2**40, 2**62, 2**63, 10**30]) | small_json


@st.composite
def tensor_specs(draw):
    spec = {
        "name": draw(mostly(st.sampled_from(["x", "y", "act", "mask", "w", "b"]), st.text(max_size=4) | small_json)),
        "dtype": draw(mostly(st.sampled_from(sorted(WIRE_DTYPES)), st.text(max_size=4) | small_json)),
        "shape": draw(
            mostly(
                st.lists(mostly(st.integers(0, 5), odd_dims), max_size=9),
                st.sampled_from([[2**31, 2**31, 2**30, 0], [0, 2**31, 2**31, 2**31]]) | small_json,  # empty but vast
            )
        ),
    }
    if draw(RARELY):
        spec[draw(st.text(max_size=3))] = draw(small_json)
    return draw(small_json) if draw(RARELY) else spec


def fitting_frame(spec, draw) -> bytes:
    """Bytes of the right size for `spec` when that size is small (as for any empty shape), else random."""
    shape, dtype = spec.get("shape"), spec.get("dtype")
    size = -1
    if isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) and dtype in sorted(WIRE_DTYPES):
        size = WIRE_DTYPES[dtype].itemsize
        for d in shape:
            size *= d  # at most 9 dims below 2**71: a small Python int
    if 0 <= size <= 4096 and not draw(RARELY):
        return bytes(size) if draw(st.booleans()) else draw(st.binary(min_size=size, max_size=size))
    return draw(st.binary(max_size=64))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_random_json_headers(data):
    draw = data.draw
    fields = {
        "v": (st.just(1), small_json),
        "type": (st.sampled_from([t.value for t in MsgType]), small_json),
        "session": (st.text(alphabet="0123456789abcdef", max_size=16), st.text(max_size=8) | small_json),
        "round": (st.integers(0, 9), st.integers(-(2**64), 2**64) | small_json),
        "step": (st.integers(0, 9), st.integers(-(2**64), 2**64) | small_json),
        "meta": (st.dictionaries(st.text(max_size=4), small_json, max_size=3), small_json | st.text()),
        "tensors": (st.lists(tensor_specs(), min_size=1, max_size=3), st.just([]) | small_json),
    }
    hdr = {k: draw(mostly(good, odd)) for k, (good, odd) in fields.items() if not draw(RARELY)}
    if draw(RARELY):
        hdr[draw(st.text(max_size=5))] = draw(small_json)
    frames = [json.dumps(hdr).encode()]  # NaN/Infinity literals included when drawn
    if draw(RARELY):  # an integer literal past Python's int conversion limit
        frames[0] = frames[0].replace(b": 0", b": " + b"9" * 5000, 1)
    if isinstance(hdr.get("tensors"), list):
        frames += [fitting_frame(s, draw) if isinstance(s, dict) else b"" for s in hdr["tensors"]]
    if draw(RARELY):
        frames = frames[:-1] if len(frames) > 1 and draw(st.booleans()) else [*frames, draw(st.binary(max_size=8))]
    check_outcome(frames)
