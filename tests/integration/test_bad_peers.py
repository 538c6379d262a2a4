"""Unauthorised peers, malformed messages, and failures: the server stays up, nobody else suffers."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time

import pytest
import torch
import zmq

from splitfed.transport import ClientSocket, generate_keys
from splitfed.wire import Header, MsgType, decode, encode


def wait_listening(run, timeout=60):
    run.wait_for(lambda: any(m["event"] == "start" for m in run.metrics("server")), timeout, "server start")


def test_unknown_key_and_plaintext_clients_get_nothing(make_run, tmp_path):
    run = make_run(clients=1)
    server = run.server()
    wait_listening(run)
    endpoint = run.cfg.transport.endpoint
    hello = Header(MsgType.HELLO, meta=run.hello_meta(0, 1))
    stranger_keys = tmp_path / "stranger"
    generate_keys(stranger_keys, 1)
    (stranger_keys / "server.key").write_bytes((run.root / "keys" / "server.key").read_bytes())
    stranger = ClientSocket(endpoint, keys_dir=stranger_keys, name="client-0")
    plain = ClientSocket(endpoint, keys_dir=None, name="client-0", insecure=True)
    for sock in (stranger, plain):
        # once the server has refused the handshake there is no pipe, and a blocking send would wait forever
        with contextlib.suppress(zmq.Again):
            sock.sock.send_multipart(encode(hello), flags=zmq.NOBLOCK)
    assert stranger.recv(2000) is None and plain.recv(500) is None
    stranger.close()
    plain.close()
    # the legitimate client is served as usual
    client = run.client(0)
    assert run.wait(client) == 0, run.log("client-0")
    assert run.wait(server) == 0


class Attacker:
    """A peer with a valid key that sends garbage."""

    def __init__(self, run, name="client-1"):
        self.sock = ClientSocket(run.cfg.transport.endpoint, keys_dir=run.root / "keys", name=name)
        self.run = run

    def ask(self, frames, timeout_ms=10000):
        self.sock.send(frames)
        reply = self.sock.recv(timeout_ms)
        assert reply is not None, "no reply from the server"
        return decode(reply, max_bytes=1 << 26)

    def expect_error(self, frames, code, text=""):
        msg = self.ask(frames)
        assert msg.type == MsgType.ERROR, msg.header
        assert msg.header.meta["code"] == code, msg.header.meta
        assert text in msg.header.meta["detail"], msg.header.meta
        return msg.header.meta["detail"]


def test_malformed_messages_get_errors_and_a_good_client_finishes(make_run):
    run = make_run(clients=2, training__rounds=2, training__local_steps=6, transport__max_message_mb=1.0)
    server = run.server()
    wait_listening(run)
    good = run.client(0)
    bad = Attacker(run)

    def header(mtype, **kw):
        fields = {"v": 1, "type": mtype, "session": "", "round": 0, "step": 0, "meta": {}, "tensors": []}
        return json.dumps({**fields, **kw}).encode()

    bad.expect_error([b"{not json"], "malformed", "not UTF-8 JSON")
    bad.expect_error([header("launch_missiles")], "unknown_type", "unknown message type 'launch_missiles'")
    bad.expect_error([header("hello", v=99)], "version", "protocol version 1 expected")
    bad.expect_error(
        [header("hello", tensors=[{"name": "x", "dtype": "float32", "shape": [2]}])],
        "malformed",
        "lists 1 tensors but 0 frames",
    )
    bad.expect_error([header("forward")], "out_of_order", "before hello")
    hello = Header(MsgType.HELLO, meta=run.hello_meta(1, 3))
    bad.expect_error(
        encode(Header(MsgType.HELLO, meta=run.hello_meta(0, 3))),
        "wrong_identity",
        "belongs to client-1",
    )
    bad.expect_error(
        encode(Header(MsgType.HELLO, meta={**run.hello_meta(1, 3), "config_hash": "x"})), "config_mismatch"
    )
    bad.expect_error(
        encode(Header(MsgType.HELLO, meta={**run.hello_meta(1, 3), "model": "sha256:" + "0" * 64})),
        "config_mismatch",
        "different base model",
    )
    bad.expect_error(
        encode(Header(MsgType.HELLO, meta={**run.hello_meta(1, 3), "model": [1] * 99})),
        "malformed",
        "hello meta field 'model': expected a printable string of at most 256 characters, got [1, 1, 1, 1, ...]",
    )
    welcome = bad.ask(encode(hello))
    assert welcome.type == MsgType.WELCOME
    sid, hidden = welcome.header.session, welcome.header.meta["hidden"]

    def fwd(act, mask, **kw):
        return encode(Header(MsgType.FORWARD, sid, 0, 0, kw), {"act": act, "mask": mask})

    ok_mask = torch.ones(2, 5, dtype=torch.uint8)
    bad.expect_error(
        encode(Header(MsgType.BACKWARD, sid), {"grad": torch.zeros(2, 5, hidden)}),
        "out_of_order",
        "backward not allowed in stage ready",
    )
    bad.expect_error(
        fwd(torch.zeros(2, 5, hidden, dtype=torch.float16), ok_mask), "bad_tensor", "expected torch.float32"
    )
    bad.expect_error(fwd(torch.zeros(2, 5, hidden + 1), ok_mask), "bad_tensor", f"expected shape [2, 5, {hidden}]")
    nan = torch.zeros(2, 5, hidden)
    nan[0, 0, 0] = math.nan
    bad.expect_error(fwd(nan, ok_mask), "bad_tensor", "NaN or Inf")
    bad.expect_error(fwd(torch.zeros(2, 5, hidden), torch.zeros(2, 5, dtype=torch.uint8)), "bad_tensor", "0/1")
    bad.expect_error(fwd(torch.zeros(2, 5, hidden), torch.ones(2, 5, dtype=torch.int64)), "bad_tensor", "uint8")
    frames = encode(Header(MsgType.FORWARD, sid), {"act": torch.zeros(2, 5, hidden), "mask": ok_mask})
    bad.expect_error([frames[0], frames[1][:-4], frames[2]], "bad_tensor", "needs")
    bad.expect_error(fwd(torch.zeros(1, 4096, 64 + hidden), torch.ones(1, 4096, dtype=torch.uint8)), "too_large")
    bad.expect_error(encode(Header(MsgType.UPDATE, sid), {"bottom/x": torch.zeros(3)}), "bad_tensor", "adapter update")
    bad.expect_error(encode(Header(MsgType.FORWARD, "wrong-session")), "unknown_client")
    bad.sock.send(encode(Header(MsgType.BYE, sid)))
    time.sleep(0.2)
    bad.sock.close()
    assert run.wait(good) == 0, run.log("client-0") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    assert server.returncode == 0
    errors = [m for m in run.metrics("server") if m["event"] == "error"]
    assert len(errors) >= 15


def test_client_killed_mid_round_does_not_block_the_others(make_run):
    run = make_run(
        clients=2, training__rounds=2, training__local_steps=8, server__round_deadline_s=15.0, transport__timeout_s=3.0
    )
    server = run.server()
    wait_listening(run)
    survivor, victim = run.client(0), run.client(1)
    run.wait_for(lambda: any(m["event"] == "step" for m in run.metrics("client-1")), 60, "client-1's first step")
    victim.send_signal(signal.SIGKILL)
    assert run.wait(survivor) == 0, run.log("client-0") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    events = run.metrics("server")
    assert any(m["event"] == "dropped" and m["client"] == "client-1" for m in events)
    rounds = [m for m in events if m["event"] == "round"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(r["participants"] == ["client-0"] for r in rounds)
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_server_killed_and_resumed_loses_no_completed_round(make_run):
    run = make_run(clients=1, training__rounds=4, training__local_steps=150, transport__timeout_s=3.0)
    server = run.server()
    client = run.client(0)

    def round_done(r):
        return any(m["event"] == "round" and m["round"] == r for m in run.metrics("server"))

    run.wait_for(lambda: round_done(1), 240, "round 1 to close")  # 300 steps: slow on a loaded 2-core box
    time.sleep(0.3)  # into round 2
    server.send_signal(signal.SIGKILL)
    server.wait()
    state = json.loads((run.run_dir / "checkpoint" / "state.json").read_text())
    assert state["round_completed"] >= 1
    resumed = run.server("--resume")
    assert run.wait(client, 180) == 0, run.log("client-0") + run.log("server")
    assert run.wait(resumed) == 0, run.log("server")
    starts = [m for m in run.metrics("server") if m["event"] == "start"]
    assert starts[-1]["round"] == state["round_completed"] + 1
    closed = sorted({m["round"] for m in run.metrics("server") if m["event"] == "round"})
    assert closed == [0, 1, 2, 3]
    assert json.loads((run.run_dir / "checkpoint" / "state.json").read_text())["round_completed"] == 3
    assert any(m["event"] == "reconnect" for m in run.metrics("client-0"))


@pytest.mark.parametrize("compression", ["fp16", "bf16", "int8"])
def test_compressed_run_completes(make_run, compression):
    run = make_run(clients=1, training__rounds=1, transport__compression=compression)
    server, client = run.server(), run.client(0)
    assert run.wait(client) == 0, run.log("client-0") + run.log("server")
    assert run.wait(server) == 0
    steps = [m for m in run.metrics("client-0") if m["event"] == "step"]
    assert len(steps) == 3 and all(math.isfinite(m["loss"]) for m in steps)
