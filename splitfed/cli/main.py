"""`splitfed`: thin command line over the library.  Parses, calls, prints.

Heavy imports (torch, transformers) happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from splitfed import __version__
from splitfed.cli.options import add_cut_option
from splitfed.errors import SplitfedError, UsageError


def _cmd_split_info(args) -> int:
    from splitfed.models import LoraSpec, SplitLoraConfig, apply_lora, load_pretrained, split_model

    pre = load_pretrained(args.model, cache_dir=args.cache_dir)
    split = split_model(pre.model, tuple(args.cut))
    spec = LoraSpec(r=args.rank, alpha=2.0 * args.rank)
    apply_lora(split, SplitLoraConfig(spec, spec, spec))
    hidden = pre.model.config.hidden_size
    print(f"{split.layout.architecture}: {split.layout.num_layers} layers, hidden {hidden}, cut {split.cut}")
    print(f"{'part':<8}{'held by':<9}{'layers':<12}{'base params':>14}{'LoRA params':>13}")
    for role, part in split.parts.items():
        a, b = part.layer_range
        base = sum(p.numel() for n, p in part.named_parameters() if "lora_" not in n)
        lora = sum(p.numel() for n, p in part.named_parameters() if "lora_" in n)
        where = "server" if role == "trunk" else "client"
        layers = f"[{a}, {b})" if b > a else "-"
        print(f"{role:<8}{where:<9}{layers:<12}{base:>14,}{lora:>13,}")
    per_token = hidden * 4
    print(f"crossing each cut per step: {per_token} bytes/token of activations (fp32) up, the same in gradients down")
    return 0


def _load_run_config(args):
    from splitfed.config import RunConfig, load_config, parse_overrides

    cfg = load_config(args.config) if args.config else RunConfig()
    if args.set:
        cfg = cfg.with_overrides(**parse_overrides(args.set))
    if cfg.transport.insecure and not args.insecure:
        raise UsageError("transport.insecure = true also needs --insecure on the command line")
    return cfg


def _setup_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )


def _cmd_server(args) -> int:
    from splitfed.cli.server import run_server

    return run_server(args, _load_run_config, _setup_logging)


def _cmd_client(args) -> int:
    from splitfed.cli.progress import progress_bar
    from splitfed.client.runtime import Client

    _setup_logging(False)
    cfg = _load_run_config(args)
    client = Client(cfg, args.client_id, insecure=args.insecure)
    print(f"{client.name}: base model {client.base_model}; {client.data.describe()}", flush=True)
    total = cfg.training.rounds * cfg.training.local_steps
    with progress_bar(total=total, desc=client.name, unit="step", disable=args.no_progress) as bar:

        def progress(rnd, step, loss):
            bar.update(1)
            bar.set_postfix(round=rnd, loss=f"{loss:.3f}")

        summary = client.run(progress=progress)
    from splitfed.utility import utility_from_summary

    parts = [f"{client.name}: {len(summary['losses'])} steps"]
    utility = utility_from_summary(summary)
    if utility is not None:
        parts.append(utility.summary())
    parts.append(f"sent {summary['bytes_out'] / 1e6:.1f} MB, received {summary['bytes_in'] / 1e6:.1f} MB")
    if "stopped" in summary:
        parts.append(f"stopped early: {summary['stopped']}")
    print("; ".join(parts), flush=True)
    if "privacy" in summary:
        print(f"{client.name}: {summary['privacy']}", flush=True)
    if utility is not None and utility.warning():
        print(f"{client.name}: {utility.warning()}", flush=True)
    if "adapter" in summary:
        what = "whole model" if summary["trunk_adapter"] else "bottom and top only (the server kept the trunk adapter)"
        print(f"{client.name}: fine-tuned PEFT adapter ({what}): {summary['adapter']}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="splitfed",
        description="Split federated fine-tuning of LLMs: clients keep text, labels, embeddings and head; "
        "a server trains the middle blocks.",
        epilog="Examples:\n  splitfed keys init client-0 --dir keys\n  splitfed keys generate --dir keys --clients 3\n"
        "  splitfed server --config examples/run.toml\n  splitfed client --config examples/run.toml --client-id 0\n"
        "  splitfed generate --config examples/run.toml --client-id 0 --prompt 'The drug'\n"
        "  splitfed models prepare smollm2-135m\n  splitfed models inspect /models/my-llama\n"
        "  splitfed data check notes.jsonl --model /models/my-llama\n  splitfed split-info --cut 2 28\n"
        "  splitfed data partition --clients 3 --alpha 0.5\n"
        "  splitfed privacy epsilon --noise-multiplier 1.1 --sample-rate 0.004267 --steps 2000 --delta 1e-5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"splitfed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from splitfed.cli.models import register as register_models

    register_models(sub)

    p = sub.add_parser("split-info", help="show what each part of a cut holds and what crosses the cuts")
    p.add_argument("--model", default="smollm2-135m")
    add_cut_option(p)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank used for the parameter count")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.set_defaults(func=_cmd_split_info)

    from splitfed.cli.keys import register as register_keys

    register_keys(sub)

    run_help = "run configuration (TOML; see examples/run.toml); omitted keys take their defaults"
    set_help = "override one config key, e.g. --set training.rounds=1 (repeatable)"
    p = sub.add_parser("server", help="serve the trunk to the clients of a run (ZeroMQ ROUTER, CURVE)")
    p.add_argument("--config", type=Path, help=run_help)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--insecure", action="store_true", help="plaintext transport without authentication (warns)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="shard the trunk over N ranks on this host (starts torchrun; one GPU per rank, or CPU with gloo); "
        "for several hosts run `torchrun ... -m splitfed.cli.main server` on each (docs/deployment.md)",
    )
    p.set_defaults(func=_cmd_server)

    p = sub.add_parser("client", help="train as client K: holds bottom, top, data and labels")
    p.add_argument("--config", type=Path, help=run_help)
    p.add_argument("--client-id", type=int, required=True, help="K in [0, data.clients)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    p.add_argument("--insecure", action="store_true", help="plaintext transport without authentication (warns)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_client)

    from splitfed.cli.generate import register as register_generate

    register_generate(
        sub, load_config=_load_run_config, setup_logging=_setup_logging, run_help=run_help, set_help=set_help
    )

    from splitfed.cli.rag import register as register_rag

    register_rag(sub)

    from splitfed.cli.attack import register as register_attack
    from splitfed.cli.privacy import register as register_privacy

    register_privacy(sub)
    register_attack(sub)

    from splitfed.cli.data import register as register_data

    register_data(sub)
    return parser


def _quiet_hf_progress() -> None:
    """No Hugging Face download bars; without importing transformers when the command needs none."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    """Run one command.  A `SplitfedError` (the user's to fix) is one line on stderr and exit 2;
    Ctrl-C is exit 130, a closed output pipe 141 (128 + SIGPIPE); any other exception is a bug
    and propagates with its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        _quiet_hf_progress()
        return int(args.func(args) or 0)
    except SplitfedError as exc:
        print(f"splitfed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("splitfed: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `splitfed ... | head`: the reader left; say nothing more, like other Unix tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second BrokenPipeError when Python flushes stdout at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
