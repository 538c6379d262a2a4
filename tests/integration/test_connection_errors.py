"""Setup mistakes a user makes when starting server and clients by hand: each is answered quickly,
in one clear message that names the endpoint and what to check."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

from splitfed.transport import generate_keys
from splitfed.transport.keys import key_fingerprint, load_public


def wait_listening(run, timeout=90):
    run.wait_for(lambda: any(m["event"] == "start" for m in run.metrics("server")), timeout, "server start")


def timed_wait(run, p, timeout=120) -> float:
    t0 = time.monotonic()
    run.wait(p, timeout)
    return time.monotonic() - t0


def test_refused_key_gives_up_soon_and_the_server_logs_the_key_once(make_run, tmp_path):
    run = make_run(clients=1)
    server = run.server()
    wait_listening(run)
    stranger = tmp_path / "stranger"
    generate_keys(stranger, 1)
    shutil.copy(run.root / "keys" / "server.key", stranger / "server.key")
    client = run.client(0, "--set", f"transport.keys_dir={stranger}")
    took = timed_wait(run, client, timeout=90)
    out = run.log("client-0")
    assert client.returncode == 2, out
    fingerprint = key_fingerprint(load_public(stranger, "client-0"))
    assert f"{stranger / 'client-0.key'} (fingerprint {fingerprint})" in out, out
    assert "allow-list" in out and "splitfed keys allow" in out and run.cfg.transport.endpoint in out, out
    assert "Traceback" not in out, out
    assert took < 60, f"gave up after {took:.0f} s"
    # the client retried several times within its grace period; the server logged the key once
    assert run.log("server").count(fingerprint) == 1, run.log("server")
    assert server.poll() is None  # and kept serving


def test_no_server_gives_up_after_connect_timeout_naming_the_endpoint(make_run):
    run = make_run(clients=1, transport__connect_timeout_s=2.0)
    client = run.client(0)
    took = timed_wait(run, client, timeout=90)
    out = run.log("client-0")
    assert client.returncode == 2, out
    assert f"no server at {run.cfg.transport.endpoint}" in out and "firewall" in out, out
    assert "Traceback" not in out, out
    assert took < 45, f"gave up after {took:.0f} s"


def test_port_in_use_is_one_line_and_exit_2(make_run):
    run = make_run(clients=1)
    host, port = run.cfg.transport.endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        p = subprocess.run(
            [sys.executable, "-m", "splitfed.cli.main", "server", "--no-progress", "--config", str(run.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert p.returncode == 2, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("splitfed: error:")]
    assert errors == [
        f"splitfed: error: cannot listen on {run.cfg.transport.endpoint}: address already in use "
        "(another server, or another program, holds the port: stop it or choose another port in the endpoint)"
    ], p.stderr
    assert "Traceback" not in p.stderr and "ZMQError" not in p.stderr, p.stderr


def test_another_clients_key_pair_is_refused_at_once(make_run, tmp_path):
    run = make_run(clients=2)
    server = run.server()
    wait_listening(run)
    keys = tmp_path / "imposter"
    shutil.copytree(run.root / "keys", keys)
    for suffix in ("key", "key_secret", "sign_secret"):  # client-0's pair under client-1's name
        shutil.copy(keys / f"client-0.{suffix}", keys / f"client-1.{suffix}")
    client = run.client(1, "--set", f"transport.keys_dir={keys}")
    took = timed_wait(run, client, timeout=90)
    out = run.log("client-1")
    assert client.returncode == 2, out
    fingerprint = key_fingerprint(load_public(keys, "client-0"))
    assert "wrong_identity" in out and f"(fingerprint {fingerprint}) belongs to client-0, not client-1" in out, out
    assert "reconnecting" not in out and "Traceback" not in out, out
    assert took < 45, f"gave up after {took:.0f} s"  # process start included; no retries
    assert server.poll() is None


def test_progress_in_a_log_has_no_carriage_returns(make_run):
    run = make_run(clients=1, training__rounds=1, training__local_steps=3)
    server = run._spawn(["server", "--config", str(run.config_path)], "server.log")
    client = run._spawn(["client", "--config", str(run.config_path), "--client-id", "0"], "client-0.log")
    assert run.wait(client) == 0, run.log("client-0")
    assert run.wait(server) == 0, run.log("server")
    for name in ("client-0", "server"):
        assert "\r" not in run.log(name), repr(run.log(name)[-2000:])
    assert "client-0: 3/3 step" in run.log("client-0"), run.log("client-0")
    assert "trunk steps: 3/3 step" in run.log("server"), run.log("server")
