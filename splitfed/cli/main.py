"""`splitfed`: thin command line over the library.  Parses, calls, prints.

Heavy imports (torch, transformers) happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from splitfed import __version__
from splitfed.cli.options import add_cut_option


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


def _cmd_keys_generate(args) -> int:
    from splitfed.transport import generate_keys

    out = generate_keys(args.dir, args.clients, overwrite=args.force)
    print(f"wrote CURVE keys for the server and {args.clients} client(s) to {out}")
    print(f"  server:  {out}/server.key_secret (keep on the server)")
    print(f"  clients: {out}/client-K.key_secret (give each client only its own); allow-list: {out}/allowed/")
    return 0


def _load_run_config(args):
    from splitfed.config import RunConfig, load_config, parse_overrides

    cfg = load_config(args.config) if args.config else RunConfig()
    if args.set:
        cfg = cfg.with_overrides(**parse_overrides(args.set))
    if cfg.transport.insecure and not args.insecure:
        raise ValueError("transport.insecure = true also needs --insecure on the command line")
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
    parts = [f"{client.name}: {len(summary['losses'])} steps"]
    if "ppl_before" in summary and "ppl_after" in summary:
        parts.append(f"held-out perplexity {summary['ppl_before']:.2f} (base model) -> {summary['ppl_after']:.2f}")
    parts.append(f"sent {summary['bytes_out'] / 1e6:.1f} MB, received {summary['bytes_in'] / 1e6:.1f} MB")
    if "stopped" in summary:
        parts.append(f"stopped early: {summary['stopped']}")
    print("; ".join(parts), flush=True)
    if "adapter" in summary:
        what = "whole model" if summary["trunk_adapter"] else "bottom and top only (the server kept the trunk adapter)"
        print(f"{client.name}: fine-tuned PEFT adapter ({what}): {summary['adapter']}", flush=True)
    return 0


def _cmd_rag_index(args) -> int:
    from tqdm import tqdm

    from splitfed.rag.corpus import load_news
    from splitfed.rag.index import build_index

    docs = load_news(limit=args.docs)
    with tqdm(total=len(docs), desc="embedding", unit="doc", file=sys.stdout, mininterval=1.0) as bar:
        result = build_index(args.out, parties=args.parties, docs=docs, base_port=args.base_port, progress=bar.update)
    for p in result.parties:
        print(f"{p.config.name}: {p.documents} documents -> {p.config.index}, config {p.config_path}")
    print(f"querier config: {result.querier_path}")
    return 0


def _cmd_rag_party(args) -> int:
    from splitfed.rag.config import load_party_config
    from splitfed.rag.party import Party

    _setup_logging(True)
    cfg = load_party_config(args.config)
    party = Party.from_config(cfg, insecure=args.insecure)
    print(
        f"{cfg.name}: {len(party.store.docs)} documents, listening on {party.endpoint} "
        f"({'INSECURE plaintext' if args.insecure else 'CURVE'})",
        flush=True,
    )
    return party.serve(max_seconds=args.max_seconds)


def _cmd_rag_query(args) -> int:
    from splitfed.rag.config import load_querier_config
    from splitfed.rag.querier import Querier

    _setup_logging(False)
    cfg = load_querier_config(args.parties)
    querier = Querier(list(cfg.parties), timeout_s=cfg.timeout_s, insecure=args.insecure)
    try:
        res = querier.search(args.question, k=args.k)
    finally:
        querier.close()
    print(f"parties that contributed: {', '.join(res.contributed) or 'none'}")
    for name, why in res.failed.items():
        print(f"left out: {name} ({why})")
    for i, h in enumerate(res.hits, 1):
        print(f"{i}. [{h.party}] {h.score:.3f}  {h.title}")
    if args.no_generate or not res.hits:
        return 0 if res.hits else 1
    from splitfed.rag.generate import Generator, build_prompt

    generator = Generator(args.model, adapter=args.adapter, device=args.device, dtype=args.dtype)
    answer = generator.generate(build_prompt(args.question, res.hits))
    print(f"\nanswer: {answer}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="splitfed",
        description="Split federated fine-tuning of LLMs: clients keep text, labels, embeddings and head; "
        "a server trains the middle blocks.",
        epilog="Examples:\n  splitfed keys generate --dir keys --clients 3\n"
        "  splitfed server --config examples/run.toml\n  splitfed client --config examples/run.toml --client-id 0\n"
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

    keys = sub.add_parser("keys", help="CURVE key pairs for the server and the clients")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    p = ksub.add_parser("generate", help="write server + client key pairs (secret files 0600) and the allow-list")
    p.add_argument("--dir", type=Path, default=Path("keys"), help="keys directory (default: keys)")
    p.add_argument("--clients", type=int, default=3, help="number of client key pairs (default: 3)")
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.set_defaults(func=_cmd_keys_generate)

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

    rag = sub.add_parser("rag", help="encrypted federated retrieval (CKKS) for retrieval-augmented generation")
    rsub = rag.add_subparsers(dest="rag_command", metavar="ACTION", required=True)
    p = rsub.add_parser("index", help="embed the bundled news articles into one vector store per party")
    p.add_argument("--out", type=Path, default=Path("rag"), help="output directory (party-K/ for each party)")
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--docs", type=int, default=None, help="use only the first N articles")
    p.add_argument("--base-port", type=int, default=6000, help="party K listens on 127.0.0.1:base+K (default 6000)")
    p.set_defaults(func=_cmd_rag_index)
    p = rsub.add_parser("party", help="serve encrypted scoring over one party's store (ZeroMQ, CURVE)")
    p.add_argument("--config", type=Path, required=True, help="party TOML (name, index, endpoint, keys_dir, ...)")
    p.add_argument("--insecure", action="store_true", help="plaintext transport without authentication (warns)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long (default: run forever)")
    p.set_defaults(func=_cmd_rag_party)
    p = rsub.add_parser("query", help="encrypt a question, search every party, answer with SmolLM2")
    p.add_argument("question")
    p.add_argument("--parties", type=Path, required=True, help="querier TOML: timeout_s and [[party]] entries")
    p.add_argument("-k", type=int, default=5, help="documents to retrieve across all parties (default 5)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--adapter", type=Path, default=None, help="a PEFT adapter exported by a training run")
    p.add_argument("--no-generate", action="store_true", help="only retrieve")
    p.add_argument("--device", default="auto", help="where the generator runs: auto (default), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="generator precision")
    p.add_argument("--insecure", action="store_true")
    p.set_defaults(func=_cmd_rag_query)

    from splitfed.cli.attack import register as register_attack
    from splitfed.cli.privacy import register as register_privacy

    register_privacy(sub)
    register_attack(sub)

    from splitfed.cli.data import register as register_data

    register_data(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return int(args.func(args) or 0)
    except (
        ValueError,
        ImportError,
        FileNotFoundError,
        FileExistsError,
        KeyError,
        ConnectionError,
        RuntimeError,
    ) as exc:
        # Library errors name what was expected and what came; show them without a traceback.
        print(f"splitfed: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
