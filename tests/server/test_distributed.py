"""The trunk sharded over two gloo ranks (FSDP2) equals one unsharded trunk, call for call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitfed.server.distributed import pack, unpack

SCRIPT = Path(__file__).with_name("dist_trunk_script.py")


pytestmark = pytest.mark.process  # spawns torchrun ranks


def test_call_arguments_round_trip_without_pickle():
    state = {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}, 1: {}}
    groups = [{"params": [0, 1], "betas": (0.9, 0.99)}]
    call = {
        "args": ["c0", torch.randn(2, 4, 8, dtype=torch.bfloat16), (1, 2.5, None, True)],
        "kwargs": {"train": False},
        "optim": {"state": state, "param_groups": groups},
    }
    header, tensors = pack(call)
    json.dumps(header)  # the header is plain JSON
    back = unpack(json.loads(json.dumps(header))["tree"], tensors)
    assert back["args"][0] == "c0" and back["args"][2] == (1, 2.5, None, True) and back["kwargs"] == {"train": False}
    assert torch.equal(back["args"][1], call["args"][1]) and back["args"][1].dtype == torch.bfloat16
    assert set(back["optim"]["state"]) == {0, 1}  # integer keys stay integers
    assert torch.equal(back["optim"]["state"][0]["exp_avg"], state[0]["exp_avg"])
    assert back["optim"]["param_groups"][0]["betas"] == (0.9, 0.99)
    with pytest.raises(TypeError, match="cannot send a set"):
        pack({"x": {1, 2}})


@pytest.mark.parametrize("mode", ["shared", "per_client"])
def test_two_gloo_ranks_equal_one_unsharded_trunk(tmp_path, mode):
    out = tmp_path / "diffs.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(SCRIPT), mode, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    diffs = json.loads(out.read_text())
    share = diffs.pop("local share of the frozen base")
    assert share == pytest.approx(0.5, abs=0.02)  # each rank holds half of the frozen weights
    assert diffs.pop("trainable parameters sharded") == 0.0  # the LoRA adapter is replicated
    want = {"forward", "activation gradient", "eval forward", "forward after restore", "adapter state",
            "activation gradient after restore", "adapter state on other ranks"}  # fmt: skip
    if mode == "shared":
        want |= {"group forward", "group activation gradient"}
    assert set(diffs) == want
    assert all(d <= 1e-6 for d in diffs.values()), diffs
