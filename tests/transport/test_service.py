"""The shared request loop over a real ROUTER socket: every failure becomes an ERROR reply, the loop goes on."""

import logging

import pytest

from splitfed.transport import ClientSocket, RequestLoop, ServerSocket
from splitfed.wire import ErrorCode, Header, MsgType, WireError, decode, encode


@pytest.fixture
def service():
    server = ServerSocket("tcp://127.0.0.1:*", keys_dir=None, insecure=True)
    seen, rejected = [], []

    def dispatch(inc, msg):
        seen.append(msg.type)
        if msg.type == MsgType.FORWARD:
            raise WireError(ErrorCode.BAD_TENSOR, "act: no")
        if msg.type == MsgType.BACKWARD:
            raise ZeroDivisionError("a bug")
        server.send(inc.identity, encode(Header(MsgType.HEARTBEAT, step=msg.header.step)))

    loop = RequestLoop(server, dispatch, max_bytes=1 << 20, log=logging.getLogger("test"), on_reject=rejected.append)
    client = ClientSocket(server.endpoint, keys_dir=None, name="client-0", insecure=True)
    yield loop, client, seen, rejected
    client.close()
    server.close()


def _exchange(loop, client, frames):
    client.send(frames)
    inc = None
    while inc is None:
        inc = loop.socket.recv(2000)
    loop.handle(inc)
    return decode(client.recv(2000), max_bytes=1 << 20)


def test_errors_become_replies_that_name_the_request(service):
    loop, client, seen, rejected = service
    bad = _exchange(loop, client, encode(Header(MsgType.FORWARD, step=7)))
    assert (bad.type, bad.header.step, bad.header.meta["code"]) == (MsgType.ERROR, 7, "bad_tensor")
    bug = _exchange(loop, client, encode(Header(MsgType.BACKWARD, step=8)))
    assert bug.header.meta == {"code": "server", "detail": "ZeroDivisionError: a bug"} and bug.header.step == 8
    garbage = _exchange(loop, client, [b"\xff not json"])
    assert garbage.header.meta["code"] == "malformed" and garbage.header.step == 0
    ok = _exchange(loop, client, encode(Header(MsgType.HEARTBEAT, step=9)))
    assert (ok.type, ok.header.step) == (MsgType.HEARTBEAT, 9)
    assert seen == [MsgType.FORWARD, MsgType.BACKWARD, MsgType.HEARTBEAT]
    assert [e.code for e in rejected] == [ErrorCode.BAD_TENSOR, ErrorCode.SERVER, ErrorCode.MALFORMED]


def test_run_stops_when_tick_says_so_or_time_is_up(service):
    loop, client, seen, _ = service
    assert loop.run(poll_ms=10, tick=lambda: True) is True
    assert loop.run(poll_ms=10, max_seconds=0.05) is False
