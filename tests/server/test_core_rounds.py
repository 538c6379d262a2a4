"""ServerCore in memory: rounds (FedAvg by sample count, checkpoints, the deadline, late
updates), the last round's export and the end of the run."""

from __future__ import annotations

import pytest
import torch
from core_harness import messages, only_message, records, sent

from splitfed.server.events import Export, SaveCheckpoint
from splitfed.server.session import Stage
from splitfed.wire import MsgType

A, B = b"ident-a", b"ident-b"


def _random_state(h, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in h.layout.shapes.items()}


def _of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def _train_one_step(h, ident, now):
    """One real trunk step, so the trunk adapter is no longer its initial value."""
    mask = torch.ones(1, 3, dtype=torch.long)
    h.forward(ident, torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(7)), mask, now=now, step=1)
    only_message(h.backward(ident, torch.ones(1, 3, 32), now=now + 0.1, step=1), ident, MsgType.GRADIENT)


def test_a_round_closes_with_the_weighted_mean_and_a_checkpoint(make_core):
    h = make_core()
    h.hello(A, 0, n_samples=10)
    h.hello(B, 1, n_samples=30)
    _train_one_step(h, A, now=0.5)
    sa, sb = _random_state(h, 1), _random_state(h, 2)
    actions = h.update(A, sa, now=1.0, loss=0.5)
    assert messages(actions) == [] and h.session(A).stage == Stage.AWAIT_ROUND
    assert [r.fields for r in records(actions, "update")] == [{"client": "client-0", "round": 0, "loss": 0.5}]
    assert h.tick(1.1) == []  # client-1 is still expected
    h.update(B, sb, now=2.0, loss=0.25)
    actions = h.tick(2.1)
    want = {k: (10 * sa[k] + 30 * sb[k]) / 40 for k in sa}

    [save] = _of(actions, SaveCheckpoint)
    ck = save.checkpoint
    assert (ck.round_completed, ck.config_hash) == (0, h.cfg.hash())
    assert set(ck.trunk) == {"shared"} and ck.trunk["shared"].keys() == h.engine.states["shared"].keys()
    assert all(torch.equal(v, h.engine.states["shared"][k]) for k, v in ck.trunk["shared"].items())
    assert set(ck.optimizers) == {"shared"} and ck.optimizers["shared"]["state"]  # AdamW moments after a step
    assert ck.clients.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(ck.clients[k], want[k])
    [rnd] = records(actions, "round")
    assert rnd.fields == {
        "round": 0,
        "participants": ["client-0", "client-1"],
        "missing": [],
        "losses": {"client-0": 0.5, "client-1": 0.25},
        "aggregated": True,
    }
    assert _of(actions, Export) == []
    assert sorted(sent(actions)) == [(A, MsgType.ROUND_RESULT), (B, MsgType.ROUND_RESULT)]
    for ident in (A, B):
        res = only_message(actions, ident, MsgType.ROUND_RESULT)
        assert res.header.meta == {"round": 1, "done": False} and res.header.round == 1
        assert res.tensors.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(res.tensors[k], want[k])
        assert h.session(ident).stage == Stage.READY
    assert h.core.round == 1 and h.core.rounds.updates == {} and not h.core.done
    # a client joining now starts from the aggregate
    w = only_message(h.hello(b"ident-a2", 0, now=3.0), b"ident-a2", MsgType.WELCOME)
    assert w.header.meta["round"] == 1
    for k in want:
        torch.testing.assert_close(w.tensors[k], want[k])


def test_the_deadline_closes_a_round_without_a_missing_client_and_late_updates_are_answered(make_core):
    h = make_core(transport__timeout_s=100.0)  # round_deadline_s 30
    h.hello(A, 0, n_samples=10)
    h.hello(B, 1, n_samples=30)
    sa = _random_state(h, 1)
    h.update(A, sa, now=5.0)
    only_message(h.send(B, MsgType.HEARTBEAT, now=25.0), B, MsgType.HEARTBEAT)
    assert h.tick(29.9) == []  # client-1 is connected: waited for until the deadline
    actions = h.tick(30.5)
    [rnd] = records(actions, "round")
    assert rnd.fields["participants"] == ["client-0"] and rnd.fields["missing"] == ["client-1"]
    assert [ck.checkpoint.round_completed for ck in _of(actions, SaveCheckpoint)] == [0]
    assert sent(actions) == [(A, MsgType.ROUND_RESULT)]
    res = only_message(actions, A, MsgType.ROUND_RESULT)
    assert res.header.meta == {"round": 1, "done": False}
    assert all(torch.equal(res.tensors[k], sa[k]) for k in sa)  # the mean of one update is that update
    assert h.core.round == 1 and h.session(B).stage == Stage.READY

    # client-1's update for round 0 comes late: skipped, answered with the current result
    actions = h.update(B, _random_state(h, 2), now=31.0, rnd=0)
    res = only_message(actions, B, MsgType.ROUND_RESULT)
    assert res.header.meta == {"round": 1, "done": False}
    assert all(torch.equal(res.tensors[k], sa[k]) for k in sa)
    assert records(actions, "update") == [] and h.core.rounds.updates == {}
    assert h.session(B).stage == Stage.READY
    assert records(h.tick(31.1), "round") == []


def test_a_round_without_any_update_waits_past_its_deadline(make_core):
    h = make_core(transport__timeout_s=100.0)
    h.hello(A, 0)
    assert h.tick(31.0) == []  # the deadline renews
    assert h.core.rounds.started == 31.0 and h.core.round == 0
    h.update(A, _random_state(h, 1), now=40.0)
    h.hello(B, 1, now=40.0)  # client-1 joined: the round waits for it again
    assert records(h.tick(41.0), "round") == []
    assert [r.fields["missing"] for r in records(h.tick(61.5), "round")] == [["client-1"]]


@pytest.mark.parametrize("share", [True, False])
def test_the_last_round_exports_and_the_run_finishes_once_everyone_left(make_core, share):
    h = make_core(training__rounds=1, server__share_trunk_adapter=share)
    h.hello(A, 0, n_samples=10)
    h.hello(B, 1, n_samples=30)
    _train_one_step(h, A, now=0.5)
    sa, sb = _random_state(h, 1), _random_state(h, 2)
    h.update(A, sa, now=1.0)
    h.update(B, sb, now=1.5)
    actions = h.tick(2.0)
    want = {k: (10 * sa[k] + 30 * sb[k]) / 40 for k in sa}
    kinds = [type(a).__name__ for a in actions if type(a).__name__ != "Record"]
    assert kinds == ["SaveCheckpoint", "Export", "Send", "Send"]  # checkpoint, export, then the results
    [export] = _of(actions, Export)
    trunk = h.engine.final_state()
    assert export.trunk_state.keys() == trunk.keys() and all(
        torch.equal(export.trunk_state[k], trunk[k]) for k in trunk
    )
    initial = h.fresh_engine().final_state()
    assert any(not torch.equal(trunk[k], initial[k]) for k in trunk)  # the exported adapter is the trained one
    for k in want:
        torch.testing.assert_close(export.client_state[k], want[k])
    assert h.core.done and h.core.round == 1
    for ident in (A, B):
        res = only_message(actions, ident, MsgType.ROUND_RESULT)
        assert res.header.meta == {"round": 1, "done": True}
        trunk_keys = {k for k in res.tensors if k.startswith("trunk/")}
        if share:
            assert trunk_keys == {f"trunk/{k}" for k in trunk}
            assert all(torch.equal(res.tensors[f"trunk/{k}"], v) for k, v in trunk.items())
        else:
            assert trunk_keys == set()
        assert set(res.tensors) - trunk_keys == set(want)

    # an update after the end is answered with the final result, nothing more
    late = h.update(A, sa, now=2.1, rnd=0)
    assert only_message(late, A, MsgType.ROUND_RESULT).header.meta == {"round": 1, "done": True}
    assert _of(late, SaveCheckpoint) == [] and _of(late, Export) == []
    assert _of(h.tick(2.2), Export) == []  # exported once
    assert h.core.finished is False
    h.bye(A, now=2.5)
    h.tick(4.0)
    assert h.core.finished is False  # client-1 has not left
    h.bye(B, now=4.5)
    assert h.core.finished is True  # 2.5 s after the last round, past the 1 s linger
    assert {s.stage for s in h.core.sessions.values()} == {Stage.DONE}


def test_the_run_lingers_after_the_last_bye(make_core):
    h = make_core(clients=1, training__rounds=1)
    h.hello(A, 0)
    h.update(A, _random_state(h, 1), now=1.0)
    h.tick(2.0)
    assert h.core.done
    h.bye(A, now=2.5)
    assert h.core.finished is False
    h.tick(3.0)
    assert h.core.finished is False  # 1 s after the round: not past the linger yet
    h.tick(3.01)
    assert h.core.finished is True
