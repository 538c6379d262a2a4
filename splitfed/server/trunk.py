"""The trunk with its LoRA adapter(s): one shared adapter (SFL-V2) or one per client (SFL-V1).

Steps are serialised: a client's forward and backward run back to back on the trunk while
other clients' forwards wait, so no backward ever sees weights changed under its graph.
Per-client adapters are swapped into the one set of LoRA parameters before a client's
forward and saved back after its optimizer step; each client has its own optimizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from splitfed.aggregation import weighted_mean
from splitfed.config import RunConfig
from splitfed.models import SplitPart, get_adapter_state, set_adapter_state
from splitfed.models.lora import adapters_disabled
from splitfed.training import LocalTrunk, OptimConfig

SHARED = "shared"
GROUP = "<group>"  # `busy` while a cross-client batch waits for its members' gradients


class TrunkService:
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
        self.links = {n: LocalTrunk(trunk, optim, guard_finite=True, **place) for n in names}
        initial = get_adapter_state(trunk)
        self.states = {n: {k: v.clone() for k, v in initial.items()} for n in names}
        self._loaded: str | None = names[0]
        self.busy: str | None = None  # client whose backward is pending, or GROUP
        self.group: dict[str, tuple[int, int, int]] = {}  # client -> (row start, row end, tokens)
        self.group_grads: dict[str, torch.Tensor] = {}

    def _key(self, client: str) -> str:
        return SHARED if self.mode == "shared" else client

    def _load(self, key: str) -> None:
        if self._loaded != key:
            set_adapter_state(self.trunk, self.states[key])
            self._loaded = key

    def forward(
        self, client: str, act: torch.Tensor, mask: torch.Tensor, *, train: bool, base: bool = False
    ) -> torch.Tensor:
        """A client's activations through the trunk; `base` (evaluation only) runs the public
        base model, adapter off, so a "before" evaluation does not depend on who trained first."""
        if self.busy is not None:
            raise RuntimeError(f"trunk busy with {self.busy}")
        if base and train:
            raise ValueError("a base-model forward is evaluation only (train must be false)")
        key = self._key(client)
        self._load(key)
        if base:
            with adapters_disabled(self.trunk):
                return self.links[key].infer(act, mask)
        if not train:
            return self.links[key].infer(act, mask)
        out = self.links[key].forward(act, mask)
        self.busy = client
        return out

    def backward(self, client: str, grad: torch.Tensor) -> torch.Tensor:
        if self.busy == GROUP:
            raise RuntimeError(f"{client} is in a batch: use backward_group")
        if self.busy != client:
            raise RuntimeError(f"no pending forward for {client}")
        key = self._key(client)
        try:
            grad_in = self.links[key].backward(grad)
        finally:
            self.busy = None
        self.states[key] = get_adapter_state(self.trunk)
        return grad_in

    def forward_group(self, items: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Shared mode: several clients' activations through the trunk as one batch.

        Shorter sequences are padded on the right with masked positions, which no real token
        attends to, so each client's outputs (and later its activation gradient) are what it
        would get alone with the same weights.  The trunk takes one optimizer step for the
        whole group once every member's gradient is in (`backward_group`).
        """
        if self.mode != "shared":
            raise ValueError("cross-client batching needs server.mode = 'shared' (one trunk adapter)")
        if self.busy is not None:
            raise RuntimeError(f"trunk busy with {self.busy}")
        width = max(mask.shape[1] for _, _, mask in items)
        acts, masks, row = [], [], 0
        for client, act, mask in items:
            b, t = mask.shape
            acts.append(F.pad(act, (0, 0, 0, width - t)))
            masks.append(F.pad(mask, (0, width - t)))
            self.group[client] = (row, row + b, t)
            row += b
        self._load(SHARED)
        out = self.links[SHARED].forward(torch.cat(acts), torch.cat(masks))
        self.busy, self.group_grads = GROUP, {}
        return {c: out[r0:r1, :t] for c, (r0, r1, t) in self.group.items()}

    def backward_group(self, client: str, grad: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
        """Collect `client`'s gradient (None: it left, contributes zero); when all are in, run
        one backward + step and return each member's activation gradient."""
        if client not in self.group:
            raise RuntimeError(f"{client} is not in the pending batch")
        r0, r1, t = self.group[client]
        self.group_grads[client] = grad
        if len(self.group_grads) < len(self.group):
            return None
        link = self.links[SHARED]
        if all(g is None for g in self.group_grads.values()):  # everyone left: no step at all
            link.drop()
            self.group, self.group_grads, self.busy = {}, {}, None
            return {}
        out = link.pending_output
        full = torch.zeros(out.shape, dtype=torch.float32)  # host-side, as the members' gradients are
        for c, (a, b, n) in self.group.items():
            if self.group_grads[c] is not None:
                full[a:b, :n] = self.group_grads[c]
        try:
            grad_in = link.backward(full)
        finally:
            members, self.group, self.group_grads, self.busy = self.group, {}, {}, None
        self.states[SHARED] = get_adapter_state(self.trunk)
        return {c: grad_in[a:b, :n] for c, (a, b, n) in members.items()}

    def abort(self, client: str) -> dict[str, torch.Tensor] | None:
        """Forget a client's pending step (it went away).  If it was in a batch, the others'
        gradients may now be complete: they are returned."""
        if self.busy == client:
            self.links[self._key(client)].drop()
            self.busy = None
        elif self.busy == GROUP and client in self.group:
            return self.backward_group(client, None)
        return None

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
        """Housekeeping hook, called between messages (the distributed trunk pings its ranks)."""

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


def load_trunk(cfg: RunConfig, model_dir, *, clients: list[str], group=None) -> TrunkService:
    """The run's trunk (only its own tensors are read) with its LoRA adapter(s) and optimizer(s),
    placed on ``server.device`` with its frozen base in ``server.dtype``.

    Under torchrun, `group` (a `splitfed.server.distributed.TrunkGroup`) names this rank's
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
    return TrunkService(part, mode=cfg.server.mode, clients=clients, optim=optim, device=device, dtype=dtype)
