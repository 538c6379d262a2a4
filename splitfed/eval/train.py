"""One cell's victim: a client trained under a defense, with the epsilon its ledger states.

The defense is built from the product's own pieces: a `RunConfig` ``[privacy]`` section drives
`ClientPrivacy` (the same mechanisms, ledger entries and DP-SGD stepper a networked client
uses), and compression is the wire's own round trip, given to `ClientPrivacy` as its
``post_release`` hook (none on a channel whose discrete release goes as its integers, exactly).
The trunk runs in process
(`LocalLink`): the cut traffic is the same tensors the networked client would send.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splitfed.client.privacy import ClientPrivacy, PostRelease
from splitfed.config.fields import ConfigError
from splitfed.config.parties import Compression
from splitfed.data import Example, batches, collate
from splitfed.eval.config import AttackConfig, ChannelNoise, DefenseSpec
from splitfed.eval.data import EvalData

_CHANNELS = {
    "activations": ("activation_ldp", "raw_activations"),
    "gradients": ("gradient_ldp", "raw_gradients"),
    "update": ("dpsgd", "raw_update"),
}

Release = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Progress = Callable[[str], None]


@dataclass
class Trained:
    """The outcome of training a cell's client(s)."""

    split: object  # the victim's SplitModel after training (its trunk = the server's)
    before: dict[str, dict[str, torch.Tensor]]  # client adapter states at the round's start
    victim: dict[str, dict[str, torch.Tensor]]  # the victim's adapter states after the round
    aggregate: dict[str, dict[str, torch.Tensor]] | None  # mean over clients (secure aggregation)
    clients: int
    release_activations: Release  # the victim's release functions (its noise source)
    release_gradient: Release
    attacker_release_activations: Release | None  # same configuration, independent noise
    attacker_release_gradient: Release | None
    epsilon: dict[str, float]  # party -> epsilon (inf = no guarantee), and "total"
    clip: dict[str, float]  # channel -> clip used
    ppl: float
    ppl_before: float
    seconds: float
    run_config: object = None  # the product's RunConfig of the cell (its [privacy]), for split generation


def lora_config(r: int):
    from splitfed.models import LoraSpec, SplitLoraConfig

    spec = LoraSpec(r=r, alpha=2 * r)
    return SplitLoraConfig(spec, spec, spec)


def resolve_cut(cfg: AttackConfig, n_layers: int, a: int) -> tuple[int, int]:
    b = cfg.model.top_cut if cfg.model.top_cut >= 0 else n_layers + cfg.model.top_cut
    if not 0 <= a < b <= n_layers:
        raise ConfigError(f"cut a = {a} with top cut b = {b} is not valid for a {n_layers}-layer model (need a < b)")
    return a, b


def fresh_split(name: str, cut: tuple[int, int], *, lora=None, seed: int = 0):
    """The public pretrained model cut at `cut` (a fresh copy), with LoRA when `lora` is given."""
    from splitfed.models import apply_lora, load_pretrained, split_model

    pre = load_pretrained(name)
    split = split_model(pre.model, cut, verify=False)
    if lora is not None:
        apply_lora(split, lora, seed=seed)
    return split.eval()


def client_states(split) -> dict[str, dict[str, torch.Tensor]]:
    from splitfed.models import get_adapter_state

    return {
        role: {k: v.detach().clone() for k, v in get_adapter_state(split.parts[role]).items()}
        for role in ("bottom", "top")
    }


def load_client_states(split, states: dict[str, dict[str, torch.Tensor]]) -> None:
    from splitfed.models import set_adapter_state

    for role, state in states.items():
        if state:
            set_adapter_state(split.parts[role], state)


def mean_states(states: list[dict[str, dict[str, torch.Tensor]]]) -> dict[str, dict[str, torch.Tensor]]:
    return {role: {k: torch.stack([s[role][k] for s in states]).mean(0) for k in states[0][role]} for role in states[0]}


def unit_norm_quantile(split, examples: list[Example], unit: str, q: float, pad: int, channel: str) -> float:
    """Quantile `q` of the per-unit L2 norms of what `channel` sends on a few training batches."""
    norms: list[float] = []
    for batch in batches(examples[:16], 4, pad_token_id=pad):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.enable_grad():
            h = split.bottom(ids, mask)
            x = h.detach() if channel == "activation" else split.trunk(h, mask).detach().requires_grad_(True)
            if channel == "gradient":
                split.top(x, mask, batch["labels"]).loss.backward()
                x = x.grad
        x = x * mask[..., None]
        if unit == "sequence":
            norms += [float(n) for n in x.flatten(1).norm(dim=1)]
        else:
            norms += [float(n) for n in x.norm(dim=-1)[mask.bool()]]
    for p in split.trunk.parameters():
        p.grad = None
    for p in split.top.parameters():
        p.grad = None
    return float(np.quantile(norms, q)) if q < 1 else max(norms)


def _channel(noise: ChannelNoise, clip: float | None) -> dict:
    """A ``[privacy.activations]`` / ``[privacy.gradients]`` table for one channel's noise."""
    if not noise.on:
        return {"enabled": False}
    return {"enabled": True, "unit": noise.unit, "clip": clip, "epsilon": noise.epsilon,
            "noise_multiplier": noise.noise_multiplier}  # fmt: skip


def privacy_config(cfg: AttackConfig, d: DefenseSpec, clip: dict[str, float], n: int, run_dir: Path):
    """The product's `RunConfig` for this defense (privacy on, so every channel gets a ledger entry)."""
    from splitfed.config import parse_config
    from splitfed.privacy.calibrate import discrete_gaussian_noise_multiplier
    from splitfed.privacy.dpsgd import STEP_TV

    t = cfg.train
    q = min(1.0, t.batch_size / n)
    dpsgd = {"enabled": False}
    if d.dpsgd_epsilon > 0:
        # no amplification against the server-aggregator: the steps are discrete Gaussian releases (RDP + slack)
        nm = discrete_gaussian_noise_multiplier(d.dpsgd_epsilon, t.delta, releases=t.steps, tv=STEP_TV)
        dpsgd = {"enabled": True, "noise_multiplier": nm, "max_grad_norm": 1.0, "sample_rate": q}
    channels = d.channels
    return parse_config(
        {
            "run": {"dir": str(run_dir), "seed": t.seed},
            "data": {"max_length": cfg.data.max_length, "batch_size": t.batch_size},
            "training": {"local_steps": t.steps},
            "privacy": {
                "enabled": True,
                "delta": t.delta,
                "activations": _channel(channels["activation"], clip.get("activation")),
                "gradients": _channel(channels["gradient"], clip.get("gradient")),
                "dpsgd": dpsgd,
            },
        }
    )


def exact_channels(rc) -> frozenset[str]:
    """The channels whose release is the discrete mechanism's: the wire carries its integers exactly."""
    p = rc.privacy
    pairs = (("activation", p.activations), ("gradient", p.gradients))
    return frozenset(name for name, channel in pairs if p.releases_integers(channel))


def wire_round_trip(kind: Compression, exact: frozenset[str] = frozenset()) -> PostRelease | None:
    """The wire's compression round trip of a released tensor (straight-through for autograd), for
    `ClientPrivacy`'s ``post_release``; channels in `exact` go as they are.  ``None`` for fp32."""
    if kind == "fp32":
        return None
    from splitfed.wire.compression import compress, decompress

    def round_trip(channel: str, y: torch.Tensor) -> torch.Tensor:
        if channel in exact:
            return y
        z = decompress("x", compress("x", y, kind), kind)
        return y + (z - y).detach()

    return round_trip


def heldout_perplexity(split, examples: list[Example], pad: int) -> float:
    """Every cell's utility: the perplexity of `split`, evaluated clean, on the held-out reviews."""
    from splitfed.training import evaluate

    split.eval()
    return evaluate(lambda i, k: split(i, k), batches(examples, 8, pad_token_id=pad)).perplexity


def base_perplexity(cfg: AttackConfig, cut: tuple[int, int], data: EvalData) -> float:
    """The public base model (no adapter) evaluated exactly as the cells are: the utility floor.

    A defended model that does not beat it bought no utility: anyone can download the base
    model.  The cut does not change it (the split forward is the whole model's)."""
    return heldout_perplexity(fresh_split(cfg.model.name, cut), data.heldout, data.pad)


def _train_client(split, priv, examples: list[Example], cfg: AttackConfig, optim, link, pad: int, progress: Progress,
                  label: str):  # fmt: skip
    t = cfg.train
    step = priv.stepper(split.bottom, split.top, link, optim, len(examples))
    if priv.dpsgd is not None:
        plan = priv.poisson_round(len(examples))
        for i, idx in enumerate(plan):
            step.step(collate([examples[j] for j in idx], pad_token_id=pad)) if idx else step.empty_step()
            progress(f"{label} step {i + 1}/{t.steps}")
        step.close()
        return
    rng = np.random.default_rng(t.seed)
    done = 0
    while done < t.steps:  # epochs over the client's data until `steps` steps are taken
        for batch in batches(
            examples, t.batch_size, rng=rng, drop_last=len(examples) >= t.batch_size, pad_token_id=pad
        ):
            step.step(batch)
            done += 1
            progress(f"{label} step {done}/{t.steps}")
            if done == t.steps:
                break


def clips(split, d: DefenseSpec, data: EvalData) -> dict[str, float]:
    """channel -> clip of each noised channel: quantile ``d.clip_quantile`` of its unit norms."""
    return {
        channel: unit_norm_quantile(split, data.train, noise.unit, d.clip_quantile, data.pad, channel)
        for channel, noise in d.channels.items()
        if noise.on
    }


def client_privacy(rc, k: int, d: DefenseSpec, n: int, seed: int) -> ClientPrivacy:
    """Client `k`'s `ClientPrivacy` (reproducible noise: the cells are reproducible), with the wire's
    compression after the noise, as on the wire, and the round's entries already in its ledger."""
    from splitfed.client.data import releases_per_round
    from splitfed.privacy.mechanisms import TorchNoise

    seed = seed * 1000 + k  # injected noise (secure_noise = false would state inf)
    noise, gen = TorchNoise(torch.Generator().manual_seed(seed)), torch.Generator().manual_seed(seed + 1)
    hook = wire_round_trip(d.compression, exact_channels(rc))
    p = ClientPrivacy(rc, k, f"client-{k}", n_examples=n, noise=noise, generator=gen, post_release=hook)
    p.ledger.append(p.round_entries(0, releases_per_round(rc, n)))
    return p


def train_clients(cfg: AttackConfig, split, before, d: DefenseSpec, rc, data: EvalData, progress: Progress):
    """One round of every client of the cell from the client adapter states `before` (the victim
    is client 0); returns the victim's `ClientPrivacy` and each client's states after the round."""
    from splitfed.training import LocalLink, OptimConfig

    optim = OptimConfig(lr=cfg.train.lr)
    link = LocalLink(split.trunk, optim)
    clients = cfg.train.clients if d.secure_aggregation else 1
    n = len(data.train)
    states, privacy = [], []
    for k in range(clients):
        p = client_privacy(rc, k, d, n, cfg.train.seed)
        if k > 0:
            load_client_states(split, before)
        examples = data.train if k == 0 else data.others[k - 1]
        _train_client(split, p, examples, cfg, optim, link, data.pad, progress, f"client {k + 1}/{clients}")
        states.append(client_states(split))
        privacy.append(p)
    return privacy[0], states


def stated_epsilons(priv: ClientPrivacy, delta: float) -> dict[str, float]:
    """party -> epsilon (and "total") from the victim's ledger, and each channel's on its own."""
    from splitfed.privacy.ledger import statements

    epsilon = {k: float(v) for k, v in priv.spent().items()}
    entries = priv.ledger.entries()
    for channel, mechanisms in _CHANNELS.items():  # each channel on its own, as the ledger records it
        mine = [e for e in entries if e.mechanism in mechanisms]  # one party: its statement, no amplification
        epsilon[channel] = statements(mine, delta)[0].epsilon if mine else 0.0
    return epsilon


def attacker_release(channel: str, mech, hook: PostRelease | None, seed: int) -> Release:
    """The victim's release of `channel` as the server can rerun it: the same mechanism and
    compression, independent noise."""
    from splitfed.privacy.mechanisms import TorchNoise

    gen = torch.Generator().manual_seed(seed + 7919)

    def release(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = x if mech is None else mech.apply(x, mask, TorchNoise(gen))
        return y if hook is None else hook(channel, y)

    return release


def train_cell(cfg: AttackConfig, cut: tuple[int, int], d: DefenseSpec, data: EvalData, run_dir: Path,
               progress: Progress = lambda s: None) -> Trained:  # fmt: skip
    """Train the victim (and, under secure aggregation, the other clients) for one round under `d`."""
    import time

    start = time.perf_counter()
    t = cfg.train
    torch.manual_seed(t.seed)
    split = fresh_split(cfg.model.name, cut, lora=lora_config(cfg.model.lora_r), seed=t.seed)
    before = client_states(split)
    ppl_before = heldout_perplexity(split, data.heldout, data.pad)
    clip = clips(split, d, data)
    shutil.rmtree(run_dir, ignore_errors=True)  # a cell re-run after an interruption starts a fresh ledger
    run_dir.mkdir(parents=True)
    rc = privacy_config(cfg, d, clip, len(data.train), run_dir)
    priv, states = train_clients(cfg, split, before, d, rc, data, progress)
    load_client_states(split, states[0])
    return Trained(
        split=split,
        before=before,
        victim=states[0],
        aggregate=mean_states(states) if len(states) > 1 else None,
        clients=len(states),
        release_activations=priv.release_activations,
        release_gradient=priv.release_gradient,
        attacker_release_activations=attacker_release("activation", priv.activations, priv.post_release, t.seed),
        attacker_release_gradient=attacker_release("gradient", priv.gradients, priv.post_release, t.seed),
        epsilon=stated_epsilons(priv, t.delta),
        clip=clip,
        ppl=heldout_perplexity(split, data.heldout, data.pad),
        ppl_before=ppl_before,
        seconds=time.perf_counter() - start,
        run_config=rc,
    )
