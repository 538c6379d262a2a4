"""A client's privacy: its mechanisms, its ledger, and the budget stop.

Per round the client states, before it releases anything, what it is about to release
(one ledger entry per channel) and appends it durably; the entries are a conservative
record (a round cut short still counts in full).  Channels and whom they reach:

- activations (Bottom -> server): local DP if ``privacy.activations``, else a non-private release;
- gradients (Top -> server; they carry label information): likewise with ``privacy.gradients``;
- the adapter update (-> aggregator): DP-SGD if ``privacy.dpsgd``, else non-private.

Composition: an example's releases are composed over every time it is used (once per pass
over the client's data, i.e. per epoch); no amplification by subsampling is claimed for
the cut traffic, because the server sees every release of the batch it is given.  DP-SGD's
Poisson subsampling is accounted with amplification for the update channel only, where the
aggregator sees just the result.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from splitfed.config import RunConfig
from splitfed.config.privacy import CutNoise
from splitfed.privacy.dpsgd import DPClientStep, DPSGDConfig, poisson_batches, secure_generator
from splitfed.privacy.events import NonPrivateEvent, Party
from splitfed.privacy.ledger import Ledger, LedgerEntry, spent
from splitfed.privacy.mechanisms import (
    MAX_RELEASE_TV,
    DiscreteGaussianLDP,
    GaussianLDP,
    NoiseSource,
    SecureNoise,
    TorchNoise,
)
from splitfed.privacy.report import write_settings

log = logging.getLogger("splitfed.client")


def mechanism_of(
    channel: CutNoise, delta: float, *, max_positions: int = 1
) -> DiscreteGaussianLDP | GaussianLDP | None:
    """The configured local-DP mechanism of a channel, its noise calibrated when given as epsilon
    (discrete: with RDP, the way its events are composed; float: analytic Gaussian)."""
    if not channel.enabled:
        return None
    nm = channel.noise_multiplier
    if channel.mechanism == "float":
        if nm == 0:
            from splitfed.privacy.calibrate import analytic_gaussian_sigma

            nm = analytic_gaussian_sigma(channel.epsilon, delta, sensitivity=1.0)
        return GaussianLDP(clip=channel.clip, noise_multiplier=nm, unit=channel.unit)
    if nm == 0:
        from splitfed.privacy.calibrate import discrete_gaussian_noise_multiplier

        nm = discrete_gaussian_noise_multiplier(channel.epsilon, delta, tv=MAX_RELEASE_TV)
    return DiscreteGaussianLDP(channel.clip, nm, channel.unit, max_positions, channel.grid_step)


class ClientPrivacy:
    def __init__(self, cfg: RunConfig, client_id: int, name: str, *, n_examples: int):
        p = cfg.privacy
        self.cfg, self.name = cfg, name
        self.activations = mechanism_of(p.activations, p.delta, max_positions=cfg.data.max_length)
        self.gradients = mechanism_of(p.gradients, p.delta, max_positions=cfg.data.max_length)
        seed = cfg.run.seed * 1000 + client_id
        self.noise: NoiseSource = SecureNoise() if p.secure_noise else TorchNoise(torch.Generator().manual_seed(seed))
        # DP-SGD noise and Poisson sampling (Opacus takes a torch.Generator)
        self.generator = secure_generator() if p.secure_noise else torch.Generator().manual_seed(seed + 1)
        self.dpsgd = None
        if p.dpsgd.enabled:
            q = p.dpsgd.sample_rate or min(1.0, cfg.data.batch_size / n_examples)
            self.dpsgd = DPSGDConfig(p.dpsgd.noise_multiplier, p.dpsgd.max_grad_norm, q)
        root = Path(cfg.run.dir) / "privacy"
        self.ledger = Ledger(root / f"{name}.jsonl")
        write_settings(root, delta=p.delta, accountant=p.accountant, max_epsilon=p.max_epsilon)

    # ------------------------------------------------------------------ mechanisms on the step
    def prepare(self, hidden: int) -> None:
        """Build the discrete noise tables for a model of width `hidden` before the first step."""
        for mech in (self.activations, self.gradients):
            if isinstance(mech, DiscreteGaussianLDP):
                mech.prepare(hidden)

    def release_activations(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return h if self.activations is None else self.activations.apply(h, mask, self.noise)

    def release_gradient(self, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return g if self.gradients is None else self.gradients.apply(g, mask, self.noise)

    # ------------------------------------------------------------------ accounting
    def round_entries(self, rnd: int, releases: int) -> list[LedgerEntry]:
        """What round `rnd` releases: `releases` uses of its most-used example, and the update."""
        positions = self.cfg.data.max_length
        out = []
        for channel, mech in (("activation", self.activations), ("gradient", self.gradients)):
            if releases == 0:  # a DP-SGD round whose Poisson batches were all empty sends nothing
                continue
            if mech is None:
                out.append(LedgerEntry(rnd, f"raw_{channel}s", Party.SERVER, NonPrivateEvent(releases)))
            else:
                event = mech.event(releases, max_positions=positions)
                out.append(LedgerEntry(rnd, f"{channel}_ldp", Party.SERVER, event, mech.unit, mech.clip))
        if self.dpsgd is None:
            out.append(LedgerEntry(rnd, "raw_update", Party.AGGREGATOR, NonPrivateEvent(1)))
        else:
            for event in self.dpsgd.events(self.cfg.training.local_steps):
                out.append(LedgerEntry(rnd, "dpsgd", Party.AGGREGATOR, event, clip=self.dpsgd.max_grad_norm))
        return out

    def poisson_round(self, n_examples: int) -> list[list[int]]:
        """DP-SGD: the indices of each of the round's Poisson batches (drawn before any release)."""
        return poisson_batches(
            range(n_examples),
            sample_rate=self.dpsgd.sample_rate,
            steps=self.cfg.training.local_steps,
            generator=self.generator,
        )

    def stepper(self, bottom, top, link, optim, n_examples: int):
        """The client half of a step with this client's mechanisms: DP-SGD or plain, LDP on the cut."""
        hooks = {"release_activations": self.release_activations, "release_gradient": self.release_gradient}
        if self.dpsgd is None:
            from splitfed.training import ClientStep

            return ClientStep(bottom, top, link, optim, **hooks)
        return DPClientStep(
            bottom, top, link, optim, self.dpsgd, n_examples=n_examples, generator=self.generator, **hooks
        )

    def spent(self, extra: list[LedgerEntry] = ()) -> dict[str, float]:
        p = self.cfg.privacy
        return spent([*self.ledger.entries(), *extra], p.delta, accountant=p.accountant)

    def over_budget(self, upcoming: list[LedgerEntry]) -> float | None:
        """The total epsilon after `upcoming` if that exceeds ``privacy.max_epsilon``, else None."""
        budget = self.cfg.privacy.max_epsilon
        if budget <= 0:
            return None
        total = self.spent(upcoming)["total"]
        return total if total > budget else None
