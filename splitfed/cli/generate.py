"""`splitfed generate` (a client generating with the fine-tuned split model) and `splitfed serve`
(a server that, after the run's last round, keeps serving generation)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from splitfed.errors import UsageError

_SETTINGS = {  # flag dest -> GenerationSettings key
    "max_new_tokens": "max_new_tokens",
    "do_sample": "do_sample",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "stop": "stop",
    "seed": "seed",
}


def read_prompts(args) -> list[str]:
    """--prompt values, then the --prompts-file: one prompt per line (.txt) or a "prompt" field per
    line (.jsonl); blank lines are skipped."""
    prompts = list(args.prompt or [])
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"--prompts-file {path}: {exc.strerror or exc}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    record = json.loads(line)
                    prompts.append(str(record["prompt"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UsageError(f'{path}:{n}: expected a JSON object with a "prompt" field') from None
            else:
                prompts.append(line)
    if not prompts:
        raise UsageError("no prompt: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def settings_from(args, base=None):
    """The generation settings: the flags given on the command line over `base` (the run config's
    ``[generate]``, else the defaults); a flag not given keeps `base`'s value (``--stop`` replaces its list)."""
    from splitfed.config import ConfigError, GenerationSettings

    given = {key: getattr(args, dest) for dest, key in _SETTINGS.items() if getattr(args, dest) is not None}
    if "stop" in given:
        given["stop"] = list(given["stop"])
    try:
        return (base if base is not None else GenerationSettings()).with_overrides(given)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _cmd_generate(args, load_config) -> int:
    from splitfed.client.generator import SplitLM

    cfg = load_config(args)
    prompts = read_prompts(args)
    settings = settings_from(args, cfg.generate)
    with SplitLM(cfg, args.client_id, adapter_dir=args.adapter, base=args.base, insecure=args.insecure) as lm:
        which = "the public base model" if args.base else f"adapter {lm.adapter}"
        print(f"{lm.name}: {lm.base_model} with {which}; trunk on the server", file=sys.stderr, flush=True)
        if len(prompts) == 1:

            def show(row: int, piece: str) -> None:
                sys.stdout.write(piece)
                sys.stdout.flush()

            lm.generate_text(prompts, settings, chat=args.chat, on_text=show)
            sys.stdout.write("\n")
        else:
            for i, text in enumerate(lm.generate_text(prompts, settings, chat=args.chat)):
                print(f"[{i}] {text}", flush=True)
        if lm.last_session is not None:
            print(privacy_line(lm.last_session), file=sys.stderr, flush=True)
    return 0


def privacy_line(session) -> str:
    """What the session cost: epsilon for one of its prompts and for the client so far, against the server."""
    from splitfed.privacy.ledger import describe

    fmt = lambda x: "inf (sent without noise)" if math.isinf(x) else f"{x:.4g}"  # noqa: E731
    return (
        f"privacy: session {session.number}: epsilon per prompt {fmt(session.epsilon('session'))}, "
        f"this client's sessions composed {fmt(session.epsilon('client'))} "
        f"(against the server, delta {session.delta:g}); ledger {session.ledger}\n  "
        + describe(list(session.session), session.delta)
    )


def _cmd_serve(args, load_config, setup_logging) -> int:
    from splitfed.server.runtime import Server

    args.set = [*(args.set or []), "server.inference.serve=true"]
    cfg = load_config(args)
    setup_logging(True)
    server = Server(cfg, resume=True, insecure=args.insecure)
    left = cfg.training.rounds - server.round
    what = "serving generation" if left <= 0 else f"training the {left} round(s) left, then serving generation"
    print(
        f"server listening on {server.endpoint} ({'INSECURE plaintext' if args.insecure else 'CURVE'}): {what} "
        f"until stopped (Ctrl-C); streams: at most {cfg.server.inference.max_streams}, "
        f"{cfg.server.inference.max_positions} positions each",
        flush=True,
    )
    return server.serve()


def register(sub, *, load_config, setup_logging, run_help: str, set_help: str) -> None:
    p = sub.add_parser(
        "generate",
        help="generate with the fine-tuned split model: prompts and answers stay here, the server runs the trunk",
        description="Generate as client K: its Bottom and Top (with its fine-tuned adapter) run here, the "
        "server runs the trunk with a per-stream KV cache and sees only activations, never a token.  The "
        "generation flags override the [generate] table of --config; a flag not given keeps its value there.",
        epilog='Example:\n  splitfed generate --config examples/run.toml --client-id 0 --prompt "The drug" '
        "--max-new-tokens 32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help=run_help)
    p.add_argument("--client-id", type=int, required=True, help="K in [0, data.clients): whose adapter and key")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    p.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable; batched together)")
    p.add_argument("--prompts-file", type=Path, help='prompts, one per line (.txt) or {"prompt": ...} (.jsonl)')
    p.add_argument("--chat", action="store_true", help="each prompt is a user turn through the chat template")
    p.add_argument("--adapter", type=Path, help="the fine-tuned PEFT adapter (default: where training wrote it)")
    p.add_argument("--base", action="store_true", help="no adapter on this side: the public base model's parts")
    p.add_argument(
        "--max-new-tokens", type=int, help="most tokens generated per prompt (default: [generate] max_new_tokens, 64)"
    )
    p.add_argument(
        "--do-sample",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sample instead of greedy choice (--no-do-sample: greedy even if [generate] samples)",
    )
    p.add_argument("--temperature", type=float, help="sampling temperature (default: [generate] temperature, 1.0)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold (1.0 = off)")
    p.add_argument("--repetition-penalty", type=float, help="penalise repeated tokens (1.0 = off)")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop a prompt's answer at this text (repeatable)")
    p.add_argument("--seed", type=int, help="seed of the sampling generator")
    p.add_argument("--insecure", action="store_true", help="plaintext transport without authentication (warns)")
    p.set_defaults(func=lambda args: _cmd_generate(args, load_config))

    p = sub.add_parser(
        "serve",
        help="serve generation for a run: resume it (training any rounds left) and keep serving until stopped",
    )
    p.add_argument("--config", type=Path, help=run_help)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    p.add_argument("--insecure", action="store_true", help="plaintext transport without authentication (warns)")
    p.set_defaults(func=lambda args: _cmd_serve(args, load_config, setup_logging))
