"""ServerCore in memory: generation streams (open / step / close), decode steps of several
streams batched into one trunk forward, and the limits, timeouts and departures that free caches."""

from __future__ import annotations

import torch
from core_harness import messages, only_message, only_reject, records, tensor_of

from splitfed.models import set_adapter_state
from splitfed.server.session import Stage
from splitfed.wire import ErrorCode, MsgType

A, B, T = b"ident-a", b"ident-b", b"ident-t"
D = 32


def _rand(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _adapter_on(*engines):
    """Every trunk LoRA B nonzero, the same everywhere: the adapter matters."""
    for eng in engines:
        state = {k: (torch.full_like(v, 0.05) if "lora_B" in k else v) for k, v in eng.states["shared"].items()}
        eng.states["shared"] = state
        set_adapter_state(eng.trunk, state)


def _prompt(rows: int, length: int, seed: int, pad_left: int = 0):
    act, mask = _rand(rows, length, D, seed=seed), torch.ones(rows, length, dtype=torch.long)
    if pad_left and rows > 1:
        mask[1, :pad_left] = 0
    return act, mask


def _open(h, ident, stream, act, mask, *, now=1.0, positions=32, step=1):
    got = h.generate(ident, "open", stream, now=now, act=act, mask=mask, positions=positions, step=step)
    assert not messages(got) and not [a for a in got if type(a).__name__ == "Reject"], got  # queued until idle
    return got


def _answer(actions, ident):
    return tensor_of(only_message(actions, ident, MsgType.GENERATED), "act")


def test_a_generation_session_is_no_member_of_the_rounds(make_core):
    h = make_core(clients=2)
    h.hello(T, 0)
    h.hello(b"ident-t1", 1)
    h.bye(b"ident-t1", now=1.0)  # client-1 is done training ...
    h.gen_hello(A, 1, now=1.0)  # ... and now only generates: the rounds must not wait for it
    assert h.session(A).stage == Stage.GENERATE and h.session(A).generates
    err = only_reject(h.forward(A, *_prompt(1, 3, 0), now=1.0), A)
    assert err.code == ErrorCode.OUT_OF_ORDER and "generate" in str(err)
    h.update(T, h.client_state(0.1), now=2.0)
    assert records(h.tick(2.0), "round")  # closed at once with client-0's update
    h.gen_hello(b"ident-t0", 0, now=3.0)  # a generation session does not replace the training one
    assert T in h.core.sessions and h.session(T).stage == Stage.READY


def test_prefill_and_decode_equal_the_uncached_trunk(make_core):
    h = make_core(clients=1)
    ref = h.fresh_engine()
    _adapter_on(h.engine, ref)
    h.gen_hello(A, 0)
    act, mask = _prompt(2, 6, seed=1, pad_left=2)
    _open(h, A, 0, act, mask)
    out = _answer(h.idle(1.0), A)
    want = ref.infer("client-0", act, mask)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
    full_act, full_mask = act, mask
    for k in range(3):
        new = _rand(2, 1, D, seed=10 + k)
        full_act = torch.cat([full_act, new], 1)
        full_mask = torch.cat([full_mask, torch.ones(2, 1, dtype=torch.long)], 1)
        h.generate(A, "step", 0, now=2.0 + k, act=new, mask=torch.ones(2, 1), step=2 + k)
        got = _answer(h.idle(2.0 + k), A)
        torch.testing.assert_close(got, ref.infer("client-0", full_act, full_mask)[:, -1:], rtol=0, atol=1e-5)
    only_message(h.generate(A, "close", 0, now=9.0, step=9), A, MsgType.GENERATED)
    assert not h.engine.streams.caches


def test_two_streams_batched_give_what_each_gives_alone(make_core):
    """Streams of different lengths (one left-padded) stacked into one decode forward."""
    h = make_core(clients=2)
    _adapter_on(h.engine)
    h.gen_hello(A, 0)
    h.gen_hello(B, 1)
    prompts = {A: _prompt(2, 5, seed=1, pad_left=3), B: _prompt(2, 8, seed=2)}
    for ident, (act, mask) in prompts.items():
        _open(h, ident, 0, act, mask)
        h.idle(1.0)  # prefills run one at a time
    steps = {A: _rand(2, 1, D, seed=3), B: _rand(2, 1, D, seed=4)}
    for ident, new in steps.items():
        h.generate(ident, "step", 0, now=2.0, act=new, mask=torch.ones(new.shape[0], 1), step=2)
    batched = h.idle(2.0)
    [rec] = records(batched, "generate_step")
    assert rec.fields["streams"] == 2 and rec.fields["rows"] == 4
    alone = {}
    for ident, (act, mask) in prompts.items():  # each stream alone on a fresh engine with the same weights
        solo = make_core(clients=2)
        _adapter_on(solo.engine)
        cid = 0 if ident == A else 1
        solo.gen_hello(ident, cid)
        _open(solo, ident, 0, act, mask)
        solo.idle(1.0)
        n = steps[ident].shape[0]
        solo.generate(ident, "step", 0, now=2.0, act=steps[ident], mask=torch.ones(n, 1), step=2)
        alone[ident] = (_answer(solo.idle(2.0), ident), solo.engine.streams.caches)
    for ident in (A, B):
        # equal up to float32 rounding: the CPU GEMM sums in a batch-size-dependent order (measured:
        # at most 1 ulp, 6e-8; a wrong mask or position would be off by ~1e-1)
        torch.testing.assert_close(_answer(batched, ident), alone[ident][0], rtol=0, atol=1e-6)


def test_without_batching_each_stream_steps_alone(make_core):
    h = make_core(clients=2, server__inference={"batch": False})
    h.gen_hello(A, 0)
    h.gen_hello(B, 1)
    for ident in (A, B):
        _open(h, ident, 0, *_prompt(1, 4, seed=1))
    h.idle(1.0)
    for ident in (A, B):
        h.generate(ident, "step", 0, now=2.0, act=_rand(1, 1, D, seed=2), mask=torch.ones(1, 1), step=2)
    got = h.idle(2.0)
    assert [r.fields["streams"] for r in records(got, "generate_step")] == [1, 1]
    assert len(messages(got, A)) == 1 and len(messages(got, B)) == 1


def test_limits_are_refused_by_name_and_others_are_served(make_core):
    h = make_core(clients=2, server__inference={"max_streams_per_client": 1, "max_positions": 8, "max_streams": 2})
    h.gen_hello(A, 0)
    h.gen_hello(B, 1)
    act, mask = _prompt(1, 4, seed=1)
    err = only_reject(h.generate(A, "open", 0, now=1.0, act=act, mask=mask, positions=9), A)
    assert "max_positions" in str(err)
    err = only_reject(h.generate(A, "open", 0, now=1.0, act=act, mask=mask), A)
    assert "positions must be" in str(err)  # open without its positions
    _open(h, A, 0, act, mask, positions=5)
    err = only_reject(h.generate(A, "open", 1, now=1.0, act=act, mask=mask, positions=5), A)
    assert err.code == ErrorCode.TOO_LARGE and "max_streams_per_client = 1" in str(err)
    err = only_reject(h.generate(A, "step", 0, now=1.0, act=act[:, :1], mask=mask[:, :1]), A)
    assert err.code == ErrorCode.OUT_OF_ORDER and "before its answer" in str(err)
    h.idle(1.0)
    err = only_reject(h.generate(A, "step", 0, now=1.0, act=_rand(2, 1, D, seed=3), mask=torch.ones(2, 1)), A)
    assert "expected 1 rows of one position" in str(err)
    h.generate(A, "step", 0, now=1.0, act=act[:, :1], mask=mask[:, :1], step=2)
    h.idle(1.0)  # 5 positions: the stream is full
    err = only_reject(h.generate(A, "step", 0, now=1.0, act=act[:, :1], mask=mask[:, :1], step=3), A)
    assert err.code == ErrorCode.TOO_LARGE and "full (5 positions" in str(err)
    err = only_reject(h.generate(B, "step", 7, now=1.0, act=act[:, :1], mask=mask[:, :1]), B)
    assert "stream 7 is not open" in str(err)
    _open(h, B, 0, act, mask, positions=6)
    answer = h.idle(1.0)
    assert tensor_of(only_message(answer, B, MsgType.GENERATED), "act").shape == (1, 4, D)
    h.hello(T, 0, now=1.0)
    h.gen_hello(b"ident-c", 0, now=1.0)  # past max_streams_per_client sessions: A's (the oldest) goes, with its stream
    assert len(h.engine.streams.caches) == 1


def test_cache_budgets_bound_one_client_and_the_server(make_core):
    h = make_core(clients=2, server__inference={"max_client_cache": 20, "max_cache": 30, "max_positions": 100})
    h.gen_hello(A, 0)
    h.gen_hello(B, 1)
    act, mask = _prompt(2, 4, seed=1)
    err = only_reject(h.generate(A, "open", 0, now=1.0, act=act, mask=mask, positions=11), A)
    assert "2 rows x 11 positions on top of this client's 0 exceeds server.inference.max_client_cache = 20" in str(err)
    _open(h, A, 0, act, mask, positions=10)  # 20 reserved: A's whole share
    err = only_reject(h.generate(A, "open", 1, now=1.0, act=act[:1], mask=mask[:1], positions=4), A)
    assert "max_client_cache" in str(err)
    _open(h, B, 0, act[:1], mask[:1], positions=10)  # 30 reserved on the server
    err = only_reject(h.generate(B, "open", 1, now=1.0, act=act[:1], mask=mask[:1], positions=4), B)
    assert err.code == ErrorCode.TOO_LARGE and "capacity is taken" in str(err)
    h.generate(A, "close", 0, now=2.0, step=5)
    _open(h, B, 1, act[:1], mask[:1], positions=4, now=2.0)  # A's close freed room


def test_idle_streams_and_departed_clients_free_their_caches(make_core):
    h = make_core(clients=2, server__inference={"idle_timeout_s": 5.0})
    h.gen_hello(A, 0)
    h.gen_hello(B, 1)
    for ident in (A, B):
        _open(h, ident, 0, *_prompt(1, 3, seed=1))
    h.idle(1.0)
    assert len(h.engine.streams.caches) == 2
    h.send(A, MsgType.HEARTBEAT, now=5.5)
    got = h.tick(6.5)  # both idle 5.5 s > 5 s: closed, though A's session is alive
    assert sorted(r.fields["why"] for r in records(got, "generate_close")) == ["idle", "idle"]
    assert not h.engine.streams.caches
    _open(h, A, 1, *_prompt(1, 3, seed=2), now=7.0)
    _open(h, B, 1, *_prompt(1, 3, seed=2), now=7.0)
    h.idle(7.0)
    got = h.bye(A, now=8.0)
    assert [r.fields["why"] for r in records(got, "generate_close")] == ["left"]
    got = h.tick(7.0 + h.cfg.transport.timeout_s + 1)  # B vanished mid-generation: dropped, cache freed
    assert records(got, "dropped") and not h.engine.streams.caches


def test_generation_waits_for_a_pending_training_step(make_core):
    h = make_core(clients=1)
    h.hello(T, 0)
    h.gen_hello(A, 0)
    h.forward(T, *_prompt(1, 4, seed=1), now=1.0)
    assert h.engine.busy
    _open(h, A, 0, *_prompt(1, 3, seed=2))
    assert not messages(h.idle(1.0))  # queued behind the pending step
    h.backward(T, _rand(1, 4, D, seed=3), now=1.5)
    assert _answer(h.idle(1.5), A).shape == (1, 3, D)


def test_a_connection_saying_hello_to_generate_ends_its_training_session_and_frees_the_trunk(make_core):
    """The training session used to be overwritten, not ended: its pending step held the trunk
    until ``server.step_timeout_s`` while the other clients' forwards queued."""
    h = make_core(clients=2)
    h.hello(T, 0)
    h.hello(A, 1)
    h.forward(A, *_prompt(1, 4, seed=1), now=1.0, train=True)
    assert h.engine.busy
    h.gen_hello(A, 1, now=1.5)  # the same connection, now a generation session
    assert not h.engine.busy and h.session(A).generates
    got = h.forward(T, *_prompt(1, 4, seed=2), now=2.0, train=True)
    assert only_message(got, T, MsgType.ACTIVATIONS)  # at once, not after the step timeout
    _open(h, A, 0, *_prompt(1, 3, seed=3), now=2.5)
    h.hello(A, 1, now=3.0)  # and back: the generation session and its stream end
    assert h.session(A).stage == Stage.READY and not h.core.generation.streams


def test_random_hostile_generation_traffic_is_refused_or_served_within_the_budgets(make_core):
    """600 random GENERATE messages from one generation session, with idles and ticks between:
    only answers or refusals come out (no exception), and the caches never exceed their budgets."""
    import random

    budget = {"max_client_cache": 64, "max_cache": 96, "max_positions": 40, "max_streams_per_client": 3}
    h = make_core(clients=2, server__inference={**budget, "idle_timeout_s": 3.0})
    h.gen_hello(A, 0)
    h.gen_hello(B, 1)
    r = random.Random(7)
    now, answered = 1.0, 0
    for i in range(600):
        now += r.random() * 0.05
        ident = r.choice([A, A, B])
        op = r.choice(["open", "step", "step", "step", "close"])
        rows = r.choice([1, 1, 1, 2, 70])
        t = r.choice([1, 2, 5, 40, 41]) if op == "open" else r.choice([1, 1, 1, 2])
        act = _rand(rows, t, D, seed=i) * (1e6 if r.random() < 0.1 else 1.0)
        mask = torch.ones(rows, t, dtype=torch.long)
        if r.random() < 0.2:
            mask[:, 0] = 0
        tensors = {"act": act, "mask": mask} if op != "close" else {}
        positions = r.choice([None, 0, 1, 5, 12, 12, 20, 40, 2**31 - 1, 2**40])
        actions = h.generate(ident, op, r.choice([0, 0, 1, 1, 2, 3, 2**31 - 1]), now=now, positions=positions,
                             step=i, **tensors)  # fmt: skip
        assert all(type(a).__name__ in ("Send", "Reject", "Record") for a in actions)
        answered += len(messages(actions))
        if r.random() < 0.8:
            answered += len(messages(h.idle(now)))
        if r.random() < 0.1:
            now += 4.0 * r.random()
            h.tick(now)
        streams = h.core.generation.streams.values()
        assert sum(s.reserved for s in streams) <= budget["max_cache"]
        for ident_ in (A, B):
            mine = [s for s in streams if s.sess.identity == ident_]
            assert len(mine) <= 3 and sum(s.reserved for s in mine) <= budget["max_client_cache"]
        assert set(h.engine.streams.caches) <= {s.key for s in streams}
        assert all(c.length <= 40 for c in h.engine.streams.caches.values())
    assert answered > 20, answered  # the traffic reached the scheduler, not only the refusals (26 here)


def test_per_client_mode_generates_with_each_clients_own_trunk_adapter(make_core):
    h = make_core(clients=2, server__mode="per_client")
    ref = h.fresh_engine()
    for eng in (h.engine, ref):
        for k, name in enumerate(("client-0", "client-1")):
            eng.states[name] = {n: (torch.full_like(v, 0.05 * (k + 1)) if "lora_B" in n else v)
                                for n, v in eng.states[name].items()}  # fmt: skip
        eng._loaded = None
    h.gen_hello(A, 0)
    h.gen_hello(B, 1)
    act, mask = _prompt(1, 4, seed=1)
    for ident in (A, B):
        _open(h, ident, 0, act, mask)
    answers = h.idle(1.0)
    out = {ident: _answer([a for a in answers if getattr(a, "identity", None) == ident], ident) for ident in (A, B)}
    for ident, name in ((A, "client-0"), (B, "client-1")):
        torch.testing.assert_close(out[ident], ref.infer(name, act, mask), rtol=0, atol=1e-5)
    assert not torch.allclose(out[A], out[B])  # same prompt, different adapters
    new = _rand(1, 1, D, seed=2)
    for ident in (A, B):
        h.generate(ident, "step", 0, now=2.0, act=new, mask=torch.ones(1, 1), step=2)
    answers = h.idle(2.0)  # one decode op, one forward per client adapter
    full_act, full_mask = torch.cat([act, new], 1), torch.ones(1, 5, dtype=torch.long)
    for ident, name in ((A, "client-0"), (B, "client-1")):
        got = _answer([a for a in answers if getattr(a, "identity", None) == ident], ident)
        torch.testing.assert_close(got, ref.infer(name, full_act, full_mask)[:, -1:], rtol=0, atol=1e-5)


def test_one_client_generates_from_several_processes_within_its_own_limits(make_core):
    h = make_core(clients=2, server__inference={"max_streams_per_client": 2})
    C = b"ident-c"
    h.gen_hello(A, 0, now=1.0)
    h.gen_hello(C, 0, now=2.0)  # client-0's second process: both sessions live
    assert A in h.core.sessions and C in h.core.sessions
    act, mask = _prompt(1, 3, seed=1)
    _open(h, A, 0, act, mask)
    _open(h, C, 0, act, mask)
    _answer(h.idle(2.0), A)
    err = only_reject(h.generate(C, "open", 1, now=2.0, act=act, mask=mask, positions=5, step=2), C)
    assert "2 streams open, server.inference.max_streams_per_client = 2" in str(err)  # counted over the client
    h.gen_hello(B, 0, now=3.0)  # a third session: the oldest (A) goes, and its stream with it
    assert A not in h.core.sessions and C in h.core.sessions and B in h.core.sessions
    assert len(h.engine.streams.caches) == 1
