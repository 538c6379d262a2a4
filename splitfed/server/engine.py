"""The trunk engine: the server's trunk with its LoRA adapter(s) and optimizer(s), running `TrunkOp`s.

One shared adapter (SFL-V2) or one per client (SFL-V1).  Per-client adapters are swapped
into the one set of LoRA parameters before a client's forward and saved back after its
optimizer step; each has its own optimizer.  A training `Forward` leaves one step pending
(its autograd graph) until the `Backward` that completes it; who may run when is decided by
`ServerCore` (see `splitfed.server.steps`), not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from splitfed.aggregation import weighted_mean
from splitfed.config import RunConfig
from splitfed.models import SplitPart, get_adapter_state, set_adapter_state
from splitfed.models.lora import adapters_disabled
from splitfed.server.caches import StreamCaches
from splitfed.server.ops import Average, Backward, Decode, Forward, Infer, Prefill, Release, Restore, TrunkOp
from splitfed.training import LocalLink, OptimConfig

SHARED = "shared"


class TrunkEngine:
    def __init__(
        self,
        trunk: SplitPart,
        *,
        mode: str,
        clients: list[str],
        optim: OptimConfig,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        """`trunk` already sits on `device` (see `splitfed.models.placement.place`)."""
        if mode not in ("shared", "per_client"):
            raise ValueError(f"server mode must be 'shared' or 'per_client', got {mode!r}")
        self.trunk, self.mode = trunk, mode
        self.device, self.dtype = device or torch.device("cpu"), dtype
        names = [SHARED] if mode == "shared" else list(clients)
        place = {"device": device, "dtype": dtype}
        self.links = {n: LocalLink(trunk, optim, guard_finite=True, **place) for n in names}
        initial = get_adapter_state(trunk)
        self.states = {n: {k: v.clone() for k, v in initial.items()} for n in names}
        self._loaded: str | None = names[0]
        self.pending: dict[str, tuple[int, int, int]] = {}  # the pending step: client -> (row start, row end, tokens)
        self._pending_key: str | None = None
        self.streams = StreamCaches(trunk, device=self.device, dtype=dtype)  # generation streams' KV caches

    def run(self, op: TrunkOp):
        """Run one op: `Infer` -> the output; `Forward` / `Backward` -> {client: tensor}; else None."""
        if isinstance(op, Infer):
            return self.infer(op.client, op.act, op.mask, base=op.base)
        if isinstance(op, Forward):
            return self.forward(list(op.items))
        if isinstance(op, Backward):
            return self.backward(dict(op.grads))
        if isinstance(op, Average):
            return self.average(dict(op.weights))
        if isinstance(op, Restore):
            return self.restore(op.states, op.optimizers)
        if isinstance(op, Prefill | Decode):
            return self.generate(op)
        if isinstance(op, Release):
            return self.streams.release(op.streams)
        raise TypeError(f"not a trunk op: {type(op).__name__}")

    def _key(self, client: str) -> str:
        return SHARED if self.mode == "shared" else client

    def _load(self, key: str) -> None:
        if self._loaded != key:
            set_adapter_state(self.trunk, self.states[key])
            self._loaded = key

    @property
    def busy(self) -> bool:
        """Whether a training step is pending (no other step may start)."""
        return self._pending_key is not None

    def infer(self, client: str, act: torch.Tensor, mask: torch.Tensor, *, base: bool = False) -> torch.Tensor:
        """A client's activations through the trunk, for evaluation; `base` runs the public base
        model, adapter off, so a "before" evaluation does not depend on who trained first."""
        if self.busy:
            raise RuntimeError(f"trunk busy with {', '.join(sorted(self.pending))}")
        key = self._key(client)
        self._load(key)
        if base:
            with adapters_disabled(self.trunk):
                return self.links[key].infer(act, mask)
        return self.links[key].infer(act, mask)

    def generate(self, op: Prefill | Decode):
        """A stream's prefill -> its output; a decode step -> each stream's output, in order.  In
        per_client mode each client's streams run with its own adapter (one forward per client)."""
        if self.busy:
            raise RuntimeError(f"trunk busy with {', '.join(sorted(self.pending))}")
        if isinstance(op, Prefill):
            self._load(self._key(op.client))
            return self.streams.prefill(op.stream, op.act, op.mask)
        groups: dict[str, list[int]] = {}
        for i, (_, client, _, _) in enumerate(op.items):
            groups.setdefault(self._key(client), []).append(i)
        outs: list[torch.Tensor | None] = [None] * len(op.items)
        for key, idx in groups.items():
            self._load(key)
            steps = [(op.items[i][0], op.items[i][2], op.items[i][3]) for i in idx]
            for i, out in zip(idx, self.streams.decode(steps), strict=True):
                outs[i] = out
        return outs

    def forward(self, items: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Training forward of one client, or (shared mode) several as one batch.

        Shorter sequences are padded on the right with masked positions, which no real token
        attends to, so each client's outputs (and later its activation gradient) are what it
        would get alone with the same weights.  The trunk takes one optimizer step for the
        whole batch in `backward`.
        """
        if len(items) > 1 and self.mode != "shared":
            raise ValueError("cross-client batching needs server.mode = 'shared' (one trunk adapter)")
        if self.busy:
            raise RuntimeError(f"trunk busy with {', '.join(sorted(self.pending))}")
        width = max(mask.shape[1] for _, _, mask in items)
        acts, masks, spans, row = [], [], {}, 0
        for client, act, mask in items:
            b, t = mask.shape
            acts.append(F.pad(act, (0, 0, 0, width - t)))
            masks.append(F.pad(mask, (0, width - t)))
            spans[client] = (row, row + b, t)
            row += b
        key = self._key(items[0][0])
        self._load(key)
        out = self.links[key].forward(torch.cat(acts), torch.cat(masks))
        self.pending, self._pending_key = spans, key
        return {c: out[r0:r1, :t] for c, (r0, r1, t) in spans.items()}

    def backward(self, grads: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """Complete the pending step with every member's output gradient (None: it left and
        contributes zero); one backward and optimizer step; each member's activation gradient.
        Nobody left (all None): the step is dropped, no weight changes, and {} comes back."""
        if not self.busy:
            raise RuntimeError("backward without a pending step")
        if set(grads) != set(self.pending):
            raise RuntimeError(f"backward for {sorted(grads)}, pending {sorted(self.pending)}")
        spans, key = self.pending, self._pending_key
        self.pending, self._pending_key = {}, None
        link = self.links[key]
        if all(g is None for g in grads.values()):
            link.drop()
            return {}
        full = torch.zeros(link.pending_output.shape, dtype=torch.float32)  # host-side, as the gradients are
        for c, (a, b, n) in spans.items():
            if grads[c] is not None:
                full[a:b, :n] = grads[c]
        grad_in = link.backward(full)
        self.states[key] = get_adapter_state(self.trunk)
        return {c: grad_in[a:b, :n] for c, (a, b, n) in spans.items()}

    def average(self, weights: dict[str, int]) -> None:
        """per_client mode: every client adapter becomes the weighted mean of the participants'."""
        if self.mode != "per_client" or not weights:
            return
        avg = weighted_mean({c: (self.states[c], n) for c, n in weights.items() if c in self.states})
        for key in self.states:
            self.states[key] = {k: v.clone() for k, v in avg.items()}
        self._loaded = None
        self._load(next(iter(self.states)))

    def final_state(self) -> dict[str, torch.Tensor]:
        key = SHARED if self.mode == "shared" else next(iter(self.states))
        return self.states[key]

    def adapter_for(self, client: str) -> dict[str, torch.Tensor]:
        """The trunk adapter `client` trains with: the shared one, or its own in per_client mode."""
        return self.states[self._key(client)]

    def tick(self) -> None:
        """Housekeeping hook, called between messages (the replicated engine pings its ranks)."""

    # checkpointing
    def optimizer_states(self) -> dict[str, dict]:
        return {k: link.optimizer.state_dict() for k, link in self.links.items() if link.optimizer is not None}

    def restore(self, states: dict[str, dict[str, torch.Tensor]], optimizers: dict[str, dict]) -> None:
        if set(states) != set(self.states):
            raise ValueError(f"checkpoint holds trunk adapters {sorted(states)}, expected {sorted(self.states)}")
        self.states = states
        for key, sd in optimizers.items():
            self.links[key].optimizer.load_state_dict(sd)
        self._loaded = None
        self._load(next(iter(self.states)))


def load_engine(cfg: RunConfig, model_dir, *, clients: list[str], group=None) -> TrunkEngine:
    """The run's trunk (only its own tensors are read) with its LoRA adapter(s) and optimizer(s),
    placed on ``server.device`` with its frozen base in ``server.dtype``.

    Under torchrun, `group` (a `splitfed.server.distributed.RankGroup`) names this rank's
    device and shards the frozen base across the ranks.
    """
    from splitfed.models import load_part, set_lora
    from splitfed.models.placement import place, resolve_device, resolve_dtype

    device = group.device if group is not None else resolve_device(cfg.server.device, key="server.device")
    dtype = resolve_dtype(cfg.server.dtype, device, key="server.dtype")
    part = load_part(model_dir, "trunk", tuple(cfg.model.cut))
    set_lora(part, cfg.lora.to_split_lora().trunk, seed=cfg.run.seed + 1)  # the seed apply_lora gives the trunk
    place(part, device, dtype)
    if group is not None:
        group.shard(part)
    optim = OptimConfig(lr=cfg.training.lr, weight_decay=cfg.training.weight_decay)
    return TrunkEngine(part, mode=cfg.server.mode, clients=clients, optim=optim, device=device, dtype=dtype)
