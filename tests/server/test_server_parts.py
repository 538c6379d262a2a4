"""Server building blocks without a network: FedAvg, checkpoints, the session state machine, the trunk."""

import pytest
import torch

from splitfed.aggregation import FedAvg, weighted_mean
from splitfed.server.checkpoint import ServerCheckpoint, load_checkpoint, save_checkpoint
from splitfed.server.session import Session, Stage
from splitfed.wire import MsgType, WireError


def test_weighted_mean():
    a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([4.0, 8.0])}
    out = FedAvg().aggregate({"c0": (a, 1), "c1": (b, 3)})
    torch.testing.assert_close(out["w"], torch.tensor([3.25, 6.5]))
    with pytest.raises(ValueError, match="nothing to aggregate"):
        weighted_mean({})
    with pytest.raises(ValueError, match="keys differ"):
        weighted_mean({"c0": (a, 1), "c1": ({"v": torch.zeros(2)}, 1)})
    with pytest.raises(ValueError, match="must be positive"):
        weighted_mean({"c0": (a, 0)})


def _ckpt(r):
    return ServerCheckpoint(r, "h", {"shared": {"a": torch.full((2,), float(r))}}, {}, {"bottom/x": torch.ones(1)})


def test_checkpoint_round_trip_and_interrupted_swap(tmp_path):
    d = tmp_path / "checkpoint"
    assert load_checkpoint(d) is None
    save_checkpoint(d, _ckpt(0))
    save_checkpoint(d, _ckpt(1))
    ck = load_checkpoint(d)
    assert ck.round_completed == 1 and torch.equal(ck.trunk["shared"]["a"], torch.ones(2))
    # a crash between the two renames leaves only the previous checkpoint under .old
    d.rename(tmp_path / "checkpoint.old")
    assert load_checkpoint(d).round_completed == 1
    # a half-written temporary directory is never taken
    (tmp_path / "checkpoint.tmp").mkdir()
    assert load_checkpoint(d).round_completed == 1


def test_session_state_machine():
    s = Session("client-0", 0, b"id", "sid", 10)
    s.check(MsgType.FORWARD)
    s.stage = Stage.AWAIT_BACKWARD
    with pytest.raises(WireError, match="forward not allowed in stage await_backward"):
        s.check(MsgType.FORWARD)
    s.check(MsgType.BACKWARD)
    s.stage = Stage.AWAIT_ROUND
    with pytest.raises(WireError, match="update not allowed"):
        s.check(MsgType.UPDATE)


def test_trunk_service_per_client_adapters_are_separate_then_averaged():
    from splitfed_testing import tiny_model

    from splitfed.models import LoraSpec, add_lora, get_adapter_state, split_model
    from splitfed.server.engine import TrunkEngine
    from splitfed.training import OptimConfig

    trunk = split_model(tiny_model("llama"), (1, 3)).trunk
    add_lora(trunk, LoraSpec(r=2), seed=0)
    svc = TrunkEngine(trunk, mode="per_client", clients=["client-0", "client-1"], optim=OptimConfig(lr=0.1))
    mask = torch.ones(2, 5, dtype=torch.long)
    out = svc.forward([("client-0", torch.randn(2, 5, 32), mask)])["client-0"]
    with pytest.raises(RuntimeError, match="busy with client-0"):
        svc.forward([("client-1", torch.randn(2, 5, 32), mask)])["client-1"]
    svc.backward({"client-0": torch.ones_like(out)})
    s0, s1 = svc.states["client-0"], svc.states["client-1"]
    assert any(not torch.equal(s0[k], s1[k]) for k in s0)  # only client-0's adapter moved
    svc.average({"client-0": 1, "client-1": 3})
    for k in s0:
        torch.testing.assert_close(svc.states["client-1"][k], (s0[k] + 3 * s1[k]) / 4)
    assert all(torch.equal(v, svc.states["client-0"][k]) for k, v in get_adapter_state(trunk).items())


def _shared_trunk():
    from splitfed_testing import tiny_model

    from splitfed.models import LoraSpec, add_lora, split_model
    from splitfed.server.engine import TrunkEngine
    from splitfed.training import OptimConfig

    trunk = split_model(tiny_model("llama"), (1, 3)).trunk
    add_lora(trunk, LoraSpec(r=2), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in trunk.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    # a vanishing learning rate keeps the weights equal between the solo and the batched pass
    return trunk, TrunkEngine(trunk, mode="shared", clients=["a", "b"], optim=OptimConfig(lr=1e-12))


def _lora_grads(trunk):
    return {n: p.grad.clone() for n, p in trunk.named_parameters() if "lora_" in n}


def test_cross_client_batch_keeps_per_client_results_exact():
    g = torch.Generator().manual_seed(1)
    act_a, mask_a = torch.randn(2, 5, 32, generator=g), torch.ones(2, 5, dtype=torch.long)
    mask_a[1, :2] = 0  # left padding
    act_b, mask_b = torch.randn(3, 7, 32, generator=g), torch.ones(3, 7, dtype=torch.long)
    mask_b[2, 4:] = 0  # right padding, and a longer sequence than a's
    grad_a = torch.randn(2, 5, 32, generator=g) * mask_a.unsqueeze(-1)
    grad_b = torch.randn(3, 7, 32, generator=g) * mask_b.unsqueeze(-1)

    trunk, svc = _shared_trunk()
    out_a = svc.forward([("a", act_a, mask_a)])["a"]
    gin_a = svc.backward({"a": grad_a})["a"]
    pg_a = _lora_grads(trunk)
    out_b = svc.forward([("b", act_b, mask_b)])["b"]
    gin_b = svc.backward({"b": grad_b})["b"]
    pg_b = _lora_grads(trunk)

    outs = svc.forward([("a", act_a, mask_a), ("b", act_b, mask_b)])
    with pytest.raises(RuntimeError, match="busy"):
        svc.forward([("a", act_a, mask_a)])
    res = svc.backward({"b": grad_b, "a": grad_a})
    keep_a, keep_b = mask_a.bool(), mask_b.bool()
    torch.testing.assert_close(outs["a"][keep_a], out_a[keep_a], atol=1e-5, rtol=0)
    torch.testing.assert_close(outs["b"][keep_b], out_b[keep_b], atol=1e-5, rtol=0)
    torch.testing.assert_close(res["a"], gin_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(res["b"], gin_b, atol=1e-5, rtol=0)
    for n, grad in _lora_grads(trunk).items():  # one step on the sum of the clients' gradients
        torch.testing.assert_close(grad, pg_a[n] + pg_b[n], atol=1e-5, rtol=1e-4)
    assert not svc.busy and not svc.pending


def test_batch_member_leaving_releases_the_others():
    trunk, svc = _shared_trunk()
    mask = torch.ones(2, 4, dtype=torch.long)
    svc.forward([("a", torch.randn(2, 4, 32), mask), ("b", torch.randn(2, 4, 32), mask)])
    res = svc.backward({"a": torch.ones(2, 4, 32), "b": None})  # b left: it contributes zero
    assert set(res) == {"a", "b"} and not svc.busy
    before = {k: v.clone() for k, v in svc.states["shared"].items()}
    svc.forward([("a", torch.randn(2, 4, 32), mask), ("b", torch.randn(2, 4, 32), mask)])
    assert svc.backward({"a": None, "b": None}) == {} and not svc.busy  # nobody left: no step
    assert all(torch.equal(v, before[k]) for k, v in svc.states["shared"].items())


def test_per_client_mode_refuses_batching():
    from splitfed_testing import tiny_model

    from splitfed.models import LoraSpec, add_lora, split_model
    from splitfed.server.engine import TrunkEngine
    from splitfed.training import OptimConfig

    trunk = split_model(tiny_model("llama"), (1, 3)).trunk
    add_lora(trunk, LoraSpec(r=2), seed=0)
    svc = TrunkEngine(trunk, mode="per_client", clients=["a", "b"], optim=OptimConfig())
    with pytest.raises(ValueError, match="needs server.mode = 'shared'"):
        svc.forward([(c, torch.zeros(1, 2, 32), torch.ones(1, 2, dtype=torch.long)) for c in ("a", "b")])


def test_base_forward_is_the_public_trunk_whatever_was_trained():
    """The "before" evaluation (base = True) runs the trunk with its adapter off: the same
    output before and after other clients' steps, equal to the trunk without any LoRA."""
    from splitfed_testing import tiny_model

    from splitfed.models import LoraSpec, add_lora, split_model
    from splitfed.server.engine import TrunkEngine
    from splitfed.training import OptimConfig

    public = split_model(tiny_model("llama"), (1, 3)).trunk
    trunk = split_model(tiny_model("llama"), (1, 3)).trunk
    add_lora(trunk, LoraSpec(r=2), seed=0)
    svc = TrunkEngine(trunk, mode="shared", clients=["a", "b"], optim=OptimConfig(lr=0.5))
    act, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        want = public(act, mask)
    before = svc.infer("b", act, mask, base=True)
    out = svc.forward([("a", torch.randn(2, 5, 32), mask)])["a"]  # another client trains first
    svc.backward({"a": torch.ones_like(out)})
    assert not torch.allclose(svc.infer("b", act, mask), want)  # the adapter moved
    after = svc.infer("b", act, mask, base=True)
    torch.testing.assert_close(before, want, rtol=0, atol=0)
    torch.testing.assert_close(after, want, rtol=0, atol=0)
    assert all(p.requires_grad for n, p in trunk.named_parameters() if "lora_" in n)  # still trainable


def test_metrics_mirrored_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from splitfed.metrics import MetricsWriter, read_metrics

    m = MetricsWriter(tmp_path / "m.jsonl", tensorboard=tmp_path / "tb")
    for step, loss in enumerate([3.0, 2.5]):
        m.write("step", round=0, step=step, loss=loss, note="text is skipped")
    m.write("privacy", round=0, epsilon={"server": 1.5, "aggregator": float("inf")})
    m.close()
    assert [r["loss"] for r in read_metrics(tmp_path / "m.jsonl") if r["event"] == "step"] == [3.0, 2.5]
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("step/loss")] == [(0, 3.0), (1, 2.5)]
    assert [e.value for e in acc.Scalars("privacy/epsilon/server")] == [1.5]
    assert "privacy/epsilon/aggregator" not in acc.Tags()["scalars"]  # infinity is not plotted
