"""Command-line options shared by the `splitfed` command, the examples and the benchmarks."""

from __future__ import annotations

import argparse


def add_cut_option(parser: argparse.ArgumentParser, *, default: tuple[int, int] = (2, 28)) -> None:
    """``--cut A B``: where the model is cut (``args.cut``, two integers)."""
    a, b = default
    parser.add_argument(
        "--cut",
        type=int,
        nargs=2,
        default=default,
        metavar=("A", "B"),
        help=f"bottom = layers [0,A), trunk = [A,B), top = [B,n) (default: {a} {b})",
    )
