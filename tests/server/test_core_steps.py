"""ServerCore in memory: trunk steps (FORWARD/BACKWARD), evaluation forwards, cross-client
batches and the non-finite guard, checked against a fresh engine on the same weights."""

from __future__ import annotations

import torch
from core_harness import messages, only_message, only_reject, records, rejects, sent, tensor_of

from splitfed.models import set_adapter_state
from splitfed.server.events import Progress
from splitfed.server.session import Stage
from splitfed.wire import ErrorCode, MsgType

A, B, C = b"ident-a", b"ident-b", b"ident-c"


def _rand(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _states(engine):
    return {k: {n: v.clone() for n, v in s.items()} for k, s in engine.states.items()}


def _equal_states(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k][n], b[k][n]) for k in a for n in a[k])


def _trained_weights(h):
    """Every LoRA B is nonzero, the same in the core's engine and a fresh one: the adapter matters."""
    ref = h.fresh_engine()
    for eng in (h.engine, ref):
        state = {k: (torch.full_like(v, 0.05) if "lora_B" in k else v) for k, v in eng.states["shared"].items()}
        eng.states["shared"] = state
        set_adapter_state(eng.trunk, state)
    return ref


def test_training_step_matches_the_engine_and_reports_progress(make_core):
    h = make_core()
    ref = _trained_weights(h)
    h.hello(A, 0)
    act, mask = _rand(2, 5, 32, seed=1), torch.ones(2, 5, dtype=torch.long)
    mask[1, :2] = 0
    actions = h.forward(A, act, mask, now=1.0, step=6)
    out = only_message(actions, A, MsgType.ACTIVATIONS)
    assert (out.header.session, out.header.round, out.header.step) == (h.sessions[A], 0, 6)
    want = ref.forward([("client-0", act, mask)])["client-0"]
    torch.testing.assert_close(tensor_of(out, "act"), want, rtol=0, atol=0)
    [fwd] = records(actions, "forward")
    assert {k: v for k, v in fwd.fields.items() if k != "compute_s"} == {
        "client": "client-0",
        "round": 0,
        "step": 6,
        "train": True,
    }
    assert h.session(A).stage == Stage.AWAIT_BACKWARD and h.engine.busy
    before = _states(h.engine)

    grad = _rand(2, 5, 32, seed=2)
    bad = [
        (h.backward(A, grad, now=1.1, step=5), ErrorCode.OUT_OF_ORDER, "backward for step 5, pending 6"),
        (
            h.backward(A, grad[:, :4], now=1.2, step=6),
            ErrorCode.BAD_TENSOR,
            "grad: expected shape [2, 5, 32], got [2, 4, 32]",
        ),
        (
            h.backward(A, grad * 0 + 2e5, now=1.3, step=6),
            ErrorCode.BAD_TENSOR,
            "grad: |value| up to 2e+05 exceeds server.max_abs_value 100000",
        ),
    ]
    for actions, code, detail in bad:
        err = only_reject(actions, A)
        assert (err.code, err.detail) == (code, detail)
    assert h.session(A).stage == Stage.AWAIT_BACKWARD and h.engine.busy
    assert h.core.steps.pending.grads == {}
    assert _equal_states(before, _states(h.engine))

    actions = h.backward(A, grad, now=1.5, step=6)
    g = only_message(actions, A, MsgType.GRADIENT)
    assert (g.header.round, g.header.step) == (0, 6)
    torch.testing.assert_close(tensor_of(g, "grad"), ref.backward({"client-0": grad})["client-0"], rtol=0, atol=0)
    assert [a for a in actions if isinstance(a, Progress)] == [Progress(0, 1)]
    assert [r.fields["client"] for r in records(actions, "backward")] == ["client-0"]
    assert h.session(A).stage == Stage.READY and not h.engine.busy and h.core.steps.pending is None
    assert _equal_states(_states(ref), _states(h.engine))  # the same optimizer step
    assert not _equal_states(before, _states(h.engine))


def test_a_second_clients_forward_waits_for_the_pending_step(make_core):
    h = make_core()
    ref = h.fresh_engine()
    h.hello(A, 0)
    h.hello(B, 1)
    act_a, act_b, mask = _rand(1, 4, 32, seed=1), _rand(1, 4, 32, seed=2), torch.ones(1, 4, dtype=torch.long)
    grad_a = _rand(1, 4, 32, seed=3)
    h.forward(A, act_a, mask, now=1.0, step=1)
    assert h.forward(B, act_b, mask, now=1.1, step=1) == []  # queued: the trunk is held by client-0
    assert h.session(B).stage == Stage.READY and len(h.core.steps.queue) == 1
    actions = h.backward(A, grad_a, now=1.2, step=1)
    assert sent(actions) == [(A, MsgType.GRADIENT), (B, MsgType.ACTIVATIONS)]
    # client-1 ran on the weights after client-0's step
    ref.forward([("client-0", act_a, mask)])
    ref.backward({"client-0": grad_a})
    want = ref.forward([("client-1", act_b, mask)])["client-1"]
    torch.testing.assert_close(tensor_of(messages(actions, B)[0], "act"), want, rtol=0, atol=0)
    assert h.session(B).stage == Stage.AWAIT_BACKWARD and set(h.core.steps.pending.members) == {"client-1"}


def test_evaluation_forwards_never_hold_the_trunk(make_core):
    h = make_core()
    ref = _trained_weights(h)
    h.hello(A, 0)
    h.hello(B, 1)
    act, mask = _rand(2, 4, 32, seed=5), torch.ones(2, 4, dtype=torch.long)
    adapted = only_message(h.forward(A, act, mask, now=1.0, step=1, train=False), A, MsgType.ACTIVATIONS)
    assert h.session(A).stage == Stage.READY and not h.engine.busy and h.core.steps.pending is None
    base = only_message(h.forward(A, act, mask, now=1.1, step=2, train=False, base=True), A, MsgType.ACTIVATIONS)
    assert h.session(A).stage == Stage.READY and not h.engine.busy
    torch.testing.assert_close(tensor_of(adapted, "act"), ref.infer("client-0", act, mask), rtol=0, atol=0)
    torch.testing.assert_close(tensor_of(base, "act"), ref.infer("client-0", act, mask, base=True), rtol=0, atol=0)
    assert not torch.allclose(tensor_of(adapted, "act"), tensor_of(base, "act"))  # the adapter is on vs off
    # client-1 trains right away; client-0's evaluation waits for that step, then runs without holding
    only_message(h.forward(B, act, mask, now=2.0, step=1), B, MsgType.ACTIVATIONS)
    assert h.forward(A, act, mask, now=2.1, step=3, train=False) == []
    actions = h.backward(B, torch.zeros(2, 4, 32), now=2.2, step=1)
    assert only_message(actions, A, MsgType.ACTIVATIONS).header.step == 3
    assert h.core.steps.pending is None and not h.engine.busy and h.session(A).stage == Stage.READY
    [fwd] = records(actions, "forward")
    assert fwd.fields["train"] is False and fwd.fields["client"] == "client-0"


def test_base_forward_must_not_train(make_core):
    h = make_core()
    h.hello(A, 0)
    act, mask = _rand(1, 4, 32, seed=5), torch.ones(1, 4, dtype=torch.long)
    for meta, detail in (
        ({"base": True}, "forward: a base-model forward (base = true) needs train = false"),
        ({"base": True, "train": True}, "forward: a base-model forward (base = true) needs train = false"),
        ({"train": 1}, "forward meta field 'train': expected true or false, got 1"),
        ({"train": False, "base": "yes"}, "forward meta field 'base': expected true or false, got 'yes'"),
    ):
        err = only_reject(h.forward(A, act, mask, now=1.0, **meta), A)
        assert (err.code, err.detail) == (ErrorCode.MALFORMED, detail)
    assert h.session(A).stage == Stage.READY and h.core.steps.pending is None and not h.engine.busy


def _batched_core(make_core):
    """Three clients, batching on: client-2 holds the trunk while client-0 and client-1 queue."""
    h = make_core(data__clients=3, server__batch_clients=True)
    for ident, cid in ((A, 0), (B, 1), (C, 2)):
        h.hello(ident, cid)
    mask = torch.ones(1, 3, dtype=torch.long)
    h.forward(C, _rand(1, 3, 32, seed=9), mask, now=1.0, step=1)
    return h


def test_queued_training_forwards_run_as_one_batch_with_each_clients_own_result(make_core):
    h = _batched_core(make_core)
    ref_a, ref_b, ref_c = h.fresh_engine(), h.fresh_engine(), h.fresh_engine()
    act_a, mask_a = _rand(2, 5, 32, seed=1), torch.ones(2, 5, dtype=torch.long)
    mask_a[1, :2] = 0
    act_b, mask_b = _rand(3, 7, 32, seed=2), torch.ones(3, 7, dtype=torch.long)
    mask_b[2, 4:] = 0
    grad_a, grad_b = _rand(2, 5, 32, seed=3), _rand(3, 7, 32, seed=4)
    assert h.forward(A, act_a, mask_a, now=1.1, step=3) == []
    assert h.forward(B, act_b, mask_b, now=1.2, step=4) == []
    # client-2's step done with a zero gradient: the weights stay the initial ones
    actions = h.backward(C, torch.zeros(1, 3, 32), now=1.3, step=1)
    assert [m.type for m in messages(actions, C)] == [MsgType.GRADIENT]
    out_a, out_b = only_message(actions, A, MsgType.ACTIVATIONS), only_message(actions, B, MsgType.ACTIVATIONS)
    assert (out_a.header.step, out_b.header.step) == (3, 4)
    [fwd] = records(actions, "forward")
    assert fwd.fields["clients"] == ["client-0", "client-1"] and fwd.fields["batched"] == 2
    assert set(h.core.steps.pending.members) == {"client-0", "client-1"}
    ref_c.forward([("client-2", _rand(1, 3, 32, seed=9), torch.ones(1, 3, dtype=torch.long))])
    ref_c.backward({"client-2": torch.zeros(1, 3, 32)})
    solo_a, solo_b = ref_a.forward([("client-0", act_a, mask_a)]), ref_b.forward([("client-1", act_b, mask_b)])
    keep_a, keep_b = mask_a.bool(), mask_b.bool()
    torch.testing.assert_close(tensor_of(out_a, "act")[keep_a], solo_a["client-0"][keep_a], atol=1e-5, rtol=0)
    torch.testing.assert_close(tensor_of(out_b, "act")[keep_b], solo_b["client-1"][keep_b], atol=1e-5, rtol=0)

    assert messages(h.backward(A, grad_a * mask_a.unsqueeze(-1), now=1.4, step=3)) == []  # waits for client-1
    err = only_reject(h.backward(A, grad_a, now=1.45, step=3), A)
    assert (err.code, err.detail) == (ErrorCode.OUT_OF_ORDER, "client-0: backward for step 3 sent twice")
    actions = h.backward(B, grad_b * mask_b.unsqueeze(-1), now=1.5, step=4)
    g_a, g_b = only_message(actions, A, MsgType.GRADIENT), only_message(actions, B, MsgType.GRADIENT)
    want_a = ref_a.backward({"client-0": grad_a * mask_a.unsqueeze(-1)})["client-0"]
    want_b = ref_b.backward({"client-1": grad_b * mask_b.unsqueeze(-1)})["client-1"]
    torch.testing.assert_close(tensor_of(g_a, "grad"), want_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(tensor_of(g_b, "grad"), want_b, atol=1e-5, rtol=0)
    assert [a for a in actions if isinstance(a, Progress)] == [Progress(0, 2)]
    assert records(actions, "backward")[0].fields["clients"] == ["client-0", "client-1"]
    assert h.core.steps.pending is None and not h.engine.busy


def test_a_batch_member_leaving_does_not_block_the_other(make_core):
    h = _batched_core(make_core)
    mask = torch.ones(1, 3, dtype=torch.long)
    h.forward(A, _rand(1, 3, 32, seed=1), mask, now=1.1, step=3)
    h.forward(B, _rand(1, 3, 32, seed=2), mask, now=1.2, step=4)
    h.backward(C, torch.zeros(1, 3, 32), now=1.3, step=1)
    assert set(h.core.steps.pending.members) == {"client-0", "client-1"}
    actions = h.bye(B, now=1.4)
    assert messages(actions) == [] and [r.fields["client"] for r in records(actions, "bye")] == ["client-1"]
    assert h.core.steps.pending is not None  # client-0's gradient still to come
    before = _states(h.engine)
    actions = h.backward(A, _rand(1, 3, 32, seed=5), now=1.5, step=3)
    g = only_message(actions, A, MsgType.GRADIENT)
    assert g.header.step == 3 and tensor_of(g, "grad").shape == (1, 3, 32)
    assert messages(actions, B) == [] and rejects(actions) == []
    assert [a for a in actions if isinstance(a, Progress)] == [Progress(0, 1)]
    assert not _equal_states(before, _states(h.engine))  # client-0's part was applied
    assert h.core.steps.pending is None and h.session(A).stage == Stage.READY


def test_a_non_finite_step_is_refused_and_the_trunk_freed(make_core):
    h = make_core(server__max_abs_value=1e39)
    h.hello(A, 0)
    h.hello(B, 1)
    mask = torch.ones(1, 4, dtype=torch.long)
    weights = {k: v.detach().clone() for k, v in h.engine.trunk.state_dict().items()}
    states = _states(h.engine)
    huge = torch.full((1, 4, 32), 3e38)  # finite, but its square is not
    only_message(h.forward(A, huge, mask, now=1.0, step=1), A, MsgType.ACTIVATIONS)
    assert h.forward(B, _rand(1, 4, 32, seed=1), mask, now=1.1, step=2) == []
    actions = h.backward(A, torch.ones(1, 4, 32), now=1.2, step=1)
    [rej] = rejects(actions)
    assert rej.identity == A and rej.step == 1
    assert rej.error.code == ErrorCode.BAD_TENSOR
    assert "gradients contain NaN or Inf; the step was skipped" in rej.error.detail
    assert messages(actions, A) == []
    # the trunk went on to client-1 (before the reject was recorded)
    assert only_message(actions, B, MsgType.ACTIVATIONS).header.step == 2
    assert h.session(A).stage == Stage.READY and set(h.core.steps.pending.members) == {"client-1"}
    after = h.engine.trunk.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert _equal_states(states, _states(h.engine))
