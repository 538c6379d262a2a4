"""The trunk sharded over two gloo ranks (FSDP2) equals one unsharded trunk, call for call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitfed.server.ops import (
    Average,
    Backward,
    Decode,
    Forward,
    Infer,
    Prefill,
    Release,
    Restore,
    op_frames,
    op_from_message,
)
from splitfed.wire import decode

SCRIPT = Path(__file__).with_name("dist_trunk_script.py")


pytestmark = pytest.mark.process  # spawns torchrun ranks


def _over_the_wire(op):
    return op_from_message(decode(op_frames(op), max_bytes=2**30))


def test_trunk_ops_round_trip_as_wire_messages_without_pickle():
    act, mask = torch.randn(2, 4, 8, dtype=torch.bfloat16), torch.ones(2, 4, dtype=torch.long)
    back = _over_the_wire(Infer("c0", act, mask, base=True))
    assert (back.client, back.base) == ("c0", True) and torch.equal(back.act, act) and back.act.dtype == torch.bfloat16
    back = _over_the_wire(Forward((("a", act, mask), ("b", act[:1, :3], mask[:1, :3]))))
    assert [c for c, _, _ in back.items] == ["a", "b"] and torch.equal(back.items[1][1], act[:1, :3])
    back = _over_the_wire(Backward((("a", None), ("b", torch.ones(1, 3, 8)))))
    assert back.grads[0] == ("a", None) and torch.equal(back.grads[1][1], torch.ones(1, 3, 8))
    assert _over_the_wire(Average((("a", 3), ("b", 1)))).weights == (("a", 3), ("b", 1))
    back = _over_the_wire(Prefill("a/s/0", "a", act, mask))
    assert (back.stream, back.client) == ("a/s/0", "a") and torch.equal(back.mask, mask)
    back = _over_the_wire(Decode((("a/s/0", "a", act[:, :1], mask), ("b/t/1", "b", act[:1, :1], mask[:1]))))
    assert [(s, c) for s, c, _, _ in back.items] == [("a/s/0", "a"), ("b/t/1", "b")]
    assert torch.equal(back.items[1][2], act[:1, :1]) and torch.equal(back.items[0][3], mask)
    assert _over_the_wire(Release(("a/s/0", "b/t/1"))).streams == ("a/s/0", "b/t/1")
    # a real AdamW state: integer slot ids, tensors and numbers, param groups with tuples
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.99))
    p.grad = torch.ones(3)
    opt.step()
    sd = opt.state_dict()
    back = _over_the_wire(Restore({"shared": {"w": torch.arange(3.0)}}, {"shared": sd}))
    assert torch.equal(back.states["shared"]["w"], torch.arange(3.0))
    got = back.optimizers["shared"]
    assert set(got["state"]) == {0} and torch.equal(got["state"][0]["exp_avg"], sd["state"][0]["exp_avg"])
    assert tuple(got["param_groups"][0]["betas"]) == (0.9, 0.99)
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.randn(3))], lr=0.1)
    fresh.load_state_dict(got)  # loads as torch's own would


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


def test_an_op_failing_on_one_rank_only_stops_the_whole_group_loudly(tmp_path):
    """Rank 1's copy refuses an op that rank 0 runs: both ranks raise GroupAbort and exit
    promptly (no hang in the next collective), and the log says which rank failed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(SCRIPT), "diverge", str(tmp_path / "unused.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "GroupAbort" in out and "failed on rank(s) [1] only" in out, out[-3000:]
