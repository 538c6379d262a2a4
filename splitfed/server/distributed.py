"""The trunk on several ranks (torchrun): FSDP2 shards the frozen base; rank 0 speaks ZeroMQ.

Why FSDP2 and not DDP replicas: the point is a trunk larger than one device.  Each rank holds
1/N of the frozen base weights, and `fully_shard` all-gathers one decoder layer at a time for
the forward and again for the backward.  The LoRA adapter (megabytes) is kept out of the
sharding (``ignored_params``) and replicated: every rank runs the same batch, so it computes
the same adapter gradient and takes the same optimizer step, and the replicas stay equal with
no gradient all-reduce.  Checkpoints, per-client adapter swaps and averaging stay local.
DDP would only add throughput for a trunk that already fits one device, and only with
batches big enough to split; the server's batches are one client's (or one group's).

Rank 0 runs the whole server: sessions, rounds, aggregation, checkpoints.  Each call that
touches the trunk (`REPLICATED`) is broadcast to the other ranks before rank 0 runs it, so
every rank runs the same calls in the same order and enters the FSDP collectives together.
The broadcast carries a JSON header and raw tensors; nothing is pickled.

    torchrun --standalone --nproc_per_node 2 -m splitfed.cli.main server --config run.toml
    splitfed server --nproc 2 --config run.toml      # the same, torchrun started for you
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from splitfed.models import SplitPart
from splitfed.models.placement import resolve_device
from splitfed.server.trunk import TrunkService

log = logging.getLogger("splitfed.server")

#: TrunkService methods that change the trunk or run it; all ranks must run each of them.
REPLICATED = ("forward", "backward", "forward_group", "backward_group", "abort", "average", "restore")
PING, STOP = "ping", "stop"
KEEPALIVE_S = 60.0  # idle rank 0 pings the others well inside the process group's timeout

_DTYPES = {str(t).removeprefix("torch."): t for t in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                      torch.int64, torch.int32, torch.uint8, torch.bool)}  # fmt: skip


def launched() -> bool:
    """Whether this process is one of several ranks started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class TrunkGroup:
    """This rank's place in the group: its device, the sharding, and the call broadcast."""

    def __init__(self, device_spec: str = "auto", *, timeout_s: float = 1800.0):
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        wanted = resolve_device(device_spec, key="server.device")
        if wanted.type == "cuda":  # one GPU per rank; server.device only says "use CUDA"
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(self.backend, timeout=datetime.timedelta(seconds=timeout_s))
        self.last_sent = time.monotonic()

    def shard(self, part: SplitPart) -> None:
        """FSDP2 over each decoder layer and the part; the trainable (LoRA) parameters stay whole."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        for layer in part.layers.values():
            fully_shard(layer, mesh=mesh, ignored_params={p for p in layer.parameters() if p.requires_grad})
        fully_shard(part, mesh=mesh, ignored_params={p for p in part.parameters() if p.requires_grad})

    # ---------------------------------------------------------------- call broadcast
    def _comm(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if self.backend == "nccl" else t

    def send(self, name: str, args: tuple = (), kwargs: dict | None = None) -> None:
        """Rank 0: announce a call and its arguments to the other ranks."""
        header, tensors = pack({"call": name, "args": list(args), "kwargs": kwargs or {}})
        data = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
        dist.broadcast(self._comm(torch.tensor([data.numel()], dtype=torch.int64)), src=0)
        dist.broadcast(self._comm(data), src=0)
        for t in tensors:
            dist.broadcast(self._comm(t.contiguous()), src=0)
        self.last_sent = time.monotonic()

    def receive(self) -> tuple[str, tuple, dict]:
        """Other ranks: the next call rank 0 announced."""
        size = self._comm(torch.zeros(1, dtype=torch.int64))
        dist.broadcast(size, src=0)
        data = self._comm(torch.empty(int(size.item()), dtype=torch.uint8))
        dist.broadcast(data, src=0)
        header = json.loads(bytes(data.cpu().numpy()).decode())
        tensors = []
        for shape, dtype in header["tensors"]:
            t = self._comm(torch.empty(shape, dtype=_DTYPES[dtype]))
            dist.broadcast(t, src=0)
            tensors.append(t.cpu())
        call = unpack(header["tree"], tensors)
        return call["call"], tuple(call["args"]), call["kwargs"]

    def close(self) -> None:
        """Leave the group (a barrier first: without it a rank may abort at teardown)."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


class ReplicatedTrunk:
    """Rank 0's trunk: a `TrunkService` whose trunk-touching calls every rank runs too."""

    def __init__(self, service: TrunkService, group: TrunkGroup):
        self._service, self._group = service, group

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._service, name)
        if name not in REPLICATED:
            return attr  # reads: the replicas hold the same state

        def call(*args, **kwargs):
            self._group.send(name, args, kwargs)
            return attr(*args, **kwargs)

        return call

    def tick(self) -> None:
        """Keep idle ranks' collective from timing out while rank 0 waits for clients."""
        if time.monotonic() - self._group.last_sent > KEEPALIVE_S:
            self._group.send(PING)

    def close(self) -> None:
        """Release the other ranks (they return from `serve_replica`)."""
        self._group.send(STOP)


def serve_replica(service: TrunkService, group: TrunkGroup) -> None:
    """Ranks > 0: run every call rank 0 announces until it says stop."""
    while True:
        name, args, kwargs = group.receive()
        if name == STOP:
            return
        if name == PING:
            continue
        if name not in REPLICATED:
            raise RuntimeError(f"rank {group.rank}: unknown trunk call {name!r} from rank 0")
        try:
            getattr(service, name)(*args, **kwargs)
        except Exception as exc:  # rank 0 hit the same error and answered its client
            log.debug("rank %d: %s raised %s: %s", group.rank, name, type(exc).__name__, exc)


# -------------------------------------------------------------------- argument trees
def pack(obj: Any) -> tuple[dict, list[torch.Tensor]]:
    """A tree of dicts (str or int keys), lists, tuples, scalars and tensors as JSON plus tensors."""
    tensors: list[torch.Tensor] = []

    def enc(x):
        if isinstance(x, torch.Tensor):
            tensors.append(x.detach().cpu())
            return {"T": len(tensors) - 1}
        if isinstance(x, dict):
            return {"D": [[k, enc(v)] for k, v in x.items()]}
        if isinstance(x, list | tuple):
            return {"L" if isinstance(x, list) else "U": [enc(v) for v in x]}
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"cannot send a {type(x).__name__} to the other ranks")

    tree = enc(obj)
    meta = [[list(t.shape), str(t.dtype).removeprefix("torch.")] for t in tensors]
    return {"tree": tree, "tensors": meta}, tensors


def unpack(tree: Any, tensors: list[torch.Tensor]) -> Any:
    def dec(x):
        if isinstance(x, dict):
            if "T" in x:
                return tensors[x["T"]]
            if "D" in x:
                return {k: dec(v) for k, v in x["D"]}
            if "L" in x:
                return [dec(v) for v in x["L"]]
            return tuple(dec(v) for v in x["U"])
        return x

    return dec(tree)


def run_ranks(make_service: Callable[[TrunkGroup], TrunkService], serve: Callable[[ReplicatedTrunk], int],
              device_spec: str) -> int:  # fmt: skip
    """The body of a torchrun server: rank 0 calls `serve` with the replicated trunk, the others
    follow its calls; every rank leaves the group at the end."""
    group = TrunkGroup(device_spec)
    try:
        service = make_service(group)
        if group.rank != 0:
            serve_replica(service, group)
            return 0
        trunk = ReplicatedTrunk(service, group)
        try:
            return serve(trunk)
        finally:
            trunk.close()
    finally:
        group.close()
