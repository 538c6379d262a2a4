"""`splitfed attack`: run the attack x defense grid, re-render its report, list what exists.

Imports of torch and the evaluation code happen inside the commands so `--help` stays fast.
Library errors (bad config, unknown attack, a run directory of another config) are printed
as one line by `splitfed.cli.main` and exit 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from splitfed.errors import MissingFileError


def register(subparsers) -> None:
    """Add the `attack` command group to the `splitfed` subparsers."""
    group = subparsers.add_parser(
        "attack",
        help="measure what a curious server, aggregator or model user recovers, per defense",
        description=(
            "Attack and defense evaluation. Each [[defense]] of the config is trained at each cut; every attack "
            "guesses from what its party sees; results go to RUN_DIR/results.json (resumable), results.md and PNGs."
        ),
        epilog="Examples:\n"
        "  splitfed attack list\n"
        "  splitfed attack run --config examples/attack.toml --out runs/attack\n"
        "  splitfed attack report runs/attack",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = group.add_subparsers(dest="attack_command", metavar="ACTION", required=True)
    p = sub.add_parser("run", help="run (or resume) the grid of a config; writes results.json, results.md, PNGs")
    p.add_argument("--config", required=True, help="attack TOML (see examples/attack.toml)")
    p.add_argument("--out", default="runs/attack", help="run directory (default runs/attack); resumed if it exists")
    p.add_argument("--restart", action="store_true", help="discard results already in --out and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    p = sub.add_parser("report", help="re-render results.md and the plots from RUN_DIR/results.json")
    p.add_argument("run_dir", help="a directory written by `splitfed attack run`")
    p.set_defaults(func=_report)
    p = sub.add_parser("list", help="name the attacks (with their attacker model) and the defense knobs")
    p.set_defaults(func=_list)


def _run(args) -> int:
    from splitfed.config.toml import load_toml
    from splitfed.eval.config import AttackConfig
    from splitfed.eval.report import goal, write_report
    from splitfed.eval.runner import run

    cfg = load_toml(AttackConfig, args.config)
    results = run(cfg, args.out, restart=args.restart, show_progress=not args.quiet)
    for path in write_report(Path(args.out)):
        print(f"wrote {path}")
    print(goal(results)["verdict"])
    return 0


def _report(args) -> int:
    from splitfed.eval.report import goal, load_results, write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "results.json").is_file():
        raise MissingFileError(f"{run_dir / 'results.json'} not found: is {run_dir} a `splitfed attack run` directory?")
    for path in write_report(run_dir):
        print(f"wrote {path}")
    print(goal(load_results(run_dir / "results.json"))["verdict"])
    return 0


def _list(args) -> int:
    from splitfed.eval.registry import ATTACKS, attack_knobs, defense_knobs

    print("attacks:")
    for name, a in ATTACKS.items():
        k = a.knowledge
        print(f"  {name:<22} [{a.target}] {a.summary}")
        print(f"  {'':<22} attacker: {k.party}; sees {k.sees}; knows {k.knows}")
    print("\nattack options ([attacks.<table>] keys in the attack config):")
    for key, help_text in attack_knobs():
        print(f"  {key:<28} {help_text}")
    print("\ndefenses ([[defense]] keys in the attack config; combine freely):")
    for key, help_text in defense_knobs():
        print(f"  {key:<28} {help_text}")
    return 0
