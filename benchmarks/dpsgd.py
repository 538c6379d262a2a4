"""Client step time of DP-SGD (`DPSGDStrategy`, Opacus) vs plain split training (`ClientStep`).

SmolLM2-135M cut at (2, 28), LoRA r=8 (q/v) on every part; the trunk runs in this process
behind a `LocalLink` (its LoRA trained without DP in both modes), timed separately so the
client's own share shows.  Batches are 4 x 128 tokens of real drug reviews, the same in both
modes (fixed size, not Poisson, so both do identical work).  DP: sigma 1.0, C 1.0, q = batch / n.
Repetitions alternate the order of the modes.  Prints the medians and the ratio DP / non-DP.

    python benchmarks/dpsgd.py --reps 5 --steps 3
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
import time
import warnings
from functools import partial

from _data import add_step_options, full_length_batches


class TimedLink:
    """A trunk link that adds up the seconds spent behind it (the server's share of a step)."""

    def __init__(self, link):
        self.link, self.seconds = link, 0.0

    def forward(self, act, mask):
        t = time.perf_counter()
        out = self.link.forward(act, mask)
        self.seconds += time.perf_counter() - t
        return out

    def backward(self, grad):
        t = time.perf_counter()
        out = self.link.backward(grad)
        self.seconds += time.perf_counter() - t
        return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(p, warmup=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from splitfed.data import load_drug_reviews
    from splitfed.models import LoraSpec, SplitLoraConfig, apply_lora, load_pretrained, split_model
    from splitfed.privacy.dpsgd import DPSGDConfig
    from splitfed.privacy.dpsgd_step import DPSGDStrategy
    from splitfed.training import ClientStep, LocalLink, OptimConfig

    if args.threads:
        torch.set_num_threads(args.threads)  # 1 when another process holds a core: OpenMP thrashes
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(0)
    pre = load_pretrained(args.model)
    try:
        data = full_length_batches(
            pre.tokenizer, batch_size=args.batch_size, seq_len=args.seq_len, count=args.warmup + args.steps
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    warm, timed = data[: args.warmup], data[args.warmup :]

    optim = OptimConfig(lr=1e-4)
    n_train = len(load_drug_reviews("train"))  # the client's data set size for q and the noise scale
    dp = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=args.batch_size / n_train)
    steps, links = {}, {}
    for name, model in (("non-DP", copy.deepcopy(pre.model)), ("DP-SGD", pre.model)):
        split = split_model(model, tuple(args.cut))
        apply_lora(split, SplitLoraConfig(*(LoraSpec(r=8, alpha=16),) * 3))
        links[name] = TimedLink(LocalLink(split.trunk, optim))
        if name == "DP-SGD":
            gen = torch.Generator().manual_seed(0)
            strategy = partial(DPSGDStrategy, dp=dp, n_examples=n_train, generator=gen)
            steps[name] = ClientStep(split.bottom, split.top, links[name], optim, strategy=strategy)
        else:
            steps[name] = ClientStep(split.bottom, split.top, links[name], optim)

    rss = {}
    for name, step in steps.items():
        for batch in warm:
            step.step(batch)
        rss[name] = peak_rss_mib()
    per_step: dict[str, list[float]] = {name: [] for name in steps}
    client: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(args.reps):
        for name in list(steps) if rep % 2 == 0 else list(reversed(steps)):
            links[name].seconds = 0.0
            t = time.perf_counter()
            for batch in timed:
                steps[name].step(batch)
            total = time.perf_counter() - t
            per_step[name].append(total / args.steps)
            client[name].append((total - links[name].seconds) / args.steps)
        print(
            f"rep {rep + 1}/{args.reps}: "
            + "  ".join(f"{n} {per_step[n][-1]:.3f} s/step (client {client[n][-1]:.3f})" for n in steps),
            flush=True,
        )

    med = {n: statistics.median(v) for n, v in per_step.items()}
    med_client = {n: statistics.median(v) for n, v in client.items()}
    print(
        f"\n{args.model}, cut {tuple(args.cut)}, batch {args.batch_size} x {args.seq_len}, LoRA r=8 q/v on all parts, "
        f"{args.reps} reps x {args.steps} steps, torch threads {torch.get_num_threads()}"
    )
    print(f"{'mode':<8}{'s/step':>10}{'client s/step':>15}{'peak RSS MiB':>14}")
    for n in steps:
        print(f"{n:<8}{med[n]:>10.3f}{med_client[n]:>15.3f}{rss[n]:>14.0f}")
    print(f"ratio DP / non-DP: whole step {med['DP-SGD'] / med['non-DP']:.3f}, ", end="")
    print(f"client side (bottom + top, no trunk) {med_client['DP-SGD'] / med_client['non-DP']:.3f}")
    print("(peak RSS is the process's so far: non-DP after its warm-up, DP-SGD after both warm-ups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
