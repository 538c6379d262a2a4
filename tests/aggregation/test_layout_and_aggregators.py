"""Adapter layout (the one key order both sides flatten in), FedAvg as an Aggregator, SecAgg+ stage checks."""

from typing import get_args

import numpy as np
import pytest
import torch

from splitfed.aggregation import AdapterLayout, ClientUpdate, FedAvg
from splitfed.aggregation.secure import wire_stage
from splitfed.wire import Header, Message, MsgType, WireError, decode, encode
from splitfed.wire.meta import StageName


def _state(order):
    gen = torch.Generator().manual_seed(0)
    full = {"top/b": torch.randn(2, 3, generator=gen), "bottom/a": torch.randn(4, generator=gen)}
    return {k: full[k] for k in order}


def test_layout_order_does_not_depend_on_insertion_order():
    a, b = _state(["top/b", "bottom/a"]), _state(["bottom/a", "top/b"])
    la, lb = AdapterLayout.of(a), AdapterLayout.of(b)
    assert la.keys == lb.keys == ["bottom/a", "top/b"] and la.size == 10
    np.testing.assert_array_equal(la.flatten(a), lb.flatten(b))
    back = la.unflatten(la.flatten(a))
    assert all(torch.equal(back[k], a[k]) for k in a)
    with pytest.raises(ValueError, match="vector has 9 values, the adapter needs 10"):
        la.unflatten(np.zeros(9))


def test_layout_check_names_what_was_expected():
    layout = AdapterLayout.of(_state(["bottom/a", "top/b"]))
    layout.check(_state(["top/b", "bottom/a"]))
    with pytest.raises(WireError, match=r"missing \['top/b'\], unexpected \['top/x'\]"):
        layout.check({"bottom/a": torch.zeros(4), "top/x": torch.zeros(1)})
    with pytest.raises(WireError, match=r"adapter update top/b: expected float32\[2, 3\], got torch.float64\[2, 3\]"):
        layout.check({"bottom/a": torch.zeros(4), "top/b": torch.zeros(2, 3, dtype=torch.float64)})


def test_fedavg_as_an_aggregator_is_the_weighted_mean():
    layout = AdapterLayout({"w": (2,)})
    agg = FedAvg(layout)
    a = agg.accept(Message(Header(MsgType.UPDATE), {"w": torch.tensor([1.0, 2.0])}))
    b = agg.accept(Message(Header(MsgType.UPDATE), {"w": torch.tensor([4.0, 8.0])}))
    with pytest.raises(WireError, match="adapter update"):
        agg.accept(Message(Header(MsgType.UPDATE), {"w": torch.zeros(3)}))
    assert agg.poll(set()) is None  # nothing started
    agg.start(0, {"c0": ClientUpdate(0, 1, a), "c1": ClientUpdate(1, 3, b)}, send=lambda *a: None)
    out = agg.poll(set())
    torch.testing.assert_close(out.state["w"], torch.tensor([3.25, 6.5]))
    assert out.dropped == () and agg.poll(set()) is None
    with pytest.raises(WireError, match="no secure aggregation in progress"):
        agg.receive("c0", Message(Header(MsgType.SECAGG), {}))


def test_secagg_stage_travels_as_an_enum_name():
    from crypto.secagg import Stage

    assert wire_stage("MASKED_INPUT") is Stage.MASKED_INPUT
    for bad in (None, "masked_input", 3, ["UNMASK"]):
        with pytest.raises(WireError, match="secagg 'stage': expected one of"):
            wire_stage(bad)
    assert set(get_args(StageName)) == set(Stage.__members__)  # the codec checks the same names
    for bad in ({}, {"stage": "masked_input"}, {"stage": 3}, {"stage": ["UNMASK"]}):
        with pytest.raises(WireError, match="secagg meta"):
            decode(encode(Header(MsgType.SECAGG, meta=bad)), max_bytes=1 << 20)
