"""`splitfed server --nproc 2`: the trunk sharded over two gloo ranks under torchrun serves a real
client over CURVE, and the run equals the single-process server's."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file


def test_two_rank_server_equals_the_one_rank_server(make_run):
    one, two = make_run(clients=1), make_run(clients=1)
    procs = [(one, one.server(), one.client(0)), (two, two.server("--nproc", "2"), two.client(0))]
    for run, server, client in procs:
        assert run.wait(client, timeout=240) == 0, run.log("client-0") + run.log("server")
        assert run.wait(server, timeout=120) == 0, run.log("server")
    assert "2 ranks (FSDP2)" in two.log("server")
    losses = [[m["loss"] for m in run.metrics("client-0") if m["event"] == "step"] for run in (one, two)]
    assert len(losses[0]) == 6 and losses[1] == pytest.approx(losses[0], abs=1e-5)
    adapters = [load_file(run.run_dir / "adapter" / "adapter_model.safetensors") for run in (one, two)]
    assert adapters[0].keys() == adapters[1].keys()
    for name, t in adapters[0].items():
        assert (adapters[1][name] - t).abs().max() <= 1e-5, name
