"""The server's trunk alone: decode steps of N generation streams batched into one forward vs
run one by one (`splitfed.server.caches.StreamCaches`), in one process with nothing else on
the cores.  SmolLM2-135M trunk (layers 2..27), real activations at the first cut of real drug
reviews (prompts of 16 tokens, different per stream), `--steps` decode steps.  Prints the
trunk's tokens/s per N (median of `--reps`), the ratio against N = 1, and how much of a
batched step is the cache stacking (`stack_caches` + `unstack_cache`).

    python benchmarks/decode_batching.py --reps 3 --steps 16 --sessions 1 4 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16])
    args = p.parse_args(argv)

    import torch

    from splitfed.config import ModelSection
    from splitfed.data import load_drug_reviews
    from splitfed.models import load_client_parts, load_part, load_tokenizer
    from splitfed.models.kv import stack_caches, unstack_cache
    from splitfed.models.source import resolve_base_model
    from splitfed.server.caches import StreamCaches

    torch.manual_seed(0)
    path = resolve_base_model(ModelSection(name=args.model), need_tokenizer=True).path
    tok = load_tokenizer(path)
    bottom, _ = load_client_parts(path, (2, 28))
    trunk = load_part(path, "trunk", (2, 28)).eval()
    reviews = load_drug_reviews()
    most = max(args.sessions)
    with torch.no_grad():
        acts = []
        for r in reviews[:most]:
            ids = torch.tensor([tok(r.text)["input_ids"][: args.prompt_tokens]])
            acts.append(bottom(ids, torch.ones_like(ids)))
        steps = [bottom.embed(torch.randint(100, 1000, (1, 1))) for _ in range(args.steps)]

    def run(n: int, batched: bool) -> tuple[float, float]:
        caches = StreamCaches(trunk, device=torch.device("cpu"), dtype=torch.float32)
        masks = {}
        for i in range(n):
            masks[i] = torch.ones(1, acts[i].shape[1], dtype=torch.long)
            caches.prefill(str(i), acts[i], masks[i])
        stacking = 0.0
        t0 = time.perf_counter()
        for h in steps:
            for i in range(n):
                masks[i] = torch.cat([masks[i], torch.ones(1, 1, dtype=torch.long)], 1)
            if batched:
                caches.decode([(str(i), h, masks[i]) for i in range(n)])
                if n > 1:  # the copying share of the step, timed apart
                    s0 = time.perf_counter()
                    cs = [caches.caches[str(i)] for i in range(n)]
                    merged, _ = stack_caches(cs, [masks[i] for i in range(n)])
                    unstack_cache(merged, [1] * n, [c.length for c in cs])
                    stacking += time.perf_counter() - s0
            else:
                for i in range(n):
                    caches.decode([(str(i), h, masks[i])])
        wall = time.perf_counter() - t0 - stacking
        return n * len(steps) / wall, stacking / max(wall, 1e-9)

    run(1, True)  # warm-up
    print(f"{'sessions':>8} {'batched tok/s':>13} {'vs 1':>6} {'one-by-one tok/s':>16} {'batched/one-by-one':>18} "
          f"{'stacking share':>14}")  # fmt: skip
    base = None
    for n in args.sessions:
        b = [run(n, True) for _ in range(args.reps)]
        s = [run(n, False)[0] for _ in range(args.reps)]
        tps, share = statistics.median(x for x, _ in b), statistics.median(y for _, y in b)
        base = base or tps
        print(f"{n:>8} {tps:>13.1f} {tps / base:>6.2f} {statistics.median(s):>16.1f} "
              f"{tps / statistics.median(s):>18.2f} {share:>14.0%}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
