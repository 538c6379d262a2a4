"""Trunk operations as values: what the server asks its `TrunkEngine` to do.

`ServerCore` never calls the trunk's methods directly; it builds one of these and hands it
to an engine's `run`.  Being plain values, they can be logged, tested and replicated: under
torchrun rank 0 broadcasts each op to the other ranks (`splitfed.server.distributed`),
which run exactly the same sequence.  On that channel an op travels as an ordinary wire
message (`wire.encode`, type ``trunk_op``): a JSON header and raw tensor frames, never pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from splitfed.wire import Header, Message, MsgType, bytes_tensor, encode, tensor_bytes
from splitfed.wire.meta import TrunkOp as OpMeta

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True, eq=False)
class Infer:
    """Evaluation forward: no graph kept, nothing pending.  `base`: the trunk with its adapter off."""

    client: str
    act: torch.Tensor
    mask: torch.Tensor
    base: bool = False


@dataclass(frozen=True, eq=False)
class Forward:
    """Training forward of one client, or (shared mode) several as one padded batch.

    The step stays pending until a `Backward` completes it; items are (client, act, mask)."""

    items: tuple[tuple[str, torch.Tensor, torch.Tensor], ...]


@dataclass(frozen=True, eq=False)
class Backward:
    """Completes the pending step: each member's output gradient, None for one that left
    (it contributes zero).  All None: the step is dropped and no weight changes."""

    grads: tuple[tuple[str, torch.Tensor | None], ...]


@dataclass(frozen=True, eq=False)
class Average:
    """per_client mode: every client adapter becomes the mean of the participants', weighted."""

    weights: tuple[tuple[str, int], ...]


@dataclass(frozen=True, eq=False)
class Restore:
    """A checkpoint's adapter states and optimizer states."""

    states: dict[str, Tensors]
    optimizers: dict[str, dict]


@dataclass(frozen=True, eq=False)
class Prefill:
    """Open generation stream `stream` (a cache key) of `client` with its prompt's activations."""

    stream: str
    client: str
    act: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True, eq=False)
class Decode:
    """One new position of each stream, batched: items are (stream, client, act (B, 1, D), the
    stream's whole mask (B, L + 1))."""

    items: tuple[tuple[str, str, torch.Tensor, torch.Tensor], ...]


@dataclass(frozen=True, eq=False)
class Release:
    """Free these streams' caches (closed, idle, or their client left)."""

    streams: tuple[str, ...]


TrunkOp = Infer | Forward | Backward | Average | Restore | Prefill | Decode | Release


# ------------------------------------------------------------------ on the rank channel
OPTIMIZERS = "optimizers.json"  # a restore's optimizer scalars and param groups, as JSON bytes


def op_frames(op: TrunkOp) -> list:
    """`op` as wire frames (header + raw tensors)."""
    meta, tensors = _flatten(op)
    return encode(Header(MsgType.TRUNK_OP, meta=meta), tensors)


def op_from_message(msg: Message) -> TrunkOp:
    """The op a ``trunk_op`` message carries (sent by rank 0, which this rank trusts as its own)."""
    m, t = msg.meta, msg.tensors
    if m.op == "infer":
        return Infer(m.clients[0], t["act"], t["mask"], m.base)
    if m.op == "forward":
        return Forward(tuple((c, t[f"act/{i}"], t[f"mask/{i}"]) for i, c in enumerate(m.clients)))
    if m.op == "backward":
        return Backward(tuple((c, t.get(f"grad/{i}")) for i, c in enumerate(m.clients)))
    if m.op == "average":
        return Average(tuple(zip(m.clients, m.weights, strict=True)))
    if m.op == "prefill":
        return Prefill(m.streams[0], m.clients[0], t["act"], t["mask"])
    if m.op == "decode":
        items = zip(m.streams, m.clients, strict=True)
        return Decode(tuple((s, c, t[f"act/{i}"], t[f"mask/{i}"]) for i, (s, c) in enumerate(items)))
    if m.op == "release":
        return Release(tuple(m.streams))
    states = {k: {n[len(k) + 7 :]: v for n, v in t.items() if n.startswith(f"state/{k}/")} for k in m.keys}
    opt_meta = json.loads(tensor_bytes(t, OPTIMIZERS))
    optimizers = {k: _unflatten_optimizer(o, t, f"opt/{k}/") for k, o in opt_meta.items()}
    return Restore(states, optimizers)


def _flatten(op: TrunkOp) -> tuple[OpMeta, Tensors]:
    if isinstance(op, Infer):
        return OpMeta("infer", clients=[op.client], base=op.base), {"act": op.act, "mask": op.mask}
    if isinstance(op, Forward):
        tensors = {}
        for i, (_, act, mask) in enumerate(op.items):
            tensors[f"act/{i}"], tensors[f"mask/{i}"] = act, mask
        return OpMeta("forward", clients=[c for c, _, _ in op.items]), tensors
    if isinstance(op, Backward):
        tensors = {f"grad/{i}": g for i, (_, g) in enumerate(op.grads) if g is not None}
        return OpMeta("backward", clients=[c for c, _ in op.grads]), tensors
    if isinstance(op, Average):
        return OpMeta("average", clients=[c for c, _ in op.weights], weights=[n for _, n in op.weights]), {}
    if isinstance(op, Prefill):
        return OpMeta("prefill", clients=[op.client], streams=[op.stream]), {"act": op.act, "mask": op.mask}
    if isinstance(op, Decode):
        tensors = {}
        for i, (_, _, act, mask) in enumerate(op.items):
            tensors[f"act/{i}"], tensors[f"mask/{i}"] = act, mask
        return OpMeta("decode", clients=[c for _, c, _, _ in op.items], streams=[s for s, _, _, _ in op.items]), tensors
    if isinstance(op, Release):
        return OpMeta("release", streams=list(op.streams)), {}
    tensors = {f"state/{k}/{n}": v for k, s in op.states.items() for n, v in s.items()}
    opt_meta = {k: _flatten_optimizer(sd, tensors, f"opt/{k}/") for k, sd in op.optimizers.items()}
    tensors[OPTIMIZERS] = bytes_tensor(json.dumps(opt_meta).encode())
    return OpMeta("restore", keys=list(op.states)), tensors


def _flatten_optimizer(sd: dict, tensors: Tensors, prefix: str) -> dict:
    """A torch optimizer state dict: tensors into `tensors`, the rest (numbers, param groups) as JSON."""
    scalars: dict[str, dict[str, Any]] = {}
    for idx, slot in sd["state"].items():
        for name, value in slot.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{idx}/{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return {"ids": [int(i) for i in sd["state"]], "scalars": scalars, "param_groups": sd["param_groups"]}


def _unflatten_optimizer(meta: dict, tensors: Tensors, prefix: str) -> dict:
    state: dict[int, dict[str, Any]] = {i: dict(meta["scalars"].get(str(i), {})) for i in meta["ids"]}
    for name, value in tensors.items():
        if name.startswith(prefix):
            idx, slot = name[len(prefix) :].split("/", 1)
            state[int(idx)][slot] = value
    return {"state": state, "param_groups": meta["param_groups"]}
