"""Networked split learning with real processes: exactness, aggregation, export."""

from __future__ import annotations

import pytest
import torch

from splitfed.client.data import client_examples, pad_id, round_batches
from splitfed.models import apply_lora, load_pretrained, split_model
from splitfed.training import OptimConfig, SplitTrainer


def inprocess_losses(cfg) -> list[float]:
    """The same run in one process: same model, seeds, data order, optimizer."""
    pre = load_pretrained(cfg.model.name)
    split = split_model(pre.model, tuple(cfg.model.cut))
    apply_lora(split, cfg.lora.to_split_lora(), seed=cfg.run.seed)
    trainer = SplitTrainer(split, OptimConfig(lr=cfg.training.lr, weight_decay=cfg.training.weight_decay))
    examples = client_examples(cfg, 0, pre.tokenizer)
    losses = []
    for rnd in range(cfg.training.rounds):
        for batch in round_batches(cfg, examples, 0, rnd, pad_id(pre.tokenizer)):
            losses.append(trainer.step(batch).loss)
    return losses


@pytest.mark.parametrize("mode", ["shared", "per_client"])
def test_one_client_follows_the_inprocess_trajectory(make_run, mode):
    run = make_run(clients=1, server__mode=mode)
    server, client = run.server(), run.client(0)
    assert run.wait(client) == 0, run.log("client-0") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    got = [m["loss"] for m in run.metrics("client-0") if m["event"] == "step"]
    want = inprocess_losses(run.cfg)
    assert len(got) == len(want) == 6
    assert got == pytest.approx(want, abs=1e-5)
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (run.run_dir / "checkpoint" / "state.json").is_file()


def test_three_clients_aggregate_is_the_weighted_mean(make_run):
    from safetensors.torch import load_file

    run = make_run(clients=3, data__partition="dirichlet", data__alpha=0.5, training__rounds=1)
    server = run.server()
    clients = [run.client(k) for k in range(3)]
    for k, c in enumerate(clients):
        assert run.wait(c) == 0, run.log(f"client-{k}") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    sizes = {k: next(m["n_samples"] for m in run.metrics(f"client-{k}") if m["event"] == "start") for k in range(3)}
    assert len(set(sizes.values())) > 1  # non-IID sizes: the weights matter
    updates = {k: load_file(run.run_dir / "clients" / f"client-{k}" / "update-round-0.safetensors") for k in range(3)}
    aggregate = load_file(run.run_dir / "checkpoint" / "clients.safetensors")
    total = sum(sizes.values())
    assert set(aggregate) == set(updates[0]) and aggregate
    for key, value in aggregate.items():
        want = sum(updates[k][key].double() * sizes[k] / total for k in range(3)).float()
        torch.testing.assert_close(value, want, atol=1e-7, rtol=1e-6)
    assert any(not torch.equal(updates[0][k], updates[1][k]) for k in aggregate)  # clients really differ
    rounds = [m for m in run.metrics("server") if m["event"] == "round"]
    assert rounds[0]["participants"] == ["client-0", "client-1", "client-2"]


def test_launch_local_runs_server_and_clients_as_processes(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [
        sys.executable,
        str(root / "examples" / "launch_local.py"),
        "--set",
        "model.name=tiny-llama",
        "--set",
        "model.cut=[1, 3]",
        "--set",
        f"run.dir={tmp_path / 'run'}",
        "--set",
        "training.rounds=2",
        "--set",
        "training.local_steps=3",
        "--set",
        "data.max_length=48",
        "--set",
        "data.eval_examples=4",
    ]
    from splitfed.models import prepare

    prepare("tiny-llama")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "merged PEFT adapter" in out.stdout and "client-2" in out.stdout
    assert "preparing" not in out.stdout  # the model was already in the cache
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    # a failing process makes the launcher fail
    bad = subprocess.run([*cmd, "--set", "model.cut=[2, 28]"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "invalid cut" in bad.stdout


def test_cross_client_batching_run(make_run):
    run = make_run(clients=3, server__batch_clients=True, training__rounds=2, training__local_steps=6)
    server = run.server()
    clients = [run.client(k) for k in range(3)]
    for k, c in enumerate(clients):
        assert run.wait(c) == 0, run.log(f"client-{k}") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    forwards = [m for m in run.metrics("server") if m["event"] == "forward" and m.get("train")]
    assert any(m.get("batched", 1) > 1 for m in forwards), "no step was batched across clients"
    steps = sum(1 for k in range(3) for m in run.metrics(f"client-{k}") if m["event"] == "step")
    assert steps == 3 * 2 * 6


def test_launch_local_report_when_clients_withhold_their_loss(tmp_path, capsys):
    """With privacy on the clients keep their loss: the summary says so instead of dividing by zero."""
    import importlib.util
    import json
    from pathlib import Path

    from splitfed.config import RunConfig

    spec = importlib.util.spec_from_file_location(
        "launch_local", Path(__file__).resolve().parents[2] / "examples" / "launch_local.py"
    )
    launch_local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_local)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    rounds = [{"event": "round", "round": 0, "participants": ["client-0"], "losses": {"client-0": None}}]
    (metrics / "server.jsonl").write_text("".join(json.dumps(m) + "\n" for m in rounds))
    done = {"event": "done", "ppl_before": 30.0, "ppl_after": 29.0, "bytes_out": 1e6, "bytes_in": 1e6}
    (metrics / "client-0.jsonl").write_text(json.dumps(done) + "\n")
    assert launch_local.report(tmp_path, RunConfig().with_overrides(**{"data.clients": 1})) == 0
    out = capsys.readouterr().out
    assert "withheld" in out and "30.00" in out
