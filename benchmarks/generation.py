"""Split generation (CURVE, loopback) vs local unsplit `generate`: tokens/s and per-token latency.

SmolLM2-135M cut at (2, 28), greedy, a 16-token prompt of real drug reviews, `--new` new
tokens.  The baseline is Hugging Face `generate` of the whole model in one process.  Split
generation runs `splitfed serve` as a server process and N client processes at once (each
`SplitLM`, its own CURVE key), with and without the server batching decode steps of
concurrent sessions.  Everything shares this machine's cores, so at 16 sessions the clients'
own Bottom/Top work competes with the server: the server's trunk tokens/s (its decode
forwards alone, from its metrics) is reported apart from the end-to-end aggregate.

    python benchmarks/generation.py --reps 3 --new 32 --sessions 1 4 16
    python benchmarks/generation.py --reps 3 --new 32 --sessions 1 --private   # + the cost of the noise
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _prompt(tokenizer, n_tokens: int) -> str:
    from splitfed.data import load_drug_reviews

    text = " ".join(r.text for r in load_drug_reviews()[:20])
    return tokenizer.decode(tokenizer(text)["input_ids"][:n_tokens])


def worker(args) -> int:
    """One client process: wait for GO on stdin, generate --reps times, print one JSON line."""
    from splitfed.client.generator import SplitLM
    from splitfed.config import load_config

    lm = SplitLM(load_config(args.config), args.client_id, base=True)
    prompt = _prompt(lm.tokenizer, args.prompt_tokens)
    enc = lm.tokenizer([prompt], return_tensors="pt")
    lm.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=2)  # warm-up
    print("READY", flush=True)
    sys.stdin.readline()
    runs = []
    for _ in range(args.reps):
        stamps: list[float] = []
        b0, i0, t0 = lm.conn.traffic.bytes_out, lm.conn.traffic.bytes_in, time.perf_counter()
        out = lm.generate(
            enc["input_ids"], enc["attention_mask"], max_new_tokens=args.new,
            on_tokens=lambda step, tok, stamps=stamps: stamps.append(time.perf_counter()),
        )  # fmt: skip
        new = len(out.new_tokens[0])
        gaps = [b - a for a, b in zip([t0, *stamps], stamps, strict=False)]
        runs.append({
            "tokens": new, "wall_s": stamps[-1] - t0, "first_s": gaps[0], "gaps": gaps[1:],
            "up": lm.conn.traffic.bytes_out - b0, "down": lm.conn.traffic.bytes_in - i0,
        })  # fmt: skip
    lm.close()
    print(json.dumps(runs), flush=True)
    return 0


def local(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    from splitfed.config import ModelSection
    from splitfed.models.source import resolve_base_model

    path = resolve_base_model(ModelSection(name=args.model), need_tokenizer=True).path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    enc = tok([_prompt(tok, args.prompt_tokens)], return_tensors="pt")
    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, ids, scores):
            stamps.append(time.perf_counter())
            return scores

    def once():
        stamps.clear()
        t0 = time.perf_counter()
        stamp = LogitsProcessorList([Stamp()])
        out = model.generate(**enc, max_new_tokens=args.new, do_sample=False, min_new_tokens=args.new,
                             logits_processor=stamp, pad_token_id=tok.eos_token_id)  # fmt: skip
        wall = time.perf_counter() - t0
        return out.shape[1] - enc["input_ids"].shape[1], wall, [b - a for a, b in zip(stamps, stamps[1:], strict=False)]

    once()
    tps, gaps = [], []
    for _ in range(args.reps):
        n, wall, g = once()
        tps.append(n / wall)
        gaps += g
    return {"tps": statistics.median(tps), "p50": _pct(gaps, 0.5), "p99": _pct(gaps, 0.99)}


def split(args, root: Path, sessions: int, batch: bool, private: bool = False) -> dict:
    from _netrun import make_config

    from splitfed.config import dump_toml
    from splitfed.metrics import read_metrics

    cfg = make_config(
        root,
        model={"name": args.model, "cut": [2, 28]},
        data={"clients": sessions, "eval_examples": 0},
        training={"rounds": 1},
        server={"inference": {"batch": batch, "max_streams": max(64, sessions)}},
        **({"privacy": {"enabled": True, "activations": {"enabled": True, "noise_multiplier": 1.0, "clip": 50.0}}}
           if private else {}),
    )  # fmt: skip
    path = root / "run.toml"
    path.write_text(dump_toml(cfg))
    serve = subprocess.Popen([sys.executable, "-m", "splitfed.cli.main", "serve", "--config", str(path)],
                             stdout=open(root / "serve.log", "wb"), stderr=subprocess.STDOUT)  # fmt: skip  # noqa: SIM115
    me = Path(__file__).resolve()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(me),
                "--worker",
                "--config",
                str(path),
                "--client-id",
                str(k),
                "--reps",
                str(args.reps),
                "--new",
                str(args.new),
                "--prompt-tokens",
                str(args.prompt_tokens),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for k in range(sessions)
    ]
    try:
        for w in workers:
            line = w.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"a client failed to start ({line!r}); see {root}/serve.log")
        metrics = Path(cfg.run.dir) / "metrics" / "server.jsonl"
        skip = len(read_metrics(metrics))
        t0 = time.perf_counter()
        for w in workers:
            w.stdin.write("GO\n")
            w.stdin.flush()
        results = [json.loads(w.stdout.readline()) for w in workers]
        wall = time.perf_counter() - t0
        for w in workers:
            w.wait(timeout=120)
    finally:
        serve.kill()
        for w in workers:
            w.kill()
    runs = [r for per in results for r in per]
    tokens = sum(r["tokens"] for r in runs)
    gaps = [g for r in runs for g in r["gaps"]]
    steps = [m for m in read_metrics(metrics)[skip:] if m["event"] == "generate_step"]
    return {
        "aggregate_tps": tokens / wall,
        "session_tps": statistics.median(r["tokens"] / r["wall_s"] for r in runs),
        "p50": _pct(gaps, 0.5),
        "p99": _pct(gaps, 0.99),
        "up": sum(r["up"] for r in runs) / tokens,
        "down": sum(r["down"] for r in runs) / tokens,
        "trunk_tps": sum(m["rows"] for m in steps) / sum(m["compute_s"] for m in steps),
        "rows_per_step": statistics.mean(m["rows"] for m in steps),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--new", type=int, default=32, help="new tokens per generation")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--private", action="store_true",
                   help="also 1 session with [privacy.activations] on (discrete, nm 1)")  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--client-id", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    from _netrun import scratch

    base = local(args)
    print(f"local generate: {base['tps']:.1f} tok/s, per token p50 {base['p50'] * 1e3:.1f} ms p99 "
          f"{base['p99'] * 1e3:.1f} ms", flush=True)  # fmt: skip
    print(f"\n{'sessions':>8} {'batch':>6} {'tok/s/sess':>10} {'vs local':>8} {'aggregate':>9} {'trunk tok/s':>11} "
          f"{'rows/step':>9} {'p50 ms':>7} {'p99 ms':>7} {'up B/tok':>9} {'down B/tok':>10}")  # fmt: skip
    trunk_one = {}
    for sessions in args.sessions:
        for batch in (True, False):
            r = split(args, scratch(), sessions, batch)
            if sessions == args.sessions[0]:
                trunk_one[batch] = r["trunk_tps"]
            print(f"{sessions:>8} {str(batch):>6} {r['session_tps']:>10.1f} {r['session_tps'] / base['tps']:>8.2f} "
                  f"{r['aggregate_tps']:>9.1f} {r['trunk_tps']:>11.1f} {r['rows_per_step']:>9.1f} "
                  f"{r['p50'] * 1e3:>7.1f} {r['p99'] * 1e3:>7.1f} {r['up']:>9.0f} {r['down']:>10.0f}"
                  f"  (trunk {r['trunk_tps'] / trunk_one[batch]:.2f}x one session)", flush=True)  # fmt: skip
    if args.private:
        plain, private = split(args, scratch(), 1, True), split(args, scratch(), 1, True, private=True)
        tps, ref = private["session_tps"], plain["session_tps"]
        print(f"\n1 session, [privacy.activations] on: {tps:.1f} tok/s vs {ref:.1f} without ({tps / ref:.2f}x), "
              f"{tps / base['tps']:.2f}x local; p50 {private['p50'] * 1e3:.1f} ms vs {plain['p50'] * 1e3:.1f} ms",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
