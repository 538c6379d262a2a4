"""ServerCore in memory: HELLO, the per-session stage machine, departures (reconnect, ban, silence)."""

from __future__ import annotations

import torch
import zmq
from core_harness import messages, only_message, only_reject, records, rejects

from splitfed.server.session import Stage
from splitfed.transport.keys import key_fingerprint
from splitfed.wire import ErrorCode, MsgType

A, B = b"ident-a", b"ident-b"
MASK = torch.ones(2, 3, dtype=torch.long)


def _act(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(seed))


def _snapshot(h):
    """What a rejected message must leave as it was."""
    core = h.core
    return (
        {i: (s.name, s.session_id, s.stage, s.n_samples) for i, s in core.sessions.items()},
        None if core.steps.pending is None else (dict(core.steps.pending.members), dict(core.steps.pending.grads)),
        [f.sess.name for f in core.steps.queue],
        dict(core.rounds.updates),
        core.round,
        {k: {n: v.clone() for n, v in s.items()} for k, s in h.engine.states.items()},
    )


def _same(a, b) -> bool:
    *head_a, states_a = a
    *head_b, states_b = b
    same_states = all(torch.equal(states_a[k][n], states_b[k][n]) for k in states_a for n in states_a[k])
    return head_a == head_b and same_states


# ------------------------------------------------------------------ hello
def test_welcome_says_round_rounds_done_hidden_compression_mode(make_core):
    h = make_core(transport__compression="fp16", server__mode="per_client")
    actions = h.hello(A, 1, now=2.0, n_samples=7)
    w = only_message(actions, A, MsgType.WELCOME)
    assert w.header.meta == {
        "round": 0,
        "rounds": 2,
        "done": False,
        "hidden": 32,
        "compression": "fp16",
        "mode": "per_client",
    }
    assert w.tensors == {}  # no aggregate yet
    assert len(w.header.session) == 16 and w.header.session == h.session(A).session_id
    sess = h.session(A)
    assert (sess.name, sess.client_id, sess.n_samples, sess.stage, sess.last_seen) == ("client-1", 1, 7, Stage.READY, 2)
    assert [r.fields for r in records(actions, "hello")] == [{"client": "client-1", "round": 0}]


def test_welcome_carries_the_client_aggregate_of_a_resumed_run(make_core):
    state = {"bottom/x": torch.arange(6.0).reshape(2, 3), "top/y": torch.tensor([-1.5])}
    h = make_core(core_kwargs={"start_round": 1, "client_state": state})
    w = only_message(h.hello(A, 0), A, MsgType.WELCOME)
    assert w.header.meta["round"] == 1 and w.header.meta["done"] is False
    assert set(w.tensors) == {"bottom/x", "top/y"}
    assert torch.equal(w.tensors["bottom/x"], state["bottom/x"]) and torch.equal(w.tensors["top/y"], state["top/y"])


def test_hello_refuses_unknown_and_bool_client_ids(make_core):
    h = make_core()
    err = only_reject(h.send(A, MsgType.HELLO, now=0.0, meta=h.hello_meta(0, client_id=2)), A)
    assert (err.code, err.detail) == (ErrorCode.UNKNOWN_CLIENT, "client_id must be in [0, 2), got 2")
    for cid in (-1, True, "0", None):  # not a client id at all: the codec refuses the message
        err = only_reject(h.send(A, MsgType.HELLO, now=0.0, meta=h.hello_meta(0, client_id=cid)), A)
        assert err.code == ErrorCode.MALFORMED
        assert err.detail.startswith("hello meta field 'client_id': expected an integer >= 0, got ")
    assert h.core.sessions == {}


def test_hello_with_another_clients_key_is_wrong_identity(make_core):
    h = make_core()
    public, _ = zmq.curve_keypair()
    user = public.decode()
    err = only_reject(h.hello(A, 0, user=user, key_owner="client-1"), A)
    assert err.code == ErrorCode.WRONG_IDENTITY
    assert err.detail == f"this key (fingerprint {key_fingerprint(user)}) belongs to client-1, not client-0"
    # a key in no allowlist entry (owner None) is not client-0's either
    err = only_reject(h.hello(A, 0, user=user, key_owner=None), A)
    assert err.code == ErrorCode.WRONG_IDENTITY and "belongs to None, not client-0" in err.detail
    assert h.core.sessions == {}
    only_message(h.hello(A, 0, user=user, key_owner="client-0"), A, MsgType.WELCOME)  # its own key


def test_hello_config_mismatch_names_the_differing_key(make_core, tiny_model_dir, tmp_path):
    from core_harness import make_config

    h = make_core()
    theirs = make_config(tiny_model_dir[0], tmp_path / "elsewhere", training__lr=0.5)
    assert theirs.hash() != h.cfg.hash()  # run.dir is local, lr is agreed
    meta = h.hello_meta(0, config_hash=theirs.hash(), config_keys=theirs.key_digests())
    err = only_reject(h.send(A, MsgType.HELLO, now=0.0, meta=meta), A)
    assert err.code == ErrorCode.CONFIG_MISMATCH
    assert err.detail.startswith("client-0's configuration differs from the server's in training.lr (server: 0.05);")
    # no per-key digests: still refused, said generically
    meta = h.hello_meta(0, config_hash="0" * 64, config_keys=None)
    err = only_reject(h.send(A, MsgType.HELLO, now=0.0, meta=meta), A)
    assert err.code == ErrorCode.CONFIG_MISMATCH and "it sent no per-key digests" in err.detail
    # a different local key (run.dir) changes nothing
    assert make_config(tiny_model_dir[0], tmp_path / "x").hash() == h.cfg.hash()
    assert h.core.sessions == {}


def test_hello_with_another_base_model_is_refused(make_core):
    h = make_core()
    err = only_reject(h.send(A, MsgType.HELLO, now=0.0, meta=h.hello_meta(0, model="sha256:" + "ab" * 32)), A)
    assert err.code == ErrorCode.CONFIG_MISMATCH
    assert err.detail.startswith("different base model: the server's is sha256:")
    assert "client-0's is sha256:abababababababab (every party needs a copy of the same weights)" in err.detail
    assert h.core.sessions == {}


def test_hello_n_samples_out_of_range(make_core):
    h = make_core(server__max_samples=100)
    err = only_reject(h.send(A, MsgType.HELLO, now=0.0, meta=h.hello_meta(0, n_samples=101)), A)
    assert (err.code, err.detail) == (ErrorCode.MALFORMED, "n_samples must be an integer in [1, 100], got 101")
    for n in (0, -3, True, 2.5, "10"):  # the codec's protocol bound
        err = only_reject(h.send(A, MsgType.HELLO, now=0.0, meta=h.hello_meta(0, n_samples=n)), A)
        assert err.code == ErrorCode.MALFORMED
        assert err.detail.startswith("hello meta field 'n_samples': expected an integer >= 1, got ")
    assert h.core.sessions == {}
    only_message(h.hello(A, 0, n_samples=100), A, MsgType.WELCOME)
    assert h.session(A).n_samples == 100


def test_reconnect_replaces_the_old_session_and_releases_its_step(make_core):
    h = make_core()
    h.hello(A, 0)
    h.hello(B, 1)
    only_message(h.forward(A, _act(0), MASK, now=1.0, step=4), A, MsgType.ACTIVATIONS)
    assert h.forward(B, _act(1), MASK, now=1.5, step=9) == []  # queued behind client-0's step
    old_sid = h.sessions[A]
    actions = h.hello(b"ident-a2", 0, now=2.0)  # client-0 again, from a new connection
    w = only_message(actions, b"ident-a2", MsgType.WELCOME)
    assert w.header.session != old_sid
    assert A not in h.core.sessions and h.core.sessions[b"ident-a2"].stage == Stage.READY
    # the released trunk runs the queued forward at once: its ACTIVATIONS come with the WELCOME
    act = only_message(actions, B, MsgType.ACTIVATIONS)
    assert act.header.step == 9
    assert set(h.core.steps.pending.members) == {"client-1"} and h.engine.pending.keys() == {"client-1"}
    # the old connection is nobody now
    err = only_reject(h.backward(A, torch.ones(2, 3, 32), now=2.5, step=4), A)
    assert err.code == ErrorCode.OUT_OF_ORDER and err.detail == "backward before hello: say hello first"


# ------------------------------------------------------------------ the stage machine
def test_messages_out_of_order_are_refused_and_change_nothing(make_core):
    h = make_core()
    err = only_reject(h.forward(A, _act(), MASK, now=0.0), A)
    assert (err.code, err.detail) == (ErrorCode.OUT_OF_ORDER, "forward before hello: say hello first")
    h.hello(A, 0)
    h.hello(B, 1)

    def refused(ident, actions, code, detail):
        err = only_reject(actions, ident)
        assert (err.code, err.detail) == (code, detail)

    before = _snapshot(h)
    refused(
        A,
        h.send(A, MsgType.FORWARD, now=1.0, session="feedface00000000"),
        ErrorCode.UNKNOWN_CLIENT,
        "unknown session id: say hello again",
    )
    refused(
        A,
        h.backward(A, torch.ones(2, 3, 32), now=1.0),
        ErrorCode.OUT_OF_ORDER,
        "client-0: backward not allowed in stage ready; expected one of ['bye', 'forward', 'heartbeat', 'update']",
    )
    refused(
        A,
        h.send(A, MsgType.SECAGG, now=1.0, meta={"stage": "ADVERTISE_KEYS"}),
        ErrorCode.OUT_OF_ORDER,
        "client-0: secagg not allowed in stage ready; expected one of ['bye', 'forward', 'heartbeat', 'update']",
    )
    assert _same(before, _snapshot(h))

    h.forward(A, _act(), MASK, now=2.0, step=3)
    before = _snapshot(h)
    allowed = "expected one of ['backward', 'bye', 'heartbeat']"
    for mtype in (MsgType.UPDATE, MsgType.FORWARD):
        refused(
            A,
            h.send(A, mtype, now=2.5),
            ErrorCode.OUT_OF_ORDER,
            f"client-0: {mtype.value} not allowed in stage await_backward; {allowed}",
        )
    refused(
        A,
        h.backward(A, torch.ones(2, 3, 32), now=2.5, step=2),
        ErrorCode.OUT_OF_ORDER,
        "backward for step 2, pending 3",
    )
    assert _same(before, _snapshot(h))
    only_message(h.backward(A, torch.ones(2, 3, 32), now=3.0, step=3), A, MsgType.GRADIENT)

    h.update(A, h.client_state(1.0), now=4.0)
    before = _snapshot(h)
    refused(
        A,
        h.forward(A, _act(), MASK, now=4.5),
        ErrorCode.OUT_OF_ORDER,
        "client-0: forward not allowed in stage await_round; expected one of ['bye', 'heartbeat', 'secagg']",
    )
    refused(
        A,
        h.update(A, h.client_state(2.0), now=4.5),
        ErrorCode.OUT_OF_ORDER,
        "client-0: update not allowed in stage await_round; expected one of ['bye', 'heartbeat', 'secagg']",
    )
    assert _same(before, _snapshot(h))
    assert torch.equal(next(iter(h.core.rounds.updates["client-0"].state.values())), torch.full((8, 32), 1.0))

    h.bye(B, now=5.0)
    before = _snapshot(h)
    refused(
        B,
        h.send(B, MsgType.HEARTBEAT, now=5.5),
        ErrorCode.OUT_OF_ORDER,
        "client-1: heartbeat not allowed in stage done; expected one of []",
    )
    assert _same(before, _snapshot(h))


def test_heartbeat_is_answered_and_counts_as_seen(make_core):
    h = make_core()
    h.hello(A, 0)
    hb = only_message(h.send(A, MsgType.HEARTBEAT, now=8.0), A, MsgType.HEARTBEAT)
    assert hb.header.session == h.sessions[A] and hb.header.round == 0
    assert h.session(A).last_seen == 8.0
    assert records(h.tick(15.0), "dropped") == []  # 7 s after the heartbeat, timeout 10 s
    assert [r.fields for r in records(h.tick(18.5), "dropped")] == [{"client": "client-0", "round": 0}]
    assert h.core.sessions == {}


# ------------------------------------------------------------------ departures
def test_bye_while_holding_a_step_leaves_the_client_done(make_core):
    h = make_core(training__rounds=1)
    h.hello(A, 0)
    h.hello(B, 1)
    h.forward(A, _act(0), MASK, now=1.0, step=1)
    h.update(B, h.client_state(1.0), now=1.5)
    actions = h.bye(A, now=2.0)
    assert [r.fields["client"] for r in records(actions, "bye")] == ["client-0"]
    assert h.core.steps.pending is None and not h.engine.busy
    # the round closes with client-1 alone at once: client-0 left, it is not waited for
    assert [r.fields["participants"] for r in records(h.tick(2.1), "round")] == [["client-1"]]
    assert h.core.done
    h.bye(B, now=2.2)
    assert h.core.finished is False
    h.tick(3.5)
    assert h.core.finished is True  # everyone said bye and the linger (1 s) passed
    assert h.session(A).stage == Stage.DONE
    err = only_reject(h.forward(A, _act(0), MASK, now=3.6, step=2), A)
    assert err.detail == "client-0: forward not allowed in stage done; expected one of []"


def test_banned_client_loses_its_session_and_step(make_core):
    h = make_core(data__clients=3)
    h.hello(A, 0)
    h.hello(B, 1)
    h.hello(b"ident-c", 2)
    h.forward(A, _act(0), MASK, now=1.0, step=1)
    assert h.forward(B, _act(1), MASK, now=1.1, step=2) == []
    actions = h.ban(A, None, now=1.2)
    assert A not in h.core.sessions
    assert only_message(actions, B, MsgType.ACTIVATIONS).header.step == 2  # the trunk went on to the next
    assert set(h.core.steps.pending.members) == {"client-1"}
    assert rejects(actions) == []
    # by key owner: client-1's session goes whatever identity the ban names
    actions = h.ban(b"some-other-connection", "client-1", now=1.3)
    assert set(h.core.sessions) == {b"ident-c"}
    assert h.core.steps.pending is None and not h.engine.busy
    assert messages(actions) == []
    only_message(h.forward(b"ident-c", _act(2), MASK, now=1.4), b"ident-c", MsgType.ACTIVATIONS)


def test_a_step_held_past_step_timeout_is_lost_and_the_queue_goes_on(make_core):
    h = make_core()  # step_timeout_s 5, transport.timeout_s 10
    h.hello(A, 0)
    h.hello(B, 1)
    h.forward(A, _act(0), MASK, now=1.0, step=1)
    assert h.forward(B, _act(1), MASK, now=2.0, step=7) == []
    before = {k: v.clone() for k, v in h.engine.states["shared"].items()}
    assert h.tick(6.0) == []  # held 5 s: not yet past
    actions = h.tick(6.5)
    assert [r.fields for r in records(actions, "step_timeout")] == [{"client": "client-0", "round": 0}]
    assert only_message(actions, B, MsgType.ACTIVATIONS).header.step == 7
    assert messages(actions, A) == []
    assert h.session(A).stage == Stage.READY and h.session(B).stage == Stage.AWAIT_BACKWARD
    assert all(torch.equal(before[k], v) for k, v in h.engine.states["shared"].items())  # no step taken
    err = only_reject(h.backward(A, torch.ones(2, 3, 32), now=7.0, step=1), A)
    assert err.code == ErrorCode.OUT_OF_ORDER and "backward not allowed in stage ready" in err.detail
    # client-0 may start over (queued behind client-1 now)
    assert h.forward(A, _act(0), MASK, now=7.0, step=2) == []
    actions = h.backward(B, torch.ones(2, 3, 32), now=7.5, step=7)
    only_message(actions, B, MsgType.GRADIENT)
    assert only_message(actions, A, MsgType.ACTIVATIONS).header.step == 2


def test_a_silent_client_is_dropped_and_the_round_does_not_wait(make_core):
    h = make_core()  # transport.timeout_s 10
    h.hello(A, 0, now=0.0)
    h.hello(B, 1, now=0.0)
    h.update(A, h.client_state(2.0), now=5.0)
    assert records(h.tick(9.0)) == []  # client-1 still counted on
    actions = h.tick(10.5)
    assert [r.fields for r in records(actions, "dropped")] == [{"client": "client-1", "round": 0}]
    assert set(h.core.sessions) == {A}
    [rnd] = records(actions, "round")
    assert rnd.fields["participants"] == ["client-0"] and rnd.fields["missing"] == ["client-1"]
    result = only_message(actions, A, MsgType.ROUND_RESULT)
    assert result.header.meta == {"round": 1, "done": False}
    assert all(torch.equal(v, torch.full_like(v, 2.0)) for v in result.tensors.values())
    assert h.core.round == 1
