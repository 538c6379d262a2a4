"""The pure parts of connection diagnosis: monitor events -> state -> message; the allow-list
logs each refused key once in bounded memory; a port in use and a refused send fail clearly."""

from __future__ import annotations

import logging
import socket
import time

import pytest
import zmq

from splitfed.transport import ClientSocket, ListenError, NotSent, ServerSocket, generate_keys
from splitfed.transport.allowlist import AllowList
from splitfed.transport.keys import key_fingerprint
from splitfed.transport.linkstate import KeyRef, LinkEvents, LinkState, explain

EP = "tcp://10.0.0.7:5555"
OWN = KeyRef("keys/client-0.key", "aaaa bbbb cccc dddd")
SERVER = KeyRef("keys/server.key", "1111 2222 3333 4444")


def events(*names: str) -> LinkEvents:
    ev = LinkEvents()
    for name in names:
        ev.record(getattr(zmq, f"EVENT_{name}"))
    return ev


def say(ev: LinkEvents, **kw) -> str:
    return explain(ev, EP, waited_s=30, own=kw.get("own", OWN), server=kw.get("server", SERVER))


def test_nothing_listens():
    ev = events()
    assert ev.state == LinkState.UNREACHED
    assert say(ev).startswith(f"no server at {EP} after 30 s: check that `splitfed server` is running")
    assert "firewall" in say(ev)


def test_refused_key_names_the_key_file_and_the_allow_list():
    ev = events("CONNECTED", "HANDSHAKE_FAILED_AUTH", "DISCONNECTED")
    assert ev.state == LinkState.REFUSED  # ZeroMQ does not retry a refused handshake
    assert say(ev) == (
        f"the server at {EP} refused this client's key keys/client-0.key (fingerprint aaaa bbbb cccc dddd): it is "
        "not in the server's allow-list; send that public key file to the server's operator, who installs it "
        "with `splitfed keys allow` and restarts the server"
    )


def test_wrong_server_key_names_server_key_and_its_fingerprint():
    ev = events("CONNECTED", "HANDSHAKE_FAILED_NO_DETAIL", "DISCONNECTED", "CONNECTED")
    assert ev.state == LinkState.CONNECTED and ev.failed == 1
    assert "the server key keys/server.key (fingerprint 1111 2222 3333 4444) is probably not" in say(ev)
    assert "--insecure" in say(ev, own=None, server=None)


def test_connected_but_no_handshake_and_ready_but_silent():
    assert "no handshake completed in 30 s" in say(events("CONNECTED"))
    ready = events("CONNECTED", "HANDSHAKE_SUCCEEDED")
    assert ready.state == LinkState.READY
    assert say(ready) == f"the server at {EP} accepted the connection but did not answer within 30 s"


def test_trouble_counts_start_again_after_a_handshake_and_with_a_fresh_socket():
    ev = events("CONNECTED", "HANDSHAKE_FAILED_NO_DETAIL", "CONNECTED", "HANDSHAKE_SUCCEEDED", "DISCONNECTED")
    assert (ev.handshakes, ev.failed, ev.state) == (1, 0, LinkState.UNREACHED)
    ev.record(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    ev.new_socket()
    assert (ev.handshakes, ev.refused, ev.state) == (1, 0, LinkState.UNREACHED)


def test_allow_list_accepts_its_keys_and_logs_each_refused_key_once(caplog):
    good, bad = (zmq.curve_keypair()[0] for _ in range(2))
    allow = AllowList({good.decode(): "client-0"}, remember=2)
    with caplog.at_level(logging.WARNING, logger="splitfed.transport"):
        assert allow.callback("*", good)
        assert not any(allow.callback("*", bad) for _ in range(50))
    assert caplog.text.count(key_fingerprint(bad)) == 1
    others = [zmq.curve_keypair()[0] for _ in range(5)]
    for key in others:
        allow.callback("*", key)
    assert len(allow.refused) == 2  # bounded: the oldest refusals are forgotten


@pytest.fixture
def keys(tmp_path):
    generate_keys(tmp_path / "keys", 1)
    return tmp_path / "keys"


def test_port_in_use_raises_listen_error(keys):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        endpoint = f"tcp://127.0.0.1:{squatter.getsockname()[1]}"
        with pytest.raises(ListenError, match=r"^cannot listen on tcp://127\.0\.0\.1:\d+: address already in use \("):
            ServerSocket(endpoint, keys_dir=keys)


def test_send_after_a_refused_handshake_fails_at_once(keys, tmp_path):
    server = ServerSocket("tcp://127.0.0.1:0", keys_dir=keys)
    stranger = tmp_path / "stranger"
    generate_keys(stranger, 1)
    (stranger / "server.key").write_bytes((keys / "server.key").read_bytes())
    client = ClientSocket(server.endpoint, keys_dir=stranger, name="client-0")
    try:
        deadline = time.monotonic() + 5
        while client.state != LinkState.REFUSED and time.monotonic() < deadline:
            server.recv(50)
        assert client.state == LinkState.REFUSED
        t0 = time.monotonic()
        with pytest.raises(NotSent, match="refused this client's key"):
            client.send([b"x"], timeout_ms=5000)
        assert time.monotonic() - t0 < 1
    finally:
        client.close()
        server.close()
