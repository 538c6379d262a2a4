"""Utility under privacy: held-out perplexity of the demo task at several epsilons per mechanism.

SmolLM2-135M cut at (2, 28), LoRA r=8 on every part, the drug reviews' 600 training examples
as one client, `--steps` steps of batch 4 in process (the same client step the networked
client runs; the trunk in process), then the held-out perplexity of the exported model on
48 test reviews *without* noise (what the trained adapter is worth).  Rows:

- the public base model (every adapter off), evaluated the same way: the utility floor; each
  other row says whether it beats it (a private model that does not bought no utility);
- no privacy (epsilon = inf);
- activation LDP, unit sequence and unit token, at per-release epsilon 1 / 3 / 8 (each
  example is released once: steps * 4 <= 600), clip = the median unit norm measured on the
  first batches;
- activation + gradient LDP (sequence) at 8 each: the server's epsilon is their composition;
- each LDP row twice: ``float`` (float32 Gaussian, comparison only: no epsilon holds for its
  bytes, see docs/privacy.md) and ``integer`` (the default discrete Gaussian release on a
  power-of-two grid, calibrated to the same epsilon with RDP and the sampler's slack);
- DP-SGD on the client adapters at epsilon 1 / 3 / 8 over the steps against the aggregator
  (Poisson q = 4 / 600, no amplification claimed: the server-aggregator sees the sampling),
  float (Opacus' noise, comparison only) and integer (the default discrete release), same noise.

    python benchmarks/privacy_utility.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from functools import partial


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--json", type=str, default=None)
    p.add_argument("--skip-ldp", action="store_true", help="only the baseline, both-channel LDP and DP-SGD rows")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from transformers.utils import logging as hf_logging

    from splitfed.data import batches, collate, load_drug_reviews, tokenize_examples
    from splitfed.models import (
        LoraSpec,
        SplitLoraConfig,
        apply_lora,
        get_adapter_state,
        load_pretrained,
        set_adapter_state,
        split_model,
    )
    from splitfed.models.lora import adapters_disabled
    from splitfed.privacy.accountants import epsilon_of
    from splitfed.privacy.calibrate import (
        analytic_gaussian_sigma,
        discrete_gaussian_noise_multiplier,
        gaussian_composition_epsilon,
    )
    from splitfed.privacy.dpsgd import STEP_TV, DPSGDConfig, poisson_batches
    from splitfed.privacy.dpsgd_step import DPSGDStrategy
    from splitfed.privacy.events import GaussianEvent
    from splitfed.privacy.mechanisms import MAX_RELEASE_TV, DiscreteGaussianLDP, GaussianLDP, SecureNoise, TorchNoise
    from splitfed.training import ClientStep, LocalLink, OptimConfig, evaluate
    from splitfed.utility import Utility

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    pre = load_pretrained("smollm2-135m")
    split = split_model(pre.model, (2, 28))
    apply_lora(split, SplitLoraConfig(*(LoraSpec(r=8, alpha=16),) * 3), seed=0)
    init = {role: get_adapter_state(part) for role, part in split.parts.items()}
    pad = pre.tokenizer.pad_token_id or 0
    train = tokenize_examples(load_drug_reviews("train"), pre.tokenizer, max_length=128)
    test = tokenize_examples(load_drug_reviews("test")[:48], pre.tokenizer, max_length=128)
    order = list(batches(train, 4, rng=np.random.default_rng(0), drop_last=True, pad_token_id=pad))[: args.steps]
    optim = OptimConfig(lr=1e-3)

    # clip = median unit norm at the cut (activations) and of the returned gradient
    with torch.no_grad():
        h = [split.bottom(b["input_ids"], b["attention_mask"]) for b in order[:4]]
        m = [b["attention_mask"] for b in order[:4]]
        seq = [float(n) for x, k in zip(h, m, strict=True) for n in (x * k[..., None]).flatten(1).norm(dim=1)]
        tok = [float(n) for x, k in zip(h, m, strict=True) for n in x.norm(dim=-1)[k.bool()]]
    clip = {"sequence": statistics.median(seq), "token": statistics.median(tok)}
    print(f"median norms at cut 2: sequence {clip['sequence']:.1f}, token {clip['token']:.2f}", flush=True)

    def reset():
        for role, part in split.parts.items():
            set_adapter_state(part, init[role])

    def held_out() -> float:
        split.eval()
        res = evaluate(lambda i, k: split(i, k), batches(test, 8, pad_token_id=pad))
        return res.perplexity

    def train_with(make_step) -> tuple[float, float]:
        reset()
        link = LocalLink(split.trunk, optim)
        step = make_step(link)
        t = time.perf_counter()
        for i in range(args.steps):
            step(i)
        return held_out(), time.perf_counter() - t

    rows = []

    base: list[float] = []  # the public base model's perplexity, once

    def record(name, unit, eps_server, eps_aggregator, ppl, secs):
        beats = None if not base else Utility(base[0], ppl).beats_base
        row = dict(mechanism=name, unit=unit, eps_server=eps_server, eps_aggregator=eps_aggregator, ppl=ppl)
        rows.append(row | {"beats_base": beats})
        mark = "-" if beats is None else ("yes" if beats else "NO")
        print(
            f"{name:<24}{unit:<10}{_e(eps_server):>12}{_e(eps_aggregator):>12}{ppl:>10.2f}{mark:>7}{secs:>8.0f}s",
            flush=True,
        )

    print(f"{'mechanism':<24}{'unit':<10}{'eps server':>12}{'eps aggr.':>12}{'ppl':>10}{'beats':>7}{'time':>9}")
    with adapters_disabled(*split.parts.values()):  # the floor: the untouched public model
        base.append(held_out())
    record("public base model", "-", 0.0, 0.0, base[0], 0.0)
    cs = lambda link, **kw: ClientStep(split.bottom, split.top, link, optim, **kw)  # noqa: E731
    ppl, secs = train_with(lambda link: lambda i, s=cs(link): s.step(order[i]))
    record("none", "-", math.inf, math.inf, ppl, secs)
    gen = torch.Generator().manual_seed(1)
    for unit in () if args.skip_ldp else ("sequence", "token"):
        for eps in args.epsilons:
            mech = GaussianLDP(clip[unit], analytic_gaussian_sigma(eps, args.delta), unit)
            hook = lambda x, k, mech=mech: mech.apply(x, k, TorchNoise(gen))  # noqa: E731
            ppl, secs = train_with(
                lambda link, hook=hook: lambda i, s=cs(link, release_activations=hook): s.step(order[i])
            )
            eps_seq = (
                eps
                if unit == "sequence"
                else gaussian_composition_epsilon([mech.event(1, max_positions=128)], args.delta)
            )
            record("activation LDP float", unit, eps_seq, math.inf, ppl, secs)
            # the same epsilon with the integer release (the default): discrete Gaussian, secret noise
            nm = discrete_gaussian_noise_multiplier(eps, args.delta, tv=MAX_RELEASE_TV)
            dmech = DiscreteGaussianLDP(clip[unit], nm, unit, max_positions=128)
            dhook = lambda x, k, m=dmech: m.apply(x, k, SecureNoise())  # noqa: E731
            ppl, secs = train_with(
                lambda link, hook=dhook: lambda i, s=cs(link, release_activations=hook): s.step(order[i])
            )
            stated = epsilon_of([dmech.event(1, max_positions=128)], args.delta, accountant="rdp")
            record("activation LDP integer", unit, stated, math.inf, ppl, secs)
    # both server channels at 8 each (sequence unit); gradient clip = median returned-gradient norm
    grad_norms = []
    probe = cs(
        LocalLink(split.trunk, OptimConfig(lr=1e-12)),
        release_gradient=lambda g, k: grad_norms.extend(float(n) for n in g.flatten(1).norm(dim=1)) or g,
    )
    reset()
    for b in order[:4]:
        probe.step(b)
    nm8 = analytic_gaussian_sigma(8.0, args.delta)
    act = GaussianLDP(clip["sequence"], nm8, "sequence")
    grd = GaussianLDP(statistics.median(grad_norms), nm8, "sequence")
    hooks = {
        "release_activations": lambda x, k: act.apply(x, k, TorchNoise(gen)),
        "release_gradient": lambda g, k: grd.apply(g, k, TorchNoise(gen)),
    }
    ppl, secs = train_with(lambda link: lambda i, s=cs(link, **hooks): s.step(order[i]))
    both = gaussian_composition_epsilon([GaussianEvent(nm8), GaussianEvent(nm8)], args.delta)
    record("act.+grad. LDP float", "sequence", both, math.inf, ppl, secs)
    dnm8 = discrete_gaussian_noise_multiplier(8.0, args.delta, tv=MAX_RELEASE_TV)
    dact = DiscreteGaussianLDP(clip["sequence"], dnm8, "sequence", max_positions=128)
    dgrd = DiscreteGaussianLDP(statistics.median(grad_norms), dnm8, "sequence", max_positions=128)
    dhooks = {
        "release_activations": lambda x, k: dact.apply(x, k, SecureNoise()),
        "release_gradient": lambda g, k: dgrd.apply(g, k, SecureNoise()),
    }
    ppl, secs = train_with(lambda link: lambda i, s=cs(link, **dhooks): s.step(order[i]))
    dboth = epsilon_of([dact.event(1, max_positions=128), dgrd.event(1, max_positions=128)], args.delta)
    record("act.+grad. LDP integer", "sequence", dboth, math.inf, ppl, secs)
    q = 4 / len(train)
    for eps in args.epsilons:
        # against the aggregator (the server, who sees the sampling): no amplification, discrete RDP + slack
        nm = discrete_gaussian_noise_multiplier(eps, args.delta, releases=args.steps, tv=STEP_TV)
        plan = poisson_batches(train, sample_rate=q, steps=args.steps, generator=torch.Generator().manual_seed(2))
        for mech in ("float", "integer"):
            dp = DPSGDConfig(nm, 1.0, q, mechanism="float" if mech == "float" else "discrete")

            def make(link, dp=dp, plan=plan):
                s = ClientStep(
                    split.bottom,
                    split.top,
                    link,
                    optim,
                    strategy=partial(DPSGDStrategy, dp=dp, n_examples=len(train), generator=gen),
                )

                def run(i):
                    idx = plan[i]
                    s.step(collate([train[j] for j in idx], pad_token_id=pad)) if idx else s.empty_step()
                    if i == args.steps - 1:
                        s.close()

                return run

            ppl, secs = train_with(make)
            record(f"DP-SGD {mech}", "example", math.inf, eps, ppl, secs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "clip": clip, "rows": rows}, f, indent=2, default=str)
    return 0


def _e(x: float) -> str:
    return "inf" if math.isinf(x) else ("-" if x == 0 else f"{x:.3g}")


if __name__ == "__main__":
    raise SystemExit(main())
