"""Run under torchrun (2 ranks, gloo): the FSDP2-sharded, replicated trunk against one unsharded
trunk on rank 0, call for call.  Writes the largest differences as JSON to argv[2].

    torchrun --standalone --nproc_per_node 2 tests/server/dist_trunk_script.py shared out.json
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(mode: str):
    from splitfed_testing import tiny_model

    from splitfed.models import LoraSpec, add_lora, split_model
    from splitfed.server.trunk import TrunkService
    from splitfed.training import OptimConfig

    trunk = split_model(tiny_model("llama"), (1, 3)).trunk
    add_lora(trunk, LoraSpec(r=2), seed=0)
    return trunk, lambda part: TrunkService(part, mode=mode, clients=["c0", "c1"], optim=OptimConfig(lr=0.05))


def _gather_states(service) -> list[torch.Tensor]:
    """Every rank's adapter states, flattened, gathered on all ranks."""
    import torch.distributed as dist

    flat = torch.cat([t.flatten() for key in sorted(service.states) for _, t in sorted(service.states[key].items())])
    out = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(out, flat)
    _gather_states.mine = flat
    return out


def main() -> int:
    from splitfed.server.distributed import ReplicatedTrunk, TrunkGroup, serve_replica

    mode, out_path = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    group = TrunkGroup("cpu")
    part, make = build(mode)
    group.shard(part)
    service = make(part)
    if group.rank != 0:
        serve_replica(service, group)
        _gather_states(service)
        group.close()
        return 0
    ref_part, ref_make = build(mode)
    ref, dist = ref_make(ref_part), ReplicatedTrunk(service, group)
    diffs: dict[str, float] = {}

    def same(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        diffs[name] = max(diffs.get(name, 0.0), float((a - b).abs().max()))

    def both(method: str, *args, **kwargs):
        return getattr(ref, method)(*args, **kwargs), getattr(dist, method)(*args, **kwargs)

    gen = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    for step in range(3):
        client = ["c0", "c1"][step % 2]
        act = torch.randn(2, 5, 32, generator=gen)
        a, b = both("forward", client, act, mask, train=True)
        same("forward", a, b)
        grad = torch.randn(a.shape, generator=gen)
        a, b = both("backward", client, grad)
        same("activation gradient", a, b)
    a, b = both("forward", "c1", torch.randn(1, 3, 32, generator=gen), torch.ones(1, 3, dtype=torch.long), train=False)
    same("eval forward", a, b)
    # a step whose client leaves: nothing changes on any rank
    both("forward", "c0", torch.randn(2, 5, 32, generator=gen), mask, train=True)
    both("abort", "c0")
    if mode == "shared":  # cross-client batch: one padded forward, one step when both gradients are in
        items = [("c0", torch.randn(2, 5, 32, generator=gen), mask), ("c1", torch.randn(1, 3, 32, generator=gen),
                 torch.ones(1, 3, dtype=torch.long))]  # fmt: skip
        a, b = both("forward_group", items)
        for c in a:
            same("group forward", a[c], b[c])
        grads = {c: torch.randn(a[c].shape, generator=gen) for c in a}
        both("backward_group", "c0", grads["c0"])
        a, b = both("backward_group", "c1", grads["c1"])
        for c in a:
            same("group activation gradient", a[c], b[c])
    else:
        both("average", {"c0": 3, "c1": 1})
    # a checkpoint's state goes to every rank
    states = {k: {n: t + 0.01 for n, t in s.items()} for k, s in ref.states.items()}
    optimizers = ref.optimizer_states()
    for trunk in (ref, dist):  # each its own copy: restore keeps what it is given
        trunk.restore({k: {n: t.clone() for n, t in s.items()} for k, s in states.items()}, copy.deepcopy(optimizers))
    a, b = both("forward", "c0", torch.randn(2, 5, 32, generator=gen), mask, train=True)
    same("forward after restore", a, b)
    a, b = both("backward", "c0", torch.randn(a.shape, generator=gen))
    same("activation gradient after restore", a, b)
    for key in ref.states:
        for name, t in ref.states[key].items():
            same("adapter state", t, dist.states[key][name])
    dist.close()
    for other in _gather_states(service)[1:]:  # the other ranks' replicas ended where rank 0's did
        same("adapter state on other ranks", other, _gather_states.mine)
    group.close()
    frozen = [p for p in part.parameters() if not p.requires_grad]
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in frozen)
    diffs["local share of the frozen base"] = local / sum(p.numel() for p in frozen)
    trainable = [p for p in part.parameters() if p.requires_grad]
    diffs["trainable parameters sharded"] = float(any(hasattr(p, "to_local") for p in trainable))
    Path(out_path).write_text(json.dumps(diffs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
