"""Run under torchrun (2 ranks, gloo): the FSDP2-sharded, replicated engine against one unsharded
engine on rank 0, op for op.  Writes the largest differences as JSON to argv[2].

    torchrun --standalone --nproc_per_node 2 tests/server/dist_trunk_script.py shared out.json

Mode ``diverge``: rank 1's engine refuses `Average` (a fault injected into this test's copy
only); rank 0 runs it; both must stop with `GroupAbort`.
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
    from splitfed.server.engine import TrunkEngine
    from splitfed.training import OptimConfig

    trunk = split_model(tiny_model("llama"), (1, 3)).trunk
    add_lora(trunk, LoraSpec(r=2), seed=0)
    return trunk, lambda part: TrunkEngine(part, mode=mode, clients=["c0", "c1"], optim=OptimConfig(lr=0.05))


def _gather_states(service) -> list[torch.Tensor]:
    """Every rank's adapter states, flattened, gathered on all ranks."""
    import torch.distributed as dist

    flat = torch.cat([t.flatten() for key in sorted(service.states) for _, t in sorted(service.states[key].items())])
    out = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(out, flat)
    _gather_states.mine = flat
    return out


def diverge() -> int:
    from splitfed.server.distributed import ReplicatedEngine, run_ranks
    from splitfed.server.ops import Average

    def make(group):
        part, make_engine = build("per_client")
        group.shard(part)
        engine = make_engine(part)
        if group.rank == 1:
            run = engine.run

            def refuse_average(op):
                if isinstance(op, Average):
                    raise RuntimeError("injected fault on rank 1")
                return run(op)

            engine.run = refuse_average
        return engine

    def serve(engine: ReplicatedEngine) -> int:
        engine.run(Average((("c0", 1), ("c1", 1))))
        return 0  # not reached: the op above must abort the group

    return run_ranks(make, serve, "cpu")


def main() -> int:
    from splitfed.server.distributed import RankGroup, ReplicatedEngine, serve_replica
    from splitfed.server.ops import Average, Backward, Forward, Infer, Restore

    mode, out_path = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    if mode == "diverge":
        return diverge()
    group = RankGroup("cpu")
    part, make = build(mode)
    group.shard(part)
    service = make(part)
    if group.rank != 0:
        serve_replica(service, group)
        _gather_states(service)
        group.close()
        return 0
    ref_part, ref_make = build(mode)
    ref, dist = ref_make(ref_part), ReplicatedEngine(service, group)
    diffs: dict[str, float] = {}

    def same(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        diffs[name] = max(diffs.get(name, 0.0), float((a - b).abs().max()))

    def both(op):
        return ref.run(op), dist.run(op)

    gen = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    for step in range(3):
        client = ["c0", "c1"][step % 2]
        act = torch.randn(2, 5, 32, generator=gen)
        a, b = both(Forward(((client, act, mask),)))
        same("forward", a[client], b[client])
        grad = torch.randn(a[client].shape, generator=gen)
        a, b = both(Backward(((client, grad),)))
        same("activation gradient", a[client], b[client])
    a, b = both(Infer("c1", torch.randn(1, 3, 32, generator=gen), torch.ones(1, 3, dtype=torch.long)))
    same("eval forward", a, b)
    # a step whose client leaves: nothing changes on any rank
    both(Forward((("c0", torch.randn(2, 5, 32, generator=gen), mask),)))
    both(Backward((("c0", None),)))
    if mode == "shared":  # cross-client batch: one padded forward, one step when both gradients are in
        items = [("c0", torch.randn(2, 5, 32, generator=gen), mask), ("c1", torch.randn(1, 3, 32, generator=gen),
                 torch.ones(1, 3, dtype=torch.long))]  # fmt: skip
        a, b = both(Forward(tuple(items)))
        for c in a:
            same("group forward", a[c], b[c])
        a, b = both(Backward(tuple((c, torch.randn(a[c].shape, generator=gen)) for c in a)))
        for c in a:
            same("group activation gradient", a[c], b[c])
    else:
        both(Average((("c0", 3), ("c1", 1))))
    # a checkpoint's state goes to every rank
    states = {k: {n: t + 0.01 for n, t in s.items()} for k, s in ref.states.items()}
    optimizers = ref.optimizer_states()
    for engine in (ref, dist):  # each its own copy: restore keeps what it is given
        clone = {k: {n: t.clone() for n, t in s.items()} for k, s in states.items()}
        engine.run(Restore(clone, copy.deepcopy(optimizers)))
    a, b = both(Forward((("c0", torch.randn(2, 5, 32, generator=gen), mask),)))
    same("forward after restore", a["c0"], b["c0"])
    a, b = both(Backward((("c0", torch.randn(a["c0"].shape, generator=gen)),)))
    same("activation gradient after restore", a["c0"], b["c0"])
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
