"""Many clients against one server: the load benchmark's 10-client setting as a smoke test,
and the client link behaviour it found broken at scale."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from splitfed.client.link import Connection
from splitfed.config import parse_config
from splitfed.transport import ServerSocket, generate_keys
from splitfed.wire import ErrorCode, Header, MsgType, decode, encode, error_frames
from splitfed.wire.meta import Hello, Welcome

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def many_clients(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import many_clients

    return many_clients


def test_ten_clients_finish_every_step_without_stalls(many_clients, tmp_path):
    """The benchmark's small setting: 10 real clients (CURVE, one key each) in 2 worker processes,
    cross-client batching on.  A small heartbeat makes a HELLO that waits longer than a heartbeat
    likely, which used to send clients into spurious reconnects (see the test below)."""
    t0 = time.monotonic()
    r = many_clients.run_setting(
        10,
        steps=3,
        batching=True,
        workers=2,
        per_worker=5,
        heartbeat_s=0.1,
        timeout_s=30.0,
        deadline_s=60.0,
        root=tmp_path,
    )
    took = time.monotonic() - t0
    assert r.stall_count == 0, many_clients.describe(r)
    assert r.finished == 10 and not r.stalls and not r.server_events
    assert r.server_exit == 0
    assert r.steps == 10 * 3 == r.clients * r.steps_expected
    assert 0 < r.p50_s <= r.p99_s < 30
    assert r.steps_per_s > 0 and r.wall_s > 0
    assert r.server_rss_mib > 0 and r.server_cpu_s > 0
    assert "stalls 0" in many_clients.describe(r)
    assert took < 120, f"the smoke setting took {took:.0f} s"


def test_quantile_matches_numpy_linear(many_clients):
    import numpy as np

    xs = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4, 1.5]
    for q in (0.0, 0.5, 0.99, 1.0):
        assert many_clients._quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)))


def test_no_heartbeat_with_an_unknown_session_while_hello_waits(tmp_path):
    """Regression (found at 100-250 clients): a server that takes longer than heartbeat_s to get to
    a HELLO used to receive heartbeats carrying no session id; having handled the HELLO first, it
    answers them with unknown_client, and the client's next request read that stale error as
    "session lost" and reconnected.  The client must stay quiet until its WELCOME."""
    keys = generate_keys(tmp_path / "keys", 1)
    server = ServerSocket("tcp://127.0.0.1:0", keys_dir=keys)
    cfg = parse_config(
        {
            "data": {"clients": 1},
            "transport": {"endpoint": server.endpoint, "keys_dir": str(keys), "heartbeat_s": 0.05, "timeout_s": 5.0},
        }
    )
    seen: list[MsgType] = []
    failure: list[BaseException] = []

    def slow_server() -> None:
        """Like the real server: HELLO first, then what queued behind it, by session id."""
        try:
            hello = server.recv(5000)
            seen.append(decode(hello.frames, max_bytes=1 << 20).type)
            time.sleep(0.5)  # ten heartbeat periods before the HELLO is handled
            queued = []
            while (inc := server.recv(0)) is not None:
                queued.append(inc)
            welcome = Welcome(round=0, rounds=1, done=False, hidden=8, compression="fp32", mode="shared")
            server.send(hello.identity, encode(Header(MsgType.WELCOME, "s1", 0, 0, welcome)))
            seen.append(MsgType.WELCOME)
            for inc in queued:
                msg = decode(inc.frames, max_bytes=1 << 20)
                seen.append(msg.type)
                if msg.header.session != "s1":
                    server.send(inc.identity, error_frames(ErrorCode.UNKNOWN_CLIENT, "unknown session id"))
            while True:
                inc = server.recv(5000)
                msg = decode(inc.frames, max_bytes=1 << 20)
                seen.append(msg.type)
                if msg.type == MsgType.FORWARD:
                    server.send(inc.identity, encode(Header(MsgType.ACTIVATIONS, "s1", 0, msg.header.step)))
                    return
                server.send(inc.identity, encode(Header(MsgType.HEARTBEAT, "s1", 0)))
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            failure.append(exc)

    thread = threading.Thread(target=slow_server, daemon=True)
    thread.start()
    conn = Connection(cfg, 0, insecure=False)
    try:
        welcome = conn.request(Header(MsgType.HELLO, meta=Hello(0, "h", "m", 1)), expect=MsgType.WELCOME)
        conn.session = welcome.header.session
        reply = conn.request(Header(MsgType.FORWARD, conn.session, 0, 0), expect=MsgType.ACTIVATIONS, step=0)
    finally:
        thread.join(10)
        conn.close()
        server.close()
    assert not failure, failure
    assert reply.type == MsgType.ACTIVATIONS
    assert seen[: seen.index(MsgType.WELCOME)] == [MsgType.HELLO]  # nothing sent while the HELLO waited
    assert seen[-1] == MsgType.FORWARD
