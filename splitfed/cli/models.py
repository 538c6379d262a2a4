"""`splitfed models`: the built-in models and the user's own model directories.

list: the built-in names and whether they are cached; prepare NAME: convert a built-in
model once; prepare DIR / inspect DIR: validate a local Hugging Face model directory and
show what it holds and its fingerprint.  Errors are raised (`SplitfedError` subclasses)
for `main()` to print as one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from splitfed.errors import UsageError


def _cmd_list(args) -> int:
    from splitfed.models.pretrained import MODELS, default_cache_dir

    root = (args.cache_dir or default_cache_dir()) / "models"
    for name in MODELS:
        state = "cached" if (root / name / "config.json").is_file() else "not prepared"
        print(f"{name:<14} {state:<13} {root / name}")
    return 0


def _fingerprint_cache(args) -> Path | None:
    return args.cache_dir / "fingerprints.json" if args.cache_dir else None


def describe_dir(path: Path, *, need_tokenizer: bool, cache: Path | None = None) -> list[str]:
    """Validate the model directory `path` and return the lines that describe it."""
    from splitfed.models.fingerprint import model_fingerprint
    from splitfed.models.local import inspect_model_dir

    info = inspect_model_dir(path, need_tokenizer=need_tokenizer)
    yes = {True: "yes", False: "no"}
    rows = [
        ("architecture", f"{info.architecture} (model_type={info.model_type})"),
        ("layers", str(info.num_layers)),
        ("hidden", str(info.hidden_size)),
        ("vocab", str(info.vocab_size)),
        ("dtype", info.dtype),
        ("sharded", yes[info.sharded]),
        ("tokenizer", yes[info.has_tokenizer]),
        ("chat template", yes[info.has_chat_template]),
        ("fingerprint", model_fingerprint(info.path, cache=cache)),
    ]
    return [str(info.path.resolve())] + [f"  {k:<15}{v}" for k, v in rows]


def _looks_like_dir(value: str) -> bool:
    return Path(value).expanduser().exists() or value.startswith((".", "~", "/")) or "/" in value or "\\" in value


def _cmd_prepare(args) -> int:
    from splitfed.models.pretrained import MODELS, default_cache_dir, prepare

    target = args.name_or_dir
    if target in MODELS:  # a directory of that name: write it as ./NAME
        root = args.cache_dir if args.cache_dir is not None else default_cache_dir()
        if not (root / "models" / target / "config.json").is_file():
            print(f"preparing {target} ... (converted once)", file=sys.stderr, flush=True)
        print(prepare(target, cache_dir=args.cache_dir))
        return 0
    if not _looks_like_dir(target):
        raise UsageError(f"unknown model {target!r}: give a built-in name ({', '.join(MODELS)}) or a model directory")
    print("\n".join(describe_dir(Path(target), need_tokenizer=not args.no_tokenizer, cache=_fingerprint_cache(args))))
    return 0


def _cmd_inspect(args) -> int:
    print("\n".join(describe_dir(Path(args.dir), need_tokenizer=not args.no_tokenizer, cache=_fingerprint_cache(args))))
    return 0


def register(subparsers) -> None:
    """Add the `models` command group to the `splitfed` subparsers."""
    models = subparsers.add_parser(
        "models",
        help="built-in models and your own model directories: list, prepare, inspect",
        description="Built-in models (converted once into a cache) and local Hugging Face model directories "
        "(config.json, safetensors weights, tokenizer files).",
    )
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    cache_help = "cache for built-in models and fingerprints (default: ~/.cache/splitfed)"
    tok_help = "do not require tokenizer files (the server's copy needs none)"

    p = msub.add_parser("list", help="built-in models and whether they are in the cache")
    p.add_argument("--cache-dir", type=Path, default=None, help=cache_help)
    p.set_defaults(func=_cmd_list)

    p = msub.add_parser(
        "prepare", help="a built-in name: convert it into the cache (once); a directory: validate it (as inspect)"
    )
    p.add_argument(
        "name_or_dir",
        metavar="NAME_OR_DIR",
        help="smollm2-135m, tiny-llama, tiny-gpt2, or a model directory (./NAME for a directory named like a built-in)",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help=cache_help)
    p.add_argument("--no-tokenizer", action="store_true", help=tok_help)
    p.set_defaults(func=_cmd_prepare)

    p = msub.add_parser("inspect", help="validate a local model directory; show its layout, dtype and fingerprint")
    p.add_argument("dir", metavar="DIR", help="a Hugging Face model directory (save_pretrained layout)")
    p.add_argument("--cache-dir", type=Path, default=None, help=cache_help)
    p.add_argument("--no-tokenizer", action="store_true", help=tok_help)
    p.set_defaults(func=_cmd_inspect)
