"""Typed metadata (wire.meta): every type round-trips, honest peers' metadata decodes, hostile is refused."""

import dataclasses
import json
import random
from typing import get_args, get_type_hints

import pytest
import torch

from splitfed.wire import ErrorCode, Header, Message, MsgType, WireError, decode, encode
from splitfed.wire.compression import COMPRESSIONS
from splitfed.wire.meta import (
    META,
    Bye,
    Empty,
    Error,
    ErrorCodeName,
    Forward,
    Generate,
    Generated,
    Hello,
    RagContext,
    RagDoc,
    RagFetch,
    RagScore,
    RoundResult,
    SecAgg,
    ServerMode,
    TrunkOp,
    Update,
    Welcome,
    meta_json,
    parse_meta,
)

MAX = 1 << 20
DOC = RagDoc(3, "a.md:1", "Title", "Some text.")
#: one full instance per type (every optional field set)
SAMPLES = {
    MsgType.HELLO: Hello(1, "ab" * 32, "sha256:" + "0" * 64, 12, {"lora.bottom.r": "0123456789abcdef"}, "f" * 64),
    MsgType.WELCOME: Welcome(round=2, rounds=5, done=False, hidden=64, compression="int8", mode="per_client"),
    MsgType.FORWARD: Forward(train=False, base=True),
    MsgType.ACTIVATIONS: Empty(),
    MsgType.BACKWARD: Empty(),
    MsgType.GRADIENT: Empty(),
    MsgType.UPDATE: Update(loss=2.5, secure=True),
    MsgType.ROUND_RESULT: RoundResult(round=3, done=True),
    MsgType.SECAGG: SecAgg("ADVERTISE_KEYS", 0.25),
    MsgType.RAG_CONTEXT: RagContext("0123456789abcdef", 40, [8, 9]),
    MsgType.RAG_SCORE: RagScore("0123456789abcdef", 40),
    MsgType.RAG_FETCH: RagFetch(rows=[3, 0], docs=[DOC]),
    MsgType.HEARTBEAT: Empty(),
    MsgType.ERROR: Error("bad_tensor", "tensor 'act' contains NaN or Inf"),
    MsgType.BYE: Bye(bytes_out=10, bytes_in=20),
    MsgType.TRUNK_OP: TrunkOp("average", clients=["client-0", "client-1"], weights=[3, 1]),
    MsgType.GENERATE: Generate("open", 7, positions=96),
    MsgType.GENERATED: Generated(7),
}
#: what honest peers send today, as JSON (senders: client, server, aggregation, rag party/querier)
HONEST = [
    (MsgType.HELLO, {"client_id": 0, "config_hash": "a" * 64, "model": "sha256:" + "1" * 64, "n_samples": 3}),
    (MsgType.WELCOME, {"round": 0, "rounds": 2, "done": False, "hidden": 8, "compression": "fp32", "mode": "shared"}),
    (MsgType.FORWARD, {"train": True}),
    (MsgType.GENERATE, {"op": "open", "stream": 0, "positions": 40}),
    (MsgType.GENERATE, {"op": "step", "stream": 0}),
    (MsgType.GENERATE, {"op": "close", "stream": 3}),
    (MsgType.GENERATED, {"stream": 0}),
    (MsgType.FORWARD, {"train": False, "base": True}),
    (MsgType.UPDATE, {"loss": None, "secure": True}),
    (MsgType.UPDATE, {"loss": 1.25}),
    (MsgType.ROUND_RESULT, {"round": 1, "done": False}),
    (MsgType.SECAGG, {"stage": "SHARE_KEYS"}),
    (MsgType.SECAGG, {"stage": "ADVERTISE_KEYS", "weight": 1.0}),
    (MsgType.RAG_CONTEXT, {}),
    (MsgType.RAG_CONTEXT, {"key_id": "0123456789abcdef", "rows": 5}),
    (MsgType.RAG_SCORE, {"key_id": "0123456789abcdef"}),
    (MsgType.RAG_SCORE, {"rows": 5}),
    (MsgType.RAG_FETCH, {"rows": [1, 7]}),
    (MsgType.RAG_FETCH, {"docs": [{"row": 1, "doc_id": "x", "title": "", "text": "t"}]}),
    (MsgType.ERROR, {"code": "server", "detail": "ZeroDivisionError: a bug\nmore"}),
    (MsgType.BYE, {}),
]


def refused(mtype: MsgType, obj, text: str) -> str:
    with pytest.raises(WireError) as exc:
        decode(encode(Header(mtype, meta=obj)), max_bytes=MAX)
    assert exc.value.code == ErrorCode.MALFORMED and text in exc.value.detail, exc.value.detail
    return exc.value.detail


def test_every_type_has_a_class_and_round_trips():
    assert set(META) == set(MsgType) == set(SAMPLES)
    for mtype, meta in SAMPLES.items():
        msg = decode(encode(Header(mtype, "s", 1, 2, meta)), max_bytes=MAX)
        assert msg.meta == meta and type(msg.meta) is META[mtype]
        minimal = {f.name: getattr(meta, f.name) for f in dataclasses.fields(meta) if f.default is dataclasses.MISSING}
        assert decode(encode(Header(mtype, meta=type(meta)(**minimal))), max_bytes=MAX).meta == type(meta)(**minimal)


@pytest.mark.parametrize("mtype, obj", HONEST, ids=[f"{t.value}-{i}" for i, (t, _) in enumerate(HONEST)])
def test_what_honest_peers_send_decodes(mtype, obj):
    msg = decode(encode(Header(mtype, meta=obj)), max_bytes=MAX)
    assert msg.header.meta == obj and parse_meta(mtype, meta_json(mtype, msg.meta)) == msg.meta


def test_literals_match_the_sets_they_copy():
    from splitfed.config.parties import ServerMode as ConfigServerMode

    assert get_args(ServerMode) == get_args(ConfigServerMode)
    assert set(get_args(ErrorCodeName)) == {c.value for c in ErrorCode}
    assert get_args(get_type_hints(Welcome)["compression"]) == COMPRESSIONS


def _wrong(value):
    """A value of another JSON kind than `value`."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        return "abc"
    if isinstance(value, str):
        return 5
    return "abc" if isinstance(value, list | dict) else True


@pytest.mark.parametrize("mtype", [t for t in MsgType if dataclasses.fields(META[t])])
def test_each_field_of_the_wrong_type_is_refused_naming_it(mtype):
    full = meta_json(mtype, SAMPLES[mtype])
    for name, value in full.items():
        refused(mtype, {**full, name: _wrong(value)}, f"{mtype.value} meta field {name!r}: expected ")


def test_messages_say_what_was_expected_and_what_came():
    hello = meta_json(MsgType.HELLO, SAMPLES[MsgType.HELLO])
    assert (
        refused(MsgType.HELLO, {**hello, "n_samples": "abc"}, "n_samples")
        == "hello meta field 'n_samples': expected an integer >= 1, got 'abc'"
    )
    refused(MsgType.HELLO, {**hello, "client_id": True}, "field 'client_id': expected an integer >= 0, got True")
    refused(MsgType.HELLO, {**hello, "client_id": -1}, "expected an integer >= 0, got -1")
    refused(MsgType.HELLO, {**hello, "roster": None, "config_keys": {"a": 1}}, "field \"config_keys['a']\"")
    refused(MsgType.FORWARD, {"train": 1}, "forward meta field 'train': expected true or false, got 1")
    refused(MsgType.FORWARD, {"x": 1}, "forward meta: unknown field 'x'; known: ['train', 'base']")
    refused(MsgType.FORWARD, {"x" * 500: 1}, "unknown field 'xxxx")
    missing = {k: v for k, v in hello.items() if k != "client_id"}
    refused(MsgType.HELLO, missing, "hello meta: missing field 'client_id' (an integer >= 0)")
    refused(MsgType.ROUND_RESULT, {"round": 1}, "missing field 'done'")
    refused(MsgType.UPDATE, {"loss": True}, "'loss': expected a number or null, got True")
    refused(MsgType.SECAGG, {"stage": "UNMASK", "weight": 1.5}, "'weight': expected a number in [0.0, 1.0], got 1.5")
    refused(MsgType.SECAGG, {"stage": "unmask"}, "'stage': expected one of ['ADVERTISE_KEYS'")
    refused(MsgType.ERROR, {"code": "nope", "detail": ""}, "'code': expected one of ['malformed'")
    refused(MsgType.WELCOME, {**meta_json(MsgType.WELCOME, SAMPLES[MsgType.WELCOME]), "hidden": 0}, "'hidden'")
    refused(MsgType.RAG_FETCH, {"rows": [1, -2]}, "field 'rows[1]': expected an integer >= 0, got -2")
    doc = {"row": 0, "doc_id": "d", "title": "t", "text": "x"}
    refused(MsgType.RAG_FETCH, {"docs": [{**doc, "row": "0"}]}, "field 'docs[0].row': expected an integer")
    refused(MsgType.RAG_FETCH, {"docs": [doc, {**doc, "x": 1}]}, "field 'docs[1]': unknown field 'x'")
    refused(MsgType.RAG_FETCH, {"docs": [{"row": 0}]}, "missing field 'docs[0].doc_id' (a string)")
    refused(MsgType.RAG_FETCH, {"docs": {"row": 0}}, "'docs': expected a list or null, got {'row': 0}")


def test_long_and_unprintable_strings_are_refused():
    hello = meta_json(MsgType.HELLO, SAMPLES[MsgType.HELLO])
    detail = refused(MsgType.HELLO, {**hello, "model": "m" * 5000}, "at most 256 characters, got 'mmm")
    assert len(detail) < 200  # the peer's string is quoted short
    refused(MsgType.HELLO, {**hello, "config_hash": "a\nb"}, "'config_hash': expected a printable string")
    refused(MsgType.ERROR, {"code": "server", "detail": "d" * 401}, "at most 400 characters")
    refused(MsgType.RAG_SCORE, {"key_id": "k" * 257}, "'key_id'")


def test_floats_accept_integers_and_refuse_bools():
    assert decode(encode(Header(MsgType.UPDATE, meta={"loss": 3})), max_bytes=MAX).meta.loss == 3.0
    assert isinstance(decode(encode(Header(MsgType.SECAGG, meta={"stage": "UNMASK", "weight": 1})), max_bytes=MAX)
                      .meta.weight, float)  # fmt: skip


def test_meta_errors_come_after_frame_errors_and_a_hand_built_message_checks_on_use():
    raw = encode(Header(MsgType.HELLO), {"x": torch.zeros(2)})[0]
    with pytest.raises(WireError, match="lists 1 tensors but 0 frames"):
        decode([raw], max_bytes=MAX)
    msg = Message(Header(MsgType.SECAGG), {})
    with pytest.raises(WireError, match="secagg meta: missing field 'stage'"):
        _ = msg.meta


def test_encode_checks_typed_meta_and_leaves_out_what_is_unset():
    with pytest.raises(ValueError, match="hello carries Hello metadata, got Forward"):
        encode(Header(MsgType.HELLO, meta=Forward()))
    with pytest.raises(ValueError, match="unsendable metadata: .*n_samples"):
        encode(Header(MsgType.HELLO, meta=Hello(0, "h", "m", 0)))
    msg = decode(encode(Header(MsgType.RAG_CONTEXT, meta=RagContext("k", 5))), max_bytes=MAX)
    assert msg.header.meta == {"key_id": "k", "rows": 5}
    assert parse_meta(MsgType.FORWARD, {}) == Forward(train=True, base=False)


def _random_json(rng: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "big", "float", "str", "list", "dict"] if depth < 3 else ["int", "str", "bool"]
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 7, 2**31, 2**63, -(2**70)])
    if kind == "big":
        return 10 ** rng.randint(30, 60)
    if kind == "float":
        return rng.choice([0.0, 0.5, 1.0, 1.5, -2.0, 1e308, 5e-324])
    if kind == "str":
        return rng.choice(["", "ADVERTISE_KEYS", "fp32", "shared", "server", "x" * rng.randint(0, 600), "\x00\n"])
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["row", "doc_id", "title", "text", "k"]): _random_json(rng, depth + 1) for _ in range(3)}


@pytest.mark.parametrize("mtype", list(MsgType))
def test_random_meta_only_ever_raises_wire_errors(mtype):
    rng = random.Random(f"meta-{mtype.value}")
    names = [f.name for f in dataclasses.fields(META[mtype])] + ["zz"]
    full = meta_json(mtype, SAMPLES[mtype])
    decoded = 0
    for _ in range(2000):
        if rng.random() < 0.1:
            obj = _random_json(rng)  # not even an object
        else:
            obj = dict(full) if rng.random() < 0.7 else {}
            for _ in range(rng.randint(0, 3)):
                obj[rng.choice(names)] = _random_json(rng)
        frames = [json.dumps({"v": 1, "type": mtype.value, "round": 0, "step": 0, "meta": obj}).encode()]
        try:
            msg = decode(frames, max_bytes=MAX)
        except WireError:
            continue
        decoded += 1
        assert type(msg.meta) is META[mtype]
    assert decoded > 0
