"""Hostile but authenticated peers: floods, peers that never read, garbage, all over real sockets on 127.0.0.1.

The loop must never block on one peer, must ban a peer over its rate or error budget (and let it
back after the cool-down), must never ban an honest client, and must not turn a flood into a
flood of log lines.  Limits run on a fake clock where the test is about them, so nothing sleeps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time

import pytest
import zmq

from splitfed.transport import (
    UNLIMITED,
    BanReason,
    ClientSocket,
    PeerLimits,
    RequestLoop,
    ServerSocket,
    TokenBucket,
    generate_keys,
    load_keypair,
)
from splitfed.wire import ErrorCode, Header, MsgType, WireError, decode, encode

GARBAGE = [b"\xff not json"]
log = logging.getLogger("test.flood")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def heartbeat(step: int) -> list:
    return encode(Header(MsgType.HEARTBEAT, step=step))


def echo_heartbeats(server: ServerSocket):
    """A dispatch that answers a heartbeat with a heartbeat of the same step and refuses the rest."""

    def dispatch(inc, msg):
        if msg.type != MsgType.HEARTBEAT:
            raise WireError(ErrorCode.UNKNOWN_TYPE, f"only heartbeats here, got {msg.type.value}")
        server.send(inc.identity, heartbeat(msg.header.step))

    return dispatch


def make_loop(server: ServerSocket, **kw) -> tuple[RequestLoop, list, list]:
    rejected, bans = [], []
    loop = RequestLoop(
        server, echo_heartbeats(server), max_bytes=1 << 20, log=log, on_reject=rejected.append, on_ban=bans.append, **kw
    )
    return loop, rejected, bans


def pump(loop: RequestLoop, n: int) -> None:
    """Receive and handle exactly `n` messages (in this thread)."""
    for _ in range(n):
        inc = loop.socket.recv(2000)
        assert inc is not None, "a message that was sent never arrived"
        loop.handle(inc)


def replies(client: ClientSocket, timeout_ms: int = 100) -> list:
    """Every reply waiting for `client` (decoded), until none comes within `timeout_ms`."""
    out = []
    while (frames := client.recv(timeout_ms)) is not None:
        out.append(decode(frames, max_bytes=1 << 20))
    return out


def raw_dealer(server: ServerSocket, name: bytes) -> zmq.Socket:
    """An insecure DEALER that reads (almost) nothing: one message queued, a tiny TCP receive buffer."""
    sock = server.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, name)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.connect(server.endpoint)
    return sock


@contextlib.contextmanager
def serving(loop: RequestLoop):
    """`loop.run` in a thread for the duration of the block."""
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, kwargs={"poll_ms": 5, "tick": stop.is_set}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the request loop is stuck (blocked in a send?)"


def timed_heartbeat(client: ClientSocket, step: int) -> float:
    t0 = time.perf_counter()
    client.send(heartbeat(step))
    frames = client.recv(1000)
    assert frames is not None, f"no answer to request {step} within 1 s"
    msg = decode(frames, max_bytes=1 << 20)
    assert (msg.type, msg.header.step) == (MsgType.HEARTBEAT, step)
    return time.perf_counter() - t0


@pytest.fixture
def insecure_server():
    server = ServerSocket("tcp://127.0.0.1:*", keys_dir=None, insecure=True, send_hwm=50)
    yield server
    server.close()


# ---------------------------------------------------------------------- the socket
def test_sends_to_a_full_or_gone_peer_are_dropped_and_counted(insecure_server):
    server = insecure_server
    slow = raw_dealer(server, b"slow")
    slow.send(b"hi")
    assert server.recv(2000).identity == b"slow"
    big = b"x" * (1 << 20)
    t0 = time.perf_counter()
    results = [server.send(b"slow", [big]) for _ in range(200)]  # it never reads: 200 MB cannot fit
    assert time.perf_counter() - t0 < 5.0
    n_ok = results.index(False)
    assert 50 <= n_ok < 200 and not any(results[n_ok:])
    assert server.dropped[b"slow"] == 200 - n_ok == server.stats.full and server.stats.sent == n_ok
    slow.close()
    deadline = time.monotonic() + 5
    while server.stats.gone == 0 and time.monotonic() < deadline:
        assert server.recv(10) is None  # polling is how the ROUTER learns that the peer left
        assert server.send(b"slow", [b"late"]) is False
    assert server.stats.gone >= 1
    assert server.send(b"nobody", [b"?"]) is False
    assert server.dropped[b"nobody"] == 1


def test_server_socket_refuses_bad_queue_sizes():
    with pytest.raises(ValueError, match="send_hwm: expected an integer >= 1, got 0"):
        ServerSocket("tcp://127.0.0.1:*", keys_dir=None, insecure=True, send_hwm=0)


# ---------------------------------------------------------------------- the loop under a flood
def test_a_flooder_that_never_reads_does_not_block_the_loop(insecure_server):
    """No limits at all: only the non-blocking send keeps the loop alive for the good peer."""
    server = insecure_server
    loop, _, bans = make_loop(server, limits=UNLIMITED)
    good = ClientSocket(server.endpoint, keys_dir=None, name="client-0", insecure=True)
    flooder = raw_dealer(server, b"flooder")
    stop, sent = threading.Event(), [0]

    def flood():
        while not stop.is_set():
            try:
                flooder.send_multipart(GARBAGE, flags=zmq.DONTWAIT)
                sent[0] += 1
            except zmq.Again:
                time.sleep(0.001)

    with serving(loop):
        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while server.dropped.get(b"flooder", 0) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.dropped.get(b"flooder", 0) >= 100, f"the flood ({sent[0]} sent) never filled the queue"
        during = [timed_heartbeat(good, step) for step in range(1, 21)]  # while the flood goes on
        stop.set()
        thread.join(5)
        flooder.close()  # gone without reading a thing
        after = [timed_heartbeat(good, step) for step in range(21, 31)]
    good.close()
    assert max(during + after) < 1.0 and bans == []
    assert sent[0] > 1000 and server.stats.full >= 100


def test_log_and_metrics_lines_of_a_flood_are_bounded(insecure_server, caplog):
    caplog.set_level(logging.INFO)
    server = insecure_server
    loop, rejected, bans = make_loop(server)  # the defaults
    flooder = ClientSocket(server.endpoint, keys_dir=None, name="client-1", insecure=True)
    n = 5000
    t0 = time.monotonic()
    with serving(loop):
        for _ in range(n):
            flooder.send(GARBAGE)
        deadline = time.monotonic() + 15
        while len(rejected) + loop.unreported + loop.dropped < n - 1:  # the 101st error bans: not reported
            assert time.monotonic() < deadline, "the flood was not handled in time"
            time.sleep(0.01)
    seconds = math.ceil(time.monotonic() - t0)
    flooder.close()
    limits = PeerLimits()
    assert [b.reason for b in bans] == [BanReason.ERRORS] and loop.bans == 1
    assert loop.dropped == n - limits.max_errors - 1  # the rest was dropped unread
    assert len(rejected) <= limits.report_burst + limits.max_reports * seconds
    assert len(caplog.records) <= 2 * loop.bans + 2 * seconds + 2, [r.getMessage() for r in caplog.records]
    ban_line = [r.getMessage() for r in caplog.records if "banned" in r.getMessage()]
    assert len(ban_line) == 1 and "101 rejected messages within 10 s (limit 100)" in ban_line[0]


# ---------------------------------------------------------------------- the limits (fake clock)
def test_the_rate_limit_bans_a_flooder_and_lets_it_back_after_the_cooldown(insecure_server, caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    loop, rejected, bans = make_loop(insecure_server, limits=PeerLimits(max_rate=10, burst=20), clock=clock)
    client = ClientSocket(insecure_server.endpoint, keys_dir=None, name="client-0", insecure=True)
    for step in range(1, 26):  # 25 valid messages at one instant: 20 fit the burst
        client.send(heartbeat(step))
    pump(loop, 25)
    assert [m.header.step for m in replies(client)] == list(range(1, 21))
    assert [(b.reason, b.cooldown_s, b.user) for b in bans] == [(BanReason.RATE, 30.0, None)]
    assert "over 10 messages/s (burst 20)" in bans[0].detail and loop.dropped == 5 and rejected == []
    clock.t += 29.0  # still cooling down: dropped unanswered
    client.send(heartbeat(26))
    pump(loop, 1)
    assert replies(client) == [] and loop.banned(bans[0].identity)
    clock.t += 1.5  # cool-down over: a full budget again
    for step in range(27, 47):
        client.send(heartbeat(step))
    pump(loop, 20)
    assert [m.header.step for m in replies(client)] == list(range(27, 47)) and len(bans) == 1
    assert any(
        "cool-down over, served again (6 messages were dropped unread)" in r.getMessage() for r in caplog.records
    )
    client.close()


def test_the_error_budget_bans_a_peer_sending_only_garbage(insecure_server):
    clock = FakeClock()
    loop, rejected, bans = make_loop(insecure_server, limits=PeerLimits(max_errors=5, error_window_s=10), clock=clock)
    client = ClientSocket(insecure_server.endpoint, keys_dir=None, name="client-0", insecure=True)
    for _ in range(4):  # 4 errors, 3 s apart: never more than 4 inside a 10 s window
        client.send(GARBAGE)
        pump(loop, 1)
        clock.t += 3.0
    assert [m.header.meta["code"] for m in replies(client)] == ["malformed"] * 4 and bans == []
    for _ in range(8):  # at one instant: the window fills
        client.send(GARBAGE)
    pump(loop, 8)
    # three older errors are still in the window: two more are answered, the sixth bans, five are dropped unread
    assert len(replies(client)) == 2
    assert [b.reason for b in bans] == [BanReason.ERRORS]
    assert bans[0].detail == "6 rejected messages within 10 s (limit 5)"
    assert len(rejected) == 4 + 2 and loop.dropped == 5
    client.send(heartbeat(1))  # even a valid message is ignored while cooling down
    pump(loop, 1)
    assert replies(client) == []
    client.close()


def test_an_honest_client_is_never_banned(insecure_server):
    """A request every 10 ms for 2 s plus a heartbeat every 0.5 s, with the default limits."""
    clock = FakeClock()
    loop, rejected, bans = make_loop(insecure_server, clock=clock)
    client = ClientSocket(insecure_server.endpoint, keys_dir=None, name="client-0", insecure=True)
    answered = 0
    for step in range(1, 201):
        clock.t += 0.010
        n = 2 if step % 50 == 0 else 1
        for k in range(n):
            client.send(heartbeat(step * 10 + k))
        pump(loop, n)
        for _ in range(n):
            frames = client.recv(2000)
            assert frames is not None and decode(frames, max_bytes=1 << 20).type == MsgType.HEARTBEAT
            answered += 1
    assert answered == 204 and bans == [] and rejected == [] and loop.dropped == 0
    client.close()


def test_curve_bans_stick_to_the_key_across_reconnects(tmp_path, caplog):
    keys = generate_keys(tmp_path / "keys", 2)
    server = ServerSocket("tcp://127.0.0.1:*", keys_dir=keys)
    clock = FakeClock()
    loop, rejected, bans = make_loop(server, limits=PeerLimits(max_errors=3), clock=clock)
    bad = ClientSocket(server.endpoint, keys_dir=keys, name="client-0")
    for _ in range(4):
        bad.send(GARBAGE)
    pump(loop, 4)
    assert len(replies(bad, timeout_ms=300)) == 3
    public0 = load_keypair(keys, "client-0")[0].decode()
    assert [(b.reason, b.user) for b in bans] == [(BanReason.ERRORS, public0)]
    assert any("client-0" in r.getMessage() and "banned for 30 s" in r.getMessage() for r in caplog.records)
    bad.reconnect()  # a new connection, a new routing id, the same key: still banned
    bad.send(heartbeat(1))
    pump(loop, 1)
    assert replies(bad, timeout_ms=300) == []
    other = ClientSocket(server.endpoint, keys_dir=keys, name="client-1")
    other.send(heartbeat(2))
    pump(loop, 1)
    assert [m.header.step for m in replies(other, timeout_ms=300)] == [2]
    clock.t += 31.0
    bad.send(heartbeat(3))
    pump(loop, 1)
    assert [m.header.step for m in replies(bad, timeout_ms=300)] == [3]
    bad.close()
    other.close()
    server.close()


# ---------------------------------------------------------------------- the pieces
def test_token_bucket_refills_at_its_rate_up_to_its_burst():
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert [bucket.take(0.5), bucket.take(0.5)] == [True, False]  # 0.5 s at 2/s: one token
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never more than the burst


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_rate": 0}, "max_rate: expected a finite number > 0 or None, got 0"),
        ({"burst": 0}, "burst: expected an integer >= 1, got 0"),
        ({"max_errors": -1}, "max_errors: expected an integer >= 0, got -1"),
        ({"cooldown_s": math.inf}, "cooldown_s: expected a finite number > 0, got inf"),
    ],
)
def test_peer_limits_name_a_bad_value(kw, message):
    with pytest.raises(ValueError, match=message):
        PeerLimits(**kw)
