"""A live server survives hostile authenticated peers: no crash, no stall, no poisoned trunk, no lost adapter.

One regression test per defect found against a real `splitfed server` (tiny-llama, loopback,
CURVE) with an honest client training alongside, and a live mutational fuzz test from a
training session and a generation session, after which an honest generation still works.
``FUZZ_MESSAGES=20000 make fuzz`` runs the long version.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import torch
from hostile import GEN_KINDS, KINDS, GenerationPeer, HostileGenerator

from splitfed.client.generation import RemoteDecodeLink
from splitfed.client.link import Connection
from splitfed.transport import ClientSocket
from splitfed.wire import Header, MsgType, decode, encode
from splitfed.wire.meta import Bye, Hello


def _peer(run, name="client-1"):
    return ClientSocket(run.cfg.transport.endpoint, keys_dir=run.root / "keys", name=name)


def _ask(sock, frames, timeout_ms=10_000):
    sock.send(frames)
    reply = sock.recv(timeout_ms)
    assert reply is not None, "no reply from the server"
    return decode(reply, max_bytes=1 << 26)


def _hello(run, sock, cid=1, n=3):
    meta = run.hello_meta(cid, n)
    return _ask(sock, encode(Header(MsgType.HELLO, meta=meta)))


def _wait_listening(run):
    run.wait_for(lambda: any(m["event"] == "start" for m in run.metrics("server")), 60, "server start")


def _hostile_run(make_run, **extra):
    opts = dict(
        clients=2,
        training__rounds=2,
        training__local_steps=4,
        server__round_deadline_s=4.0,  # the attacker's session never sends an update
        transport__max_message_mb=1.0,
    )
    opts.update(extra)
    return make_run(**opts)


def _finishes_cleanly(run, server, honest):
    assert run.wait(honest, 240) == 0, run.log("client-0") + run.log("server")[-5000:]
    assert run.wait(server, 120) == 0, run.log("server")[-5000:]
    log = run.log("server")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    return log


def test_huge_sample_count_is_refused_and_the_round_closes(make_run):
    run = _hostile_run(make_run)
    server = run.server()
    _wait_listening(run)
    honest = run.client(0)
    bad = _peer(run)
    reply = _hello(run, bad, n=10**400)  # the reproduced crash: refused by the codec now
    assert reply.type == MsgType.ERROR and "integer of 401 digits" in reply.header.meta["detail"]
    reply = _hello(run, bad, n=10**30)  # decodable, but over server.max_samples
    assert reply.type == MsgType.ERROR
    assert "n_samples must be an integer in [1, 10000000]" in reply.header.meta["detail"]
    assert _hello(run, bad, n=10**7).type == MsgType.WELCOME  # the largest weight allowed
    log = _finishes_cleanly(run, server, honest)
    assert "rejected message" in log
    bad.close()


def test_trunk_hold_times_out_and_bye_drains_the_queue(make_run):
    run = _hostile_run(make_run, server__step_timeout_s=2.0)
    server = run.server()
    _wait_listening(run)
    bad = _peer(run)
    welcome = _hello(run, bad)
    sid, hidden = welcome.header.session, welcome.header.meta["hidden"]
    fwd = {"act": torch.zeros(1, 4, hidden), "mask": torch.ones(1, 4, dtype=torch.uint8)}
    assert _ask(bad, encode(Header(MsgType.FORWARD, sid, 0, 0, {"train": True}), fwd)).type == MsgType.ACTIVATIONS
    honest = run.client(0)  # its forwards queue behind the held step until the step times out
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30 and not any(m["event"] == "step_timeout" for m in run.metrics("server")):
        bad.send(encode(Header(MsgType.HEARTBEAT, sid)))  # alive, but never the backward
        bad.recv(200)
        time.sleep(0.2)
    assert any(m["event"] == "step_timeout" and m["client"] == "client-1" for m in run.metrics("server"))
    # again, then leave: BYE frees the trunk and the queue moves on at once
    assert _ask(bad, encode(Header(MsgType.FORWARD, sid, 0, 1, {"train": True}), fwd)).type == MsgType.ACTIVATIONS
    bad.send(encode(Header(MsgType.BYE, sid)))
    time.sleep(0.2)
    bad.close()
    _finishes_cleanly(run, server, honest)
    steps = [m for m in run.metrics("client-0") if m["event"] == "step"]
    assert len(steps) == 8


def test_poison_values_are_refused_and_the_trunk_stays_finite(make_run):
    run = _hostile_run(make_run)
    server = run.server()
    _wait_listening(run)
    bad = _peer(run)
    welcome = _hello(run, bad)
    sid, hidden = welcome.header.session, welcome.header.meta["hidden"]
    act = torch.zeros(1, 4, hidden)
    act[0, 1, 3] = 3e38  # finite: passes the NaN/Inf check
    fwd = {"act": act, "mask": torch.ones(1, 4, dtype=torch.uint8)}
    reply = _ask(bad, encode(Header(MsgType.FORWARD, sid, 0, 0, {"train": True}), fwd))
    assert reply.type == MsgType.ERROR and "exceeds server.max_abs_value" in reply.header.meta["detail"]
    ok = {"act": torch.zeros(1, 4, hidden), "mask": torch.ones(1, 4, dtype=torch.uint8)}
    assert _ask(bad, encode(Header(MsgType.FORWARD, sid, 0, 1, {"train": True}), ok)).type == MsgType.ACTIVATIONS
    grad = torch.zeros(1, 4, hidden)
    grad[0, 0, 0] = -3e38
    reply = _ask(bad, encode(Header(MsgType.BACKWARD, sid, 0, 1), {"grad": grad}))
    assert reply.type == MsgType.ERROR and "exceeds server.max_abs_value" in reply.header.meta["detail"]
    bad.send(encode(Header(MsgType.BYE, sid)))
    bad.close()
    honest = run.client(0)
    _finishes_cleanly(run, server, honest)
    losses = [m["loss"] for m in run.metrics("client-0") if m["event"] == "step"]
    assert len(losses) == 8 and all(abs(x) < 100 for x in losses)


def test_resume_after_the_last_checkpoint_exports_and_answers(make_run):
    run = _hostile_run(make_run, clients=1, training__rounds=1)
    server, honest = run.server(), run.client(0)
    assert run.wait(honest) == 0 and run.wait(server) == 0, run.log("server")
    shutil.rmtree(run.run_dir / "adapter")  # as if killed after the last checkpoint, before the export
    resumed = run.server("--resume")
    late = run.client(0)  # a client that was waiting for the final result comes back
    assert run.wait(late, 120) == 0, run.log("client-0")
    assert run.wait(resumed, 120) == 0, run.log("server")
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert f"server done; merged adapter: {run.run_dir / 'adapter'}" in run.log("server")


# small generation limits, so one peer reaches each of them; serve: the server stays up after the rounds
GEN_LIMITS = {
    "serve": True,
    "max_streams_per_client": 3,
    "max_positions": 48,
    "max_client_cache": 160,
    "max_cache": 120,
    "idle_timeout_s": 2.0,
}


def _honest_generation(run) -> None:
    """Open, step and close streams as `SplitLM` does: finite answers, and the decode step
    through the server's cache equals the prefill of the whole sequence."""
    conn = Connection(run.cfg, 0, insecure=False)
    hello = Hello(**run.hello_meta(0, 1), config_keys=run.cfg.key_digests(), generate=True)
    welcome = conn.request(Header(MsgType.HELLO, meta=hello), expect=MsgType.WELCOME)
    conn.session = welcome.header.session
    hidden, compression = welcome.meta.hidden, welcome.meta.compression
    h = torch.randn(2, 6, hidden, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, dtype=torch.long)
    cached = RemoteDecodeLink(conn, 0, compression=compression, positions=8)
    whole = RemoteDecodeLink(conn, 1, compression=compression, positions=6)
    first, step = cached.prefill(h[:, :5], mask[:, :5]), cached.decode(h[:, 5:], mask)
    full = whole.prefill(h, mask)
    cached.close()
    whole.close()
    conn.sock.send(encode(Header(MsgType.BYE, conn.session, 0, 0, Bye())))
    time.sleep(0.1)
    conn.close()
    assert bool(full.isfinite().all())
    torch.testing.assert_close(first, full[:, :5], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(step, full[:, 5:], atol=1e-4, rtol=1e-4)


def _read_answers(sock, peer: GenerationPeer) -> int:
    """Give the generation peer what came back, waiting briefly when a valid request is out (its
    stream's next step waits for it; a late answer is read next time); the number of GENERATED."""
    answered, wait = 0, 20 if peer.pending else 0
    while (reply := sock.recv(wait)) is not None:
        msg = decode(reply, max_bytes=1 << 26)
        answered += msg.type == MsgType.GENERATED
        peer.observe(msg)
        wait = 0
    return answered


def test_live_fuzz_server_survives_and_the_honest_client_finishes(make_run):
    n = int(os.environ.get("FUZZ_MESSAGES", "3000"))
    # limits off: every hostile message is decoded and dispatched (the flood test below bans)
    run = _hostile_run(
        make_run,
        clients=3,  # client-2: the generation peer (client-1's connection turns into a generation session
        # now and then, which replaces client-1's other one)
        training__rounds=2,
        training__local_steps=6,
        server__limits={"max_errors": 0, "max_rate": 0},
        server__step_timeout_s=2.0,  # a step the attacker holds blocks training and generation that long
        server__inference=GEN_LIMITS,
    )
    server = run.server()
    _wait_listening(run)
    honest = run.client(0)
    bad, streams = _peer(run), _peer(run, "client-2")  # a training session, a generation session
    welcome = _hello(run, bad)
    gen = HostileGenerator(
        1234,
        session=welcome.header.session,
        hidden=welcome.header.meta["hidden"],
        hello=run.hello_meta(0, 1),
        max_bytes=int(run.cfg.transport.max_message_mb * 2**20),
    )
    gen_hello = {**run.hello_meta(2, 1), "config_keys": run.cfg.key_digests(), "generate": True}
    welcome = _ask(streams, encode(Header(MsgType.HELLO, meta=gen_hello)))
    peer = GenerationPeer(
        4321,
        session=welcome.header.session,
        hidden=welcome.header.meta["hidden"],
        hello=gen_hello,
        max_positions=GEN_LIMITS["max_positions"],
    )
    kinds: dict[str, int] = {}
    replies = answered = 0
    for i in range(n):
        if i % 5 == 4:  # every fifth from the generation session
            kind, frames = next(peer)
            streams.send(frames)
            answered += _read_answers(streams, peer)
        else:
            kind, frames = next(gen)
            bad.send(frames)
        kinds[kind] = kinds.get(kind, 0) + 1
        if i % 50 == 0:  # mostly a flood that does not read; now and then drain what came back
            while (reply := bad.recv(0)) is not None:
                replies += 1
                msg = decode(reply, max_bytes=1 << 26)
                if msg.type == MsgType.WELCOME:  # an impersonation HELLO was accepted: go on in its session
                    gen.session = msg.header.session
    bad.close()  # leave without reading the rest
    streams.send(encode(Header(MsgType.BYE, peer.session, 0, 0, Bye())))  # frees its streams' capacity
    time.sleep(0.1)
    streams.close()
    assert run.wait(honest, 240) == 0, run.log("client-0") + run.log("server")[-5000:]
    _honest_generation(run)  # the rounds are over: the trunk no longer changes between requests
    server.send_signal(signal.SIGINT)  # serving until stopped
    assert run.wait(server, 120) == 130, run.log("server")[-5000:]
    log = run.log("server")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    assert set(kinds) == set(KINDS) | set(GEN_KINDS) and replies > 0 and answered > 0
    assert len(log) < 400_000, f"server log grew to {len(log)} bytes for {n} hostile messages"
    metrics = (run.run_dir / "metrics" / "server.jsonl").stat().st_size
    assert metrics < 2_000_000, f"server metrics grew to {metrics} bytes"
    for line in (run.run_dir / "metrics" / "server.jsonl").read_text().splitlines():
        assert len(line) < 2000
    served = [m["event"] for m in run.metrics("server") if m["event"].startswith("generate_")]
    summary = {"messages": n, "kinds": kinds, "replies_read": replies, "server_log_bytes": len(log)}
    print(json.dumps({**summary, "generated": answered, "server": {e: served.count(e) for e in sorted(set(served))}}))


def test_flood_without_reading_then_vanish(make_run):
    run = _hostile_run(make_run)
    server = run.server()
    _wait_listening(run)
    honest = run.client(0)
    bad = _peer(run)
    junk = [b'{"v": 1, "type": "forward"}']
    for _ in range(20_000):
        bad.send(junk)
    bad.sock.close(0)  # gone without reading ~20k error replies
    _finishes_cleanly(run, server, honest)
    events = run.metrics("server")
    assert [m["reason"] for m in events if m["event"] == "ban"] == ["errors"]  # banned once, logged once
    assert sum(m["event"] == "error" for m in events) < 200  # not one metrics line per message
    assert not any(m["event"] == "error" and len(m.get("detail", "")) > 400 for m in events)
