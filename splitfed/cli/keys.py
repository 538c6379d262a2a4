"""`splitfed keys`: each party makes its own keys; only public key files move between machines.

init NAME        on each party's machine: its CURVE pair and signing key (secrets stay there)
allow FILE...    on the server (or a RAG party): the clients' public key files -> allow-list
import FILE...   on a client: the server's public key file next to its own keys
roster FILE...   once: every client's public signing key in one file all parties check
show FILE...     fingerprints of key and roster files, to compare by phone
generate         the local demo: every party's keys in one directory
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_init(args) -> int:
    from splitfed.transport.keys import create_party_keys

    key = create_party_keys(args.dir, args.name, sign=not args.no_sign, overwrite=args.force)
    print(f"{args.name}: new keys in {args.dir}/ (fingerprint {key.fingerprint})")
    print(f"  send this public file to the other parties: {key.path}")
    kept = f"{args.name}.key_secret" + ("" if args.no_sign else f", {args.name}.sign_secret")
    print(f"  secret, never leaves this machine: {kept}")
    return 0


def _cmd_allow(args) -> int:
    from splitfed.transport.keys import install_public_keys

    allowed = args.dir / "allowed"
    for key in install_public_keys(allowed, args.files, overwrite=args.force):
        print(f"allowed {key.name} (fingerprint {key.fingerprint}) -> {allowed / (key.name + '.key')}")
    print(f"{len(list(allowed.glob('*.key')))} key(s) in the allow-list {allowed}/; a running server reads it at start")
    return 0


def _cmd_import(args) -> int:
    from splitfed.transport.keys import install_public_keys

    for key in install_public_keys(args.dir, args.files, overwrite=args.force):
        print(f"imported {key.name}'s public key (fingerprint {key.fingerprint}) -> {args.dir / (key.name + '.key')}")
    return 0


def _cmd_roster(args) -> int:
    from splitfed.transport.roster import roster_from_key_files, write_roster

    roster = roster_from_key_files(args.files)
    path = write_roster(args.out, roster)
    print(f"roster of {len(roster.entries)} client(s) -> {path}")
    for e in roster.entries:
        print(f"  client {e.client_id}: {e.name}")
    print(f"roster fingerprint {roster.fingerprint}: give every party this file; to pin it, set")
    print(f'  aggregation.roster_fingerprint = "{roster.fingerprint}"')
    return 0


def _cmd_show(args) -> int:
    from splitfed.transport.keys import KeyFileError, key_fingerprint, read_public_key_file
    from splitfed.transport.roster import load_roster

    for f in args.files:
        path = Path(f)
        if path.suffix == ".toml":
            roster = load_roster(path)
            print(f"{path}: roster of {len(roster.entries)} client(s), fingerprint {roster.fingerprint}")
            for e in roster.entries:
                print(f"  {e.name}: CURVE key fingerprint {key_fingerprint(e.curve)}")
            continue
        if path.name.endswith(".key_secret"):
            import zmq.auth

            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as exc:
                raise KeyFileError(f"cannot read {path}: {exc}") from None
            print(f"{path}: SECRET file of the key with fingerprint {key_fingerprint(public)} (keep it here)")
            continue
        key = read_public_key_file(path)
        signing = "with a signing key" if key.sign is not None else "no signing key"
        print(f"{path}: {key.name}, fingerprint {key.fingerprint} ({signing})")
    return 0


def _cmd_generate(args) -> int:
    from splitfed.transport import generate_keys
    from splitfed.transport.keys import read_public_key_file

    out = generate_keys(args.dir, args.clients, overwrite=args.force)
    print(f"local demo: wrote every party's keys to {out} (whoever holds this directory holds every secret;")
    print("  organisations make their own with `splitfed keys init`, see docs/three-hospitals.md)")
    for name in ["server"] + [f"client-{k}" for k in range(args.clients)]:
        print(f"  {name}: fingerprint {read_public_key_file(out / f'{name}.key').fingerprint}")
    print(f"  allow-list {out}/allowed/, secure-aggregation roster {out}/roster.toml")
    return 0


def register(sub) -> None:
    keys = sub.add_parser(
        "keys",
        help="key pairs: each party makes its own; only public key files move",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    dir_help = "this party's keys directory (default: keys)"

    p = ksub.add_parser("init", help="make this party's own keys (CURVE pair + signing key); prints the public file")
    p.add_argument("name", help="the party's name: server, client-K for training client K, or a RAG party's name")
    p.add_argument("--dir", type=Path, default=Path("keys"), help=dir_help)
    p.add_argument("--no-sign", action="store_true", help="no signing key (the server and RAG parties need none)")
    p.add_argument("--force", action="store_true", help="replace this party's existing keys")
    p.set_defaults(func=_cmd_init)

    p = ksub.add_parser("allow", help="add clients' public key files to this server's allow-list (DIR/allowed/)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="public key files (NAME.key) the clients sent")
    p.add_argument("--dir", type=Path, default=Path("keys"), help=dir_help)
    p.add_argument("--force", action="store_true", help="replace a different key already allowed under that name")
    p.set_defaults(func=_cmd_allow)

    p = ksub.add_parser("import", help="install other parties' public key files (e.g. server.key) into DIR")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="public key files (NAME.key)")
    p.add_argument("--dir", type=Path, default=Path("keys"), help=dir_help)
    p.add_argument("--force", action="store_true", help="replace a different key already there under that name")
    p.set_defaults(func=_cmd_import)

    p = ksub.add_parser("roster", help="build the secure-aggregation roster from the clients' public key files")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="every client's public key file (client-K.key)")
    p.add_argument("--out", type=Path, default=Path("roster.toml"), help="roster file (default: roster.toml)")
    p.set_defaults(func=_cmd_roster)

    p = ksub.add_parser("show", help="print the fingerprints of key files and rosters (compare them by phone)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.set_defaults(func=_cmd_show)

    p = ksub.add_parser("generate", help="local demo: every party's keys in one directory")
    p.add_argument("--dir", type=Path, default=Path("keys"), help="keys directory (default: keys)")
    p.add_argument("--clients", type=int, default=3, help="number of client key pairs (default: 3)")
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.set_defaults(func=_cmd_generate)
