"""Byte encoding of the secure-aggregation messages and round configuration; graph and config checks."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import sign
from crypto.secagg import ProtocolError, RoundConfig, SecAggClient, SecAggServer, decode, encode
from crypto.secagg.config import default_neighbours
from crypto.secagg.graph import harary_graph
from crypto.secagg.messages import MaskedInput, UnmaskRequest, UnmaskResponse


def _one_round_of_messages():
    config = RoundConfig.create(range(4), threshold=3, vector_length=8)
    ids = [sign.generate_signing_key_pair() for _ in range(4)]
    keys = {i: k.public for i, k in enumerate(ids)}
    clients = [
        SecAggClient(config, i, signing_key=ids[i].private, identity_keys=keys, vector=np.full(8, i, np.uint32))
        for i in range(4)
    ]
    server = SecAggServer(config, identity_keys=keys)
    seen = [config]
    out = [c.advertise() for c in clients]
    for _ in range(3):
        seen += out
        for m in out:
            server.receive(m)
        replies = server.finish_stage()
        seen += list(replies.values())
        out = [clients[i].handle(m) for i, m in replies.items()]
    seen += out
    return seen


def _same(a, b) -> bool:
    if isinstance(a, MaskedInput):
        return a.round_id == b.round_id and a.sender == b.sender and np.array_equal(a.vector, b.vector)
    return a == b


def test_every_message_round_trips():
    messages = _one_round_of_messages()
    assert {type(m).__name__ for m in messages} >= {
        "RoundConfig",
        "AdvertiseKeys",
        "KeyDirectory",
        "ShareKeys",
        "ShareInbox",
        "MaskedInput",
        "UnmaskRequest",
        "UnmaskResponse",
    }
    for m in messages:
        data = encode(m)
        back = decode(data)
        assert type(back) is type(m) and _same(back, m) and encode(back) == data


def test_masked_input_travels_as_uint32_words():
    m = MaskedInput(bytes(16), 3, np.arange(1000, dtype=np.uint32))
    assert len(encode(m)) == 4 * 1000 + 30  # header (magic, tag, round id) + sender + word size + length
    assert decode(encode(dataclasses.replace(m, vector=np.arange(5, dtype=np.uint64)))).vector.dtype == np.uint64


def test_malformed_bytes_raise_protocol_errors():
    data = encode(UnmaskRequest(bytes(16), 1, (1, 2), (3,)))
    with pytest.raises(ProtocolError, match="expected magic"):
        decode(b"XXXX" + data[4:])
    with pytest.raises(ProtocolError, match="unknown type tag 99"):
        decode(data[:4] + b"\x63" + data[5:])
    with pytest.raises(ProtocolError, match="UnmaskRequest: 'dropped' claims 1 items of 4 bytes, only 3 left"):
        decode(data[:-1])
    with pytest.raises(ProtocolError, match="UnmaskRequest: 2 unexpected trailing bytes"):
        decode(data + b"\0\0")
    with pytest.raises(ProtocolError, match="claims 4294967295 items"):
        decode(data[:25] + b"\xff\xff\xff\xff")
    response = encode(UnmaskResponse(bytes(16), 1, (), ()))
    with pytest.raises(ProtocolError, match="expected bytes"):
        decode("text")
    assert decode(response) == UnmaskResponse(bytes(16), 1, (), ())
    bad_config = bytearray(encode(RoundConfig.create(range(4), threshold=3, vector_length=8)))
    bad_config[-32 - 16 + 3] = 1  # low byte of the threshold field: 3 -> 1
    with pytest.raises(ProtocolError, match="RoundConfig: threshold must be a strict majority"):
        decode(bytes(bad_config))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 8))
def test_decoding_garbage_raises_only_protocol_error(tail, tag):
    data = b"SAG\x01" + bytes([tag]) + tail
    with contextlib.suppress(ProtocolError):
        decode(data)


def test_graph_is_regular_symmetric_and_deterministic():
    ids = list(range(40))
    g = harary_graph(ids, degree=10, seed=bytes(32))
    assert g == harary_graph(ids, degree=10, seed=bytes(32))
    assert g != harary_graph(ids, degree=10, seed=b"\x01" * 32)
    assert all(len(v) == 10 and u not in v for u, v in g.items())
    assert all(u in g[v] for u, vs in g.items() for v in vs)
    assert harary_graph(ids, degree=39, seed=bytes(32))[0] == frozenset(range(1, 40))
    with pytest.raises(ValueError, match="degree must be n - 1 = 39 or an even number in \\[2, 38\\], received 9"):
        harary_graph(ids, degree=9, seed=bytes(32))


def test_default_neighbours_is_dense_for_small_and_logarithmic_for_large_cohorts():
    assert default_neighbours(20, 11) == 19
    k = default_neighbours(1000, 501, dropout=0.1)
    assert 20 <= k <= 60
    assert default_neighbours(100, 51, dropout=0.3) == 99  # heavy dropout needs big neighbourhoods
    with pytest.raises(ValueError, match="need 0 <= dropout < 1"):
        default_neighbours(100, 51, dropout=1.0)


def test_round_config_validation():
    with pytest.raises(ValueError, match="neighbours must be n - 1 = 9 or an even number in \\[2, 8\\], received 5"):
        RoundConfig.create(range(10), threshold=6, vector_length=3, neighbours=5)
    with pytest.raises(ValueError, match="need between 2 and 65535 clients, received 1"):
        RoundConfig.create([0], threshold=1, vector_length=3)
    with pytest.raises(ValueError, match="vector_length must be in \\[1, 2\\*\\*32\\), received 0"):
        RoundConfig.create(range(3), threshold=2, vector_length=0)
    config = RoundConfig.create(range(100), threshold=60, vector_length=3, neighbours=20)
    assert config.share_threshold == 13  # ceil(60 * 21 / 100) = 13 > majority of 21 = 11
