"""The trunk with its LoRA adapter(s): one shared adapter (SFL-V2) or one per client (SFL-V1).

Steps are serialised: a client's forward and backward run back to back on the trunk while
other clients' forwards wait, so no backward ever sees weights changed under its graph.
Per-client adapters are swapped into the one set of LoRA parameters before a client's
forward and saved back after its optimizer step; each client has its own optimizer.
"""

from __future__ import annotations

import torch

from splitfed.aggregation import weighted_mean
from splitfed.models import SplitPart, get_adapter_state, set_adapter_state
from splitfed.training import LocalTrunk, OptimConfig

SHARED = "shared"


class TrunkService:
    def __init__(self, trunk: SplitPart, *, mode: str, clients: list[str], optim: OptimConfig):
        if mode not in ("shared", "per_client"):
            raise ValueError(f"server mode must be 'shared' or 'per_client', got {mode!r}")
        self.trunk, self.mode = trunk, mode
        names = [SHARED] if mode == "shared" else list(clients)
        self.links = {n: LocalTrunk(trunk, optim) for n in names}
        initial = get_adapter_state(trunk)
        self.states = {n: {k: v.clone() for k, v in initial.items()} for n in names}
        self._loaded: str | None = names[0]
        self.busy: str | None = None  # client whose backward is pending

    def _key(self, client: str) -> str:
        return SHARED if self.mode == "shared" else client

    def _load(self, key: str) -> None:
        if self._loaded != key:
            set_adapter_state(self.trunk, self.states[key])
            self._loaded = key

    def forward(self, client: str, act: torch.Tensor, mask: torch.Tensor, *, train: bool) -> torch.Tensor:
        if self.busy is not None:
            raise RuntimeError(f"trunk busy with {self.busy}")
        key = self._key(client)
        self._load(key)
        if not train:
            self.trunk.eval()
            with torch.no_grad():
                return self.trunk(act, mask)
        out = self.links[key].forward(act, mask)
        self.busy = client
        return out

    def backward(self, client: str, grad: torch.Tensor) -> torch.Tensor:
        if self.busy != client:
            raise RuntimeError(f"no pending forward for {client}")
        key = self._key(client)
        try:
            grad_in = self.links[key].backward(grad)
        finally:
            self.busy = None
        self.states[key] = get_adapter_state(self.trunk)
        return grad_in

    def abort(self, client: str) -> None:
        """Forget a pending step (its client went away)."""
        if self.busy == client:
            self.links[self._key(client)]._pending = None
            self.busy = None

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
