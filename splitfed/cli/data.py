"""`splitfed data`: inspect a data file as a client would read it, and the bundled simulation data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from splitfed.atomic import atomic_open


def _cmd_check(args) -> int:
    """Read and tokenize a file exactly as a client would: format, sizes, truncation."""
    from splitfed.data.formats import tokenize_records
    from splitfed.data.records import FieldMap, load_records
    from splitfed.models import load_tokenizer
    from splitfed.models.local import inspect_model_dir

    inspect_model_dir(args.model, need_tokenizer=True)
    fields = FieldMap(text=args.text_field, prompt=args.prompt_field, completion=args.completion_field,
                      messages=args.messages_field)  # fmt: skip
    records = load_records(args.file, fields=fields, format=args.format)
    tokenizer = load_tokenizer(args.model)
    examples, stats = tokenize_records(records, tokenizer, max_length=args.max_length, model=str(args.model))
    targets = sum(sum(1 for t in ex.labels if t != -100) for ex in examples)
    print(f"{args.file}: {len(records.rows)} records, format {records.format}")
    print(f"  {len(examples)} examples of <= {args.max_length} tokens; {stats.truncated} truncated, "
          f"{stats.dropped} dropped (no target token left)")  # fmt: skip
    print(f"  {sum(len(ex.input_ids) for ex in examples)} tokens, {targets} of them trained on (loss)")
    return 0


def _cmd_export(args) -> int:
    """Simulation: the bundled drug reviews as one prompt/completion JSONL file per client."""
    from splitfed.cli.main import _load_run_config
    from splitfed.client.data import simulation_shares
    from splitfed.data import load_drug_reviews

    cfg = _load_run_config(args)
    reviews = load_drug_reviews("train")
    args.out.mkdir(parents=True, exist_ok=True)
    for k, idx in enumerate(simulation_shares(cfg, reviews)):
        path = args.out / f"client-{k}.jsonl"
        _write_jsonl(path, [reviews[int(i)] for i in idx])
        print(f"client-{k}: {len(idx)} reviews -> {path}")
    held = load_drug_reviews("test")[: cfg.data.eval_examples]
    _write_jsonl(args.out / "eval.jsonl", held)
    print(f"held-out: {len(held)} test reviews -> {args.out / 'eval.jsonl'}")
    return 0


def _write_jsonl(path: Path, reviews) -> None:
    from splitfed.data import format_prompt, format_target

    with atomic_open(path) as f:
        for r in reviews:
            f.write(json.dumps({"prompt": format_prompt(r), "completion": format_target(r)}) + "\n")


def _cmd_partition(args) -> int:
    import numpy as np

    from splitfed.data import load_drug_reviews, partition_dirichlet, partition_iid, partition_stats

    reviews = load_drug_reviews(args.split)
    labels = [r.condition for r in reviews]
    rng = np.random.default_rng(args.seed)
    if args.alpha is None:
        parts = partition_iid(len(reviews), args.clients, rng=rng)
    else:
        parts = partition_dirichlet(labels, args.clients, alpha=args.alpha, rng=rng)
    kind = "IID" if args.alpha is None else f"Dirichlet(alpha={args.alpha}) by condition"
    print(f"{len(reviews)} {args.split} reviews over {args.clients} clients, {kind}, seed {args.seed}")
    for st in partition_stats(parts, labels):
        top = sorted(st["labels"].items(), key=lambda kv: -kv[1])[:3]
        print(
            f"client {st['client']}: {st['size']:>4} reviews, {len(st['labels']):>3} conditions, "
            f"entropy {st['entropy']:.2f} bits; top: " + ", ".join(f"{k} ({v})" for k, v in top)
        )
    return 0


def register(sub) -> None:
    """Add `splitfed data check|export|partition` to the top-level subcommands."""
    data = sub.add_parser("data", help="check a data file as a client reads it; the bundled simulation data")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = dsub.add_parser(
        "check",
        help="read and tokenize a data file as a client would (format, sizes, truncation); trains nothing",
        description="Read FILE (.jsonl/.json, .csv, .parquet, .txt/.md or a datasets save_to_disk directory) "
        "with MODEL's tokenizer exactly as `splitfed client` would, and report what it found.",
    )
    p.add_argument("file", type=Path, help="the data file or directory")
    p.add_argument("--model", type=Path, required=True, help="the local model directory (for its tokenizer)")
    p.add_argument("--format", default="auto", choices=["auto", "text", "prompt_completion", "messages"])
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (data.max_length)")
    for name in ("text", "prompt", "completion", "messages"):
        p.add_argument(f"--{name}-field", default=name, help=f"field holding the {name} (data.{name}_field)")
    p.set_defaults(func=_cmd_check)

    p = dsub.add_parser(
        "export",
        help="simulation: write each client's share of the bundled reviews as JSONL (prompt/completion)",
        description="Write the bundled drug reviews as the simulation deals them (data.clients, data.partition, "
        "data.alpha, run.seed) to OUT/client-K.jsonl, and the held-out test reviews to OUT/eval.jsonl: "
        "stand-ins for each client's own files.",
    )
    p.add_argument("--out", type=Path, default=Path("data"), help="output directory (default: data)")
    p.add_argument("--config", type=Path, help="run configuration whose [data] and [run] seed to follow")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key")
    p.set_defaults(func=_cmd_export, insecure=False)

    p = dsub.add_parser("partition", help="simulation: show how the bundled reviews split across clients")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--alpha", type=float, default=None, help="Dirichlet concentration (omit for IID)")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_partition)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="splitfed")
    register(parser.add_subparsers())
    a = parser.parse_args()
    sys.exit(a.func(a))
