"""The trunk on several ranks (torchrun): FSDP2 shards the frozen base; rank 0 speaks ZeroMQ.

Why FSDP2 and not DDP replicas: the point is a trunk larger than one device.  Each rank holds
1/N of the frozen base weights, and `fully_shard` all-gathers one decoder layer at a time for
the forward and again for the backward.  The LoRA adapter (megabytes) is kept out of the
sharding (``ignored_params``) and replicated: every rank runs the same batch, so it computes
the same adapter gradient and takes the same optimizer step, and the replicas stay equal with
no gradient all-reduce.  Checkpoints, per-client adapter swaps and averaging stay local.
DDP would only add throughput for a trunk that already fits one device, and only with
batches big enough to split; the server's batches are one client's (or one group's).

Rank 0 runs the whole server: sessions, rounds, aggregation, checkpoints.  `ServerCore`
changes the trunk only by handing `TrunkOp` values to its engine; here each op is broadcast
(as an ordinary wire message: JSON header and raw tensors, nothing pickled) before rank 0
runs it, so every rank runs the same ops in the same order and enters the FSDP collectives
together.  After each op the ranks compare outcomes; an op that failed on some ranks only
stops the whole group (`GroupAbort`) rather than leaving it diverged or hanging.

    torchrun --standalone --nproc_per_node 2 -m splitfed.cli.main server --config run.toml
    splitfed server --nproc 2 --config run.toml      # the same, torchrun started for you
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from splitfed.models import SplitPart
from splitfed.models.placement import resolve_device
from splitfed.server.engine import TrunkEngine
from splitfed.server.ops import TrunkOp, op_frames, op_from_message
from splitfed.wire import Header, MsgType, decode, encode
from splitfed.wire.meta import TrunkOp as OpMeta

log = logging.getLogger("splitfed.server")

PING, STOP = "ping", "stop"
KEEPALIVE_S = 60.0  # idle rank 0 pings the others well inside the process group's timeout
MAX_OP_BYTES = 2**40  # ops come from rank 0, which this rank trusts as itself; the codec still checks them


class GroupAbort(BaseException):
    """The ranks no longer hold the same trunk (an op failed on some ranks and not on others).

    A `BaseException`: it must get past every ``except Exception`` that keeps the server
    serving after a bad message, so the whole group stops, loudly, instead of hanging in
    the next collective or training on diverged replicas."""


def launched() -> bool:
    """Whether this process is one of several ranks started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class RankGroup:
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

    # ---------------------------------------------------------------- op broadcast
    def _comm(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if self.backend == "nccl" else t

    def send(self, frames: list) -> None:
        """Rank 0: announce one message (wire frames) to the other ranks."""
        sizes = torch.tensor([memoryview(f).nbytes for f in frames], dtype=torch.int64)
        dist.broadcast(self._comm(torch.tensor([sizes.numel()], dtype=torch.int64)), src=0)
        dist.broadcast(self._comm(sizes), src=0)
        if int(sizes.sum()):
            joined = bytearray(b"".join(bytes(memoryview(f).cast("B")) for f in frames))
            data = torch.frombuffer(joined, dtype=torch.uint8)
            dist.broadcast(self._comm(data), src=0)
        self.last_sent = time.monotonic()

    def receive(self) -> list[bytes]:
        """Other ranks: the next message rank 0 announced, as frames."""
        count = self._comm(torch.zeros(1, dtype=torch.int64))
        dist.broadcast(count, src=0)
        sizes = self._comm(torch.zeros(int(count.item()), dtype=torch.int64))
        dist.broadcast(sizes, src=0)
        sizes = sizes.cpu().tolist()
        data = b""
        if sum(sizes):
            buf = self._comm(torch.empty(sum(sizes), dtype=torch.uint8))
            dist.broadcast(buf, src=0)
            data = bytes(buf.cpu().numpy())
        frames, at = [], 0
        for n in sizes:
            frames.append(data[at : at + n])
            at += n
        return frames

    def agree(self, failed: bool) -> list[bool]:
        """Every rank's outcome of the op just run (all ranks call this after each op)."""
        flags = self._comm(torch.zeros(self.world_size, dtype=torch.int64))
        flags[self.rank] = int(failed)
        dist.all_reduce(flags)
        return [bool(f) for f in flags.cpu().tolist()]

    def close(self) -> None:
        """Leave the group (a barrier first: without it a rank may abort at teardown)."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _control(word: str) -> list:
    return encode(Header(MsgType.TRUNK_OP, meta=OpMeta(word)))


def run_replicated(engine: TrunkEngine, group: RankGroup, op: TrunkOp):
    """Run `op` on this rank and learn how it went on every rank.  The same outcome
    everywhere (all succeeded, or all raised the same kind of error, as a non-finite step
    does) keeps the replicas equal: the result or the error is this rank's.  Mixed outcomes
    mean the replicas diverged: every rank raises `GroupAbort`."""
    try:
        result, error = engine.run(op), None
    except Exception as exc:
        result, error = None, exc
    outcomes = group.agree(error is not None)
    if any(outcomes) and not all(outcomes):
        failed = [r for r, f in enumerate(outcomes) if f]
        why = f"{type(error).__name__}: {error}" if error is not None else "it succeeded here"
        log.critical("rank %d: %s failed on rank(s) %s only (%s); stopping the group", group.rank,
                     type(op).__name__, failed, why, exc_info=error)  # fmt: skip
        raise GroupAbort(f"trunk op {type(op).__name__} failed on rank(s) {failed} only: the replicas diverged")
    if error is not None:
        raise error
    return result


class ReplicatedEngine:
    """Rank 0's engine: every op is broadcast to the other ranks and run on all of them.

    Reads (`states`, `final_state`, ...) come from rank 0's copy: the replicas hold the same."""

    def __init__(self, engine: TrunkEngine, group: RankGroup):
        self.engine, self.group = engine, group

    def run(self, op: TrunkOp):
        self.group.send(op_frames(op))
        return run_replicated(self.engine, self.group, op)

    # reads: rank 0's copy (the replicas hold the same)
    @property
    def trunk(self):
        return self.engine.trunk

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def states(self) -> dict[str, dict[str, torch.Tensor]]:
        return self.engine.states

    def final_state(self) -> dict[str, torch.Tensor]:
        return self.engine.final_state()

    def adapter_for(self, client: str) -> dict[str, torch.Tensor]:
        return self.engine.adapter_for(client)

    def optimizer_states(self) -> dict[str, dict]:
        return self.engine.optimizer_states()

    def tick(self) -> None:
        """Keep idle ranks' collective from timing out while rank 0 waits for clients."""
        if time.monotonic() - self.group.last_sent > KEEPALIVE_S:
            self.group.send(_control(PING))

    def close(self) -> None:
        """Release the other ranks (they return from `serve_replica`)."""
        self.group.send(_control(STOP))


def serve_replica(engine: TrunkEngine, group: RankGroup) -> None:
    """Ranks > 0: run every op rank 0 announces until it says stop.  An op that fails here
    and not on rank 0 (or the reverse) raises `GroupAbort` on every rank."""
    while True:
        msg = decode(group.receive(), max_bytes=MAX_OP_BYTES)
        if msg.type != MsgType.TRUNK_OP:
            raise GroupAbort(f"rank {group.rank}: rank 0 sent a {msg.type.value} message, expected a trunk op")
        if msg.meta.op == STOP:
            return
        if msg.meta.op == PING:
            continue
        try:
            run_replicated(engine, group, op_from_message(msg))
        except GroupAbort:
            raise
        except Exception as exc:  # the same error on every rank: rank 0 answered its client
            log.debug("rank %d: %s", group.rank, exc)


def run_ranks(make_engine: Callable[[RankGroup], TrunkEngine], serve: Callable[[ReplicatedEngine], int],
              device_spec: str) -> int:  # fmt: skip
    """The body of a torchrun server: rank 0 calls `serve` with the replicated engine, the others
    follow its ops; every rank leaves the group at the end.  After a `GroupAbort` nobody waits
    for the others (they are stopping too): the error propagates and the process exits."""
    group = RankGroup(device_spec)
    aborted = False
    try:
        engine = make_engine(group)
        if group.rank != 0:
            serve_replica(engine, group)
            return 0
        replicated = ReplicatedEngine(engine, group)
        try:
            return serve(replicated)
        except GroupAbort:
            aborted = True
            raise
        finally:
            if not aborted:
                replicated.close()
    except GroupAbort:
        aborted = True
        raise
    finally:
        if not aborted:
            group.close()
