"""`splitfed rag`: encrypted federated retrieval; each party indexes and serves its own documents.

On a party's machine: ``rag index DOCS... --name NAME --out DIR`` then ``rag party --config
DIR/party.toml``.  On the querier's machine: ``rag add-party`` per party, then ``rag query``.
Only public key files (``NAME.key``) move between machines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splitfed.errors import UsageError


def _setup_logging(verbose: bool) -> None:
    from splitfed.cli.main import _setup_logging as setup

    setup(verbose)


def _cmd_index(args) -> int:
    if args.news:
        return _index_news(args)
    if not args.docs or not args.name:
        raise UsageError("rag index: give DOCS... and --name NAME (or --news for the bundled demo)")
    from tqdm import tqdm

    from splitfed.rag.documents import Fields, read_documents
    from splitfed.rag.index import index_party

    fields = Fields(text=args.text_field, title=args.title_field, id=args.id_field)
    read = read_documents(args.docs, fields=fields)
    for path in read.empty:
        print(f"skipped {path}: no text")
    out = args.out or Path(args.name)
    with tqdm(total=len(read.docs), desc="embedding", unit="doc", file=sys.stdout, mininterval=1.0) as bar:
        p = index_party(
            read.docs, out, name=args.name, endpoint=args.endpoint, keys_dir=args.keys_dir, progress=bar.update
        )
    keys = "created" if p.new_keys else "kept (already there)"
    print(f"{p.config.name}: {p.documents} documents indexed -> {p.config.index}")
    print(f"config: {p.config_path} (listens on {p.config.endpoint})")
    print(f"key pair {keys}: {p.config.keys_dir}/{p.config.name}.key_secret (secret: never copy it off this machine)")
    print(f"public key to send to each querier: {p.public_key.path}")
    print(f"  fingerprint {p.public_key.fingerprint} (read it to the querier to compare)")
    print(f"queriers' public keys go in {p.allowed_dir}/: splitfed keys allow --dir {p.config.keys_dir} QUERIER.key")
    print(f"then serve: splitfed rag party --config {p.config_path}")
    return 0


def _index_news(args) -> int:
    from tqdm import tqdm

    from splitfed.rag.corpus import load_news
    from splitfed.rag.index import build_news_demo

    if args.docs or args.name:
        raise UsageError("rag index --news: the demo deals the bundled articles; give no DOCS or --name")
    out = args.out or Path("rag")
    docs = load_news(limit=args.limit)
    with tqdm(total=len(docs), desc="embedding", unit="doc", file=sys.stdout, mininterval=1.0) as bar:
        demo = build_news_demo(out, parties=args.parties, docs=docs, base_port=args.base_port, progress=bar.update)
    for p in demo.parties:
        print(f"{p.config.name}: {p.documents} documents -> {p.config.index}, config {p.config_path}, "
              f"key {p.public_key.path} ({p.public_key.fingerprint})")  # fmt: skip
    print(f"querier: key {demo.querier_key.path} ({demo.querier_key.fingerprint}), parties file {demo.querier_path}")
    return 0


def _cmd_add_party(args) -> int:
    from splitfed.rag.parties import add_party

    added = add_party(
        args.parties,
        name=args.name,
        endpoint=args.endpoint,
        public_key=args.public_key,
        keys_dir=args.keys_dir,
        querier_name=args.querier_name,
        replace_existing=args.replace,
    )
    q = added.querier_key
    if added.new_querier_keys:
        print(f"created the querier's key pair {q.name} in {q.path.parent} (the secret file never leaves this machine)")
    verb = "wrote" if added.new_file else "updated"
    print(f"{verb} {added.path}: {added.party_key.name} at {args.endpoint}")
    print(f"  party key {added.party_key.path}, fingerprint {added.party_key.fingerprint}")
    print("  compare this fingerprint with the party's operator (phone, not the channel the file came by)")
    print(f"send the querier's public key {q.path} (fingerprint {q.fingerprint}) to {added.party_key.name}; "
          f"they run: splitfed keys allow --dir KEYS {q.path.name}")  # fmt: skip
    _list(added.config)
    return 0


def _list(cfg) -> None:
    from splitfed.transport.keys import read_public_key_file

    print(f"parties ({len(cfg.parties)}):")
    for p in cfg.parties:
        fp = read_public_key_file(p.public_key).fingerprint if p.public_key else "no key (insecure only)"
        print(f"  {p.name:<16} {p.endpoint:<28} {fp}")


def _cmd_party(args) -> int:
    from splitfed.rag.config import load_party_config
    from splitfed.rag.party import Party, allowed_queriers

    _setup_logging(True)
    cfg = load_party_config(args.config)
    party = Party.from_config(cfg, insecure=args.insecure)
    print(
        f"{cfg.name}: {len(party.store.docs)} documents, listening on {party.endpoint} "
        f"({'INSECURE plaintext' if args.insecure else 'CURVE'})",
        flush=True,
    )
    if not args.insecure:
        allowed = allowed_queriers(cfg)
        for name, fp in allowed.items():
            print(f"  answers querier {name} ({fp})", flush=True)
        if not allowed:
            print(
                f"  no querier allowed yet: splitfed keys allow --dir {cfg.keys_dir} QUERIER.key "
                "(then restart this party)",
                flush=True,
            )
    return party.serve(max_seconds=args.max_seconds)


def _cmd_query(args) -> int:
    from splitfed.rag.config import load_querier_config
    from splitfed.rag.querier import Querier

    _setup_logging(False)
    cfg = load_querier_config(args.parties)
    querier = Querier.from_config(cfg, insecure=args.insecure)
    for p in cfg.parties:
        fp = querier.fingerprints.get(p.name, "INSECURE, no key")
        print(f"asking {p.name} at {p.endpoint} (key {fp})")
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


def register(sub) -> None:
    """Add `splitfed rag index|add-party|party|query` to the top-level subcommands."""
    rag = sub.add_parser("rag", help="encrypted federated retrieval (CKKS) for retrieval-augmented generation")
    rsub = rag.add_subparsers(dest="rag_command", metavar="ACTION", required=True)

    p = rsub.add_parser(
        "index",
        help="on a party's machine: embed its own documents, write its store, config and key pair",
        description="Embed DOCS (folders of .txt/.md/.jsonl/.json/.csv/.parquet files, searched recursively, "
        "such files, or a datasets save_to_disk folder) with the bundled MiniLM encoder into one party's vector "
        "store; write OUT/index, OUT/party.toml and the party's CURVE key pair (if absent). "
        "--news instead builds the local demo: the bundled news articles dealt to --parties parties.",
        epilog="examples:\n  splitfed rag index notes/ --name hospital-a --out rag-a --endpoint tcp://0.0.0.0:6000\n"
        "  splitfed rag index --news --parties 3 --out rag",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("docs", nargs="*", type=Path, metavar="DOCS", help="folders or files of this party's documents")
    p.add_argument("--name", help="this party's name (as queriers list it; names its key pair)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: NAME, or rag with --news)")
    p.add_argument("--endpoint", default=None, help="where the party listens (default tcp://0.0.0.0:6000)")
    p.add_argument("--keys-dir", type=Path, default=None, help="the party's keys (default OUT/keys)")
    p.add_argument("--text-field", default="text", help="field of a row holding the text (default text)")
    p.add_argument("--title-field", default="title", help="field of a row holding the title (default title)")
    p.add_argument("--id-field", default="id", help="field of a row holding the document id (default id)")
    demo = p.add_argument_group("local demo (--news)")
    demo.add_argument("--news", action="store_true", help="the bundled news articles, dealt to --parties parties")
    demo.add_argument("--parties", type=int, default=3)
    demo.add_argument("--limit", type=int, default=None, help="use only the first N articles")
    demo.add_argument("--base-port", type=int, default=6000, help="party K listens on 127.0.0.1:base+K")
    p.set_defaults(func=_cmd_index)

    p = rsub.add_parser(
        "add-party",
        help="on the querier's machine: add a party (name, endpoint, public key file) to the parties file",
        description="Check the party's public key file, copy it to KEYS/parties/, and add the party to the "
        "querier's parties file (created on first use, with the querier's key pair in --keys-dir).",
    )
    p.add_argument("--parties", type=Path, required=True, help="the querier's parties file (TOML)")
    p.add_argument("--endpoint", required=True, help="the party's address, e.g. tcp://hospital-a.example:6000")
    p.add_argument("--public-key", type=Path, required=True, help="the party's public key file (NAME.key)")
    p.add_argument("--name", default=None, help="the party's name (default: the name in its key file)")
    p.add_argument("--keys-dir", type=Path, default=Path("querier-keys"), help="new file: the querier's keys")
    p.add_argument("--querier-name", default="querier", help="new file: the querier's key pair name")
    p.add_argument("--replace", action="store_true", help="replace a party already listed")
    p.set_defaults(func=_cmd_add_party)

    p = rsub.add_parser("party", help="serve encrypted scoring over one party's store (ZeroMQ, CURVE)")
    p.add_argument("--config", type=Path, required=True, help="party TOML (name, index, endpoint, keys_dir, ...)")
    p.add_argument("--insecure", action="store_true", help="plaintext transport without authentication (warns)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long (default: run forever)")
    p.set_defaults(func=_cmd_party)

    p = rsub.add_parser("query", help="encrypt a question, search every party, answer with SmolLM2")
    p.add_argument("question")
    p.add_argument("--parties", type=Path, required=True, help="querier TOML: keys_dir, name and [[party]] entries")
    p.add_argument("-k", type=int, default=5, help="documents to retrieve across all parties (default 5)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--adapter", type=Path, default=None, help="a PEFT adapter exported by a training run")
    p.add_argument("--no-generate", action="store_true", help="only retrieve")
    p.add_argument("--device", default="auto", help="where the generator runs: auto (default), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="generator precision")
    p.add_argument("--insecure", action="store_true")
    p.set_defaults(func=_cmd_query)
