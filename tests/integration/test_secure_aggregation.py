"""Secure aggregation over the real transport: equals plain FedAvg within quantisation; survives a
client that dies between masked input and unmask."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from splitfed.metrics import read_metrics


def _updates_and_sizes(run, clients, rnd):
    from safetensors.torch import load_file

    sizes = {k: next(m["n_samples"] for m in run.metrics(f"client-{k}") if m["event"] == "start") for k in clients}
    ups = {k: load_file(run.run_dir / "clients" / f"client-{k}" / f"update-round-{rnd}.safetensors") for k in clients}
    return ups, sizes


def test_secure_round_equals_plain_fedavg(make_run):
    from safetensors.torch import load_file

    run = make_run(
        clients=3, data__partition="dirichlet", data__alpha=0.5, training__rounds=1, aggregation__secure=True
    )
    server = run.server()
    clients = [run.client(k) for k in range(3)]
    for k, c in enumerate(clients):
        assert run.wait(c) == 0, run.log(f"client-{k}") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    ups, sizes = _updates_and_sizes(run, range(3), 0)
    total = sum(sizes.values())
    aggregate = load_file(run.run_dir / "checkpoint" / "clients.safetensors")
    step = 2 * run.cfg.aggregation.clip / 2**run.cfg.aggregation.bits  # one quantisation level
    worst = 0.0
    for key, value in aggregate.items():
        want = sum(ups[k][key].double() * sizes[k] / total for k in range(3))
        worst = max(worst, (value.double() - want).abs().max().item())
    assert 0 < worst <= 3 * step  # quantised, not plain: close but not bit-equal
    events = [m["event"] for m in run.metrics("server")]
    assert "secagg_done" in events and "update" in events
    # the server never received a client's adapter in the clear
    assert not any(m["event"] == "update" and m.get("tensors") for m in run.metrics("server"))


def test_secure_round_survives_a_client_dying_after_its_masked_input(make_run):
    from safetensors.torch import load_file

    run = make_run(
        clients=3,
        training__rounds=1,
        aggregation__secure=True,
        aggregation__stage_timeout_s=3.0,
        transport__timeout_s=3.0,
    )
    server = run.server()
    c0, c1 = run.client(0), run.client(1)
    victim = Path(__file__).with_name("crashing_client.py")  # dies once its masked input is in
    c2 = run.spawn([sys.executable, str(victim), str(run.config_path), "2"], "client-2.log")
    assert run.wait(c2) == 3, run.log("client-2")  # died right after its masked input left
    for k, c in ((0, c0), (1, c1)):
        assert run.wait(c) == 0, run.log(f"client-{k}") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    done = next(m for m in read_metrics(run.run_dir / "metrics" / "server.jsonl") if m["event"] == "secagg_done")
    assert done["survivors"] == [0, 1, 2]  # client 2's masked input is in the sum: its mask was reconstructed
    ups, sizes = _updates_and_sizes(run, range(3), 0)
    total = sum(sizes.values())
    aggregate = load_file(run.run_dir / "checkpoint" / "clients.safetensors")
    for key, value in aggregate.items():
        want = sum(ups[k][key].double() * sizes[k] / total for k in range(3))
        torch.testing.assert_close(value.double(), want, atol=1e-6, rtol=0)
