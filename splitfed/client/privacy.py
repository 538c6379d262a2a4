"""A client's privacy: its mechanisms, its ledger, and the budget stop.

Per round the client states, before it releases anything, what it is about to release
(one ledger entry per channel) and appends it durably; the entries are a conservative
record (a round cut short still counts in full).  Channels and whom they reach:

- activations (Bottom -> server): local DP if ``privacy.activations``, else a non-private release;
- gradients (Top -> server; they carry label information): likewise with ``privacy.gradients``;
- the adapter update (-> aggregator): DP-SGD if ``privacy.dpsgd``, else non-private.

Side information (`Disclosure`, composed into no epsilon, listed next to every one):

- ``lengths`` (-> server, each round that sends activations): the attention mask travels in
  the clear and padding positions are exact zeros, so the server learns every example's length;
- ``sample_count`` (-> aggregator, once at HELLO): the FedAvg weight is the client's |D|.

Composition: an example's releases are composed over every time it is used (once per pass
over the client's data, i.e. per epoch).  No amplification by subsampling is claimed against
anyone: the server sees every release of the batch it is given, and as aggregator it also
sees each Poisson batch's size and which DP-SGD steps were empty (`ledger.NO_AMPLIFICATION`).

Noise is secret: `SecureNoise` (the cut channels' and DP-SGD's discrete noise) and
`secure_generator()` (Poisson sampling, float DP-SGD noise), both seeded from the OS.  Reproducible
noise is a test-only injection (`noise=`, `generator=`); ``privacy.secure_noise = false``
seeds it from ``run.seed``, which the server holds, so every noised channel is then recorded
as non-private (`ledger.REPRODUCIBLE_NOISE`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from crypto.dgauss import cdt_sampler
from splitfed.config import RunConfig
from splitfed.config.privacy import CutNoise
from splitfed.privacy.dpsgd import DPSGDConfig, poisson_batches, secure_generator
from splitfed.privacy.events import NonPrivateEvent, Party
from splitfed.privacy.ledger import (
    REPRODUCIBLE_NOISE,
    Disclosure,
    Ledger,
    LedgerEntry,
    Relation,
    Statement,
    finite,
    spent,
    statements,
)
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

PostRelease = Callable[[str, torch.Tensor], torch.Tensor]


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


LENGTHS = "the attention mask travels in the clear (padding is exact zeros): every example's length"
SAMPLE_COUNT = "HELLO's n_samples (the FedAvg weight): the client's number of training examples"


class ClientPrivacy:
    def __init__(
        self,
        cfg: RunConfig,
        client_id: int,
        name: str,
        *,
        n_examples: int,
        noise: NoiseSource | None = None,
        generator: torch.Generator | None = None,
        post_release: PostRelease | None = None,
    ):
        """`noise` / `generator` (tests only): injected noise and DP-SGD generator, taken as secret.

        `post_release(channel, tensor)`: applied to what each channel releases (after any noise),
        with ``channel`` "activation" or "gradient"; its output is what is sent (the attack suite's
        wire compression round trip).  It is not accounted for: it may only post-process.
        """
        p = cfg.privacy
        self.cfg, self.name = cfg, name
        self.post_release = post_release
        self.activations = mechanism_of(p.activations, p.delta, max_positions=cfg.data.max_length)
        self.gradients = mechanism_of(p.gradients, p.delta, max_positions=cfg.data.max_length)
        # secure_noise = false: seeded from run.seed, which the server holds -> recorded as non-private
        self.reproducible = not p.secure_noise
        seed = cfg.run.seed * 1000 + client_id
        if noise is None:
            noise = TorchNoise(torch.Generator().manual_seed(seed)) if self.reproducible else SecureNoise()
        self.noise: NoiseSource = noise
        # DP-SGD noise and Poisson sampling (Opacus takes a torch.Generator)
        if generator is None:
            generator = torch.Generator().manual_seed(seed + 1) if self.reproducible else secure_generator()
        self.generator = generator
        self.dpsgd = None
        if p.dpsgd.enabled:
            q = p.dpsgd.sample_rate or min(1.0, cfg.data.batch_size / n_examples)
            d = p.dpsgd
            self.dpsgd = DPSGDConfig(d.noise_multiplier, d.max_grad_norm, q, d.mechanism, d.grid_step)
        self.hidden: int | None = None  # known after `prepare`
        self.dpsgd_coords: int | None = None
        root = Path(cfg.run.dir) / "privacy"
        self.ledger = Ledger(root / f"{name}.jsonl")
        self.ledger.entries()  # a damaged ledger (LedgerError, file:line) stops the client before it releases
        write_settings(root, delta=p.delta, accountant=p.accountant, max_epsilon=p.max_epsilon)

    # ------------------------------------------------------------------ mechanisms on the step
    def prepare(self, hidden: int, *, trainable: int | None = None) -> None:
        """Build the discrete noise tables before the first step (seconds for a large sigma), for a
        model of width `hidden` and `trainable` client adapter parameters (DP-SGD); from then on
        the ledger charges the tables' own sampler slack instead of the bound for any size."""
        for mech in (self.activations, self.gradients):
            if isinstance(mech, DiscreteGaussianLDP):
                mech.prepare(hidden)
        self.hidden = hidden
        if self.dpsgd is not None and self.dpsgd.mechanism == "discrete" and trainable:
            self.dpsgd_coords = trainable
            cdt_sampler(self.dpsgd.grid(trainable)[2])  # build the table now, not at the first step

    def grid_steps(self, hidden: int) -> tuple[float, float]:
        """(activations, gradient): gamma of each channel whose mechanism is the discrete one, else 0.

        The link sends such a channel's release, k * gamma, as the integers k (`wire.INTEGERS`).
        """
        act, grad = (
            m.grid(hidden)[0] if isinstance(m, DiscreteGaussianLDP) else 0.0 for m in (self.activations, self.gradients)
        )
        return act, grad

    def release_activations(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = h if self.activations is None else self.activations.apply(h, mask, self.noise)
        return out if self.post_release is None else self.post_release("activation", out)

    def release_gradient(self, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = g if self.gradients is None else self.gradients.apply(g, mask, self.noise)
        return out if self.post_release is None else self.post_release("gradient", out)

    # ------------------------------------------------------------------ accounting
    def hello_entries(self) -> list[LedgerEntry]:
        """What HELLO discloses (once per run: nothing when the ledger already records it)."""
        if any(e.mechanism == "sample_count" for e in self.ledger.entries()):
            return []
        return [LedgerEntry(0, "sample_count", Party.AGGREGATOR, Disclosure(1), reason=SAMPLE_COUNT)]

    def round_entries(self, rnd: int, releases: int) -> list[LedgerEntry]:
        """What round `rnd` releases: `releases` uses of its most-used example, and the update."""
        positions = self.cfg.data.max_length
        out = []
        if releases > 0:  # a DP-SGD round whose Poisson batches were all empty sends nothing
            out.append(LedgerEntry(rnd, "lengths", Party.SERVER, Disclosure(releases), reason=LENGTHS))
        for channel, mech in (("activation", self.activations), ("gradient", self.gradients)):
            if releases == 0:
                continue
            if mech is None:
                out.append(LedgerEntry(rnd, f"raw_{channel}s", Party.SERVER, NonPrivateEvent(releases)))
            else:
                event = mech.event(
                    releases, max_positions=positions, **({"hidden": self.hidden} if self.hidden else {})
                )
                out.append(self._noised(LedgerEntry(rnd, f"{channel}_ldp", Party.SERVER, event, mech.unit, mech.clip)))
        if self.dpsgd is None:
            out.append(LedgerEntry(rnd, "raw_update", Party.AGGREGATOR, NonPrivateEvent(1)))
        else:
            for event in self.dpsgd.events(self.cfg.training.local_steps, coords=self.dpsgd_coords):
                entry = LedgerEntry(
                    rnd, "dpsgd", Party.AGGREGATOR, event, clip=self.dpsgd.max_grad_norm, relation=Relation.ADD_REMOVE
                )
                out.append(self._noised(entry))
        return out

    def _noised(self, entry: LedgerEntry) -> LedgerEntry:
        """`entry`, or a non-private one when the noise is reproducible from the shared config."""
        if not self.reproducible or isinstance(entry.event, NonPrivateEvent):
            return entry
        count = entry.event.count
        return dataclasses.replace(entry, event=NonPrivateEvent(count), reason=REPRODUCIBLE_NOISE)

    def poisson_round(self, n_examples: int) -> list[list[int]]:
        """DP-SGD: the indices of each of the round's Poisson batches (drawn before any release)."""
        return poisson_batches(
            range(n_examples),
            sample_rate=self.dpsgd.sample_rate,
            steps=self.cfg.training.local_steps,
            generator=self.generator,
        )

    def poisson_batches(self, examples: list, *, pad_token_id: int) -> tuple[list[dict | None], int]:
        """DP-SGD: the round's collated Poisson batches (None: an empty batch) and how often its
        most-used example is sent."""
        from splitfed.data import collate

        plan = self.poisson_round(len(examples))
        counts = collections.Counter(i for idx in plan for i in idx)
        side = self.cfg.data.padding_side
        batches = [
            collate([examples[i] for i in idx], pad_token_id=pad_token_id, padding_side=side) if idx else None
            for idx in plan
        ]
        return batches, max(counts.values(), default=0)

    def round_statement(self) -> dict:
        """The metrics line of a round: epsilon and relation per party, what no epsilon covers."""
        stated = self.statements()
        return {
            "delta": self.cfg.privacy.delta,
            "epsilon": {s.party: finite(s.epsilon) for s in stated},
            "relation": {s.party: s.relation.value for s in stated},
            "not_covered": sorted({line for s in stated for line in s.not_covered}),
        }

    def stepper(self, bottom, top, link, optim, n_examples: int):
        """The client half of a step with this client's mechanisms: DP-SGD or plain, LDP on the cut."""
        from splitfed.training import ClientStep

        hooks = {"release_activations": self.release_activations, "release_gradient": self.release_gradient}
        if self.dpsgd is None:
            return ClientStep(bottom, top, link, optim, **hooks)
        from splitfed.privacy.dpsgd_step import DPSGDStrategy

        noise = {"generator": self.generator, "randbytes": self.noise.randbytes}
        strategy = partial(DPSGDStrategy, dp=self.dpsgd, n_examples=n_examples, **noise)
        return ClientStep(bottom, top, link, optim, strategy=strategy, **hooks)

    def spent(self, extra: list[LedgerEntry] = ()) -> dict[str, float]:
        p = self.cfg.privacy
        return spent([*self.ledger.entries(), *extra], p.delta, accountant=p.accountant)

    def statements(self) -> list[Statement]:
        """Every stated epsilon with its relation and what it does not cover."""
        p = self.cfg.privacy
        return statements(self.ledger.entries(), p.delta, accountant=p.accountant)

    def over_budget(self, upcoming: list[LedgerEntry]) -> float | None:
        """The total epsilon after `upcoming` if that exceeds ``privacy.max_epsilon``, else None."""
        budget = self.cfg.privacy.max_epsilon
        if budget <= 0:
            return None
        total = self.spent(upcoming)["total"]
        return total if total > budget else None
