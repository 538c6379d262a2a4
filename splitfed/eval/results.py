"""An evaluation run's record, ``RUN_DIR/results.json``: reading it and what its cells say.

The runner writes one *cell* per (cut, defense) with the held-out perplexity, the epsilon per
party and one entry per attack (or ``{"target": ..., "error": ...}``).  An epsilon of ``null``
means no formal guarantee (infinite).  ``base`` holds the public base model's held-out
perplexity, evaluated as the cells are and computed once per run: the utility floor, since
anyone can download the base model.  `goal` answers the question the runs ask: at the goal
cut, does any defense keep the best inversion's ROUGE-L <= 0.1 at <= 1.1x the undefended
perplexity, with a model that beats the base model?
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from splitfed.checks import is_number
from splitfed.errors import SplitfedError

RESULTS, MARKDOWN = "results.json", "results.md"
VERSION = 1
ROUGE_GOAL, PPL_RATIO_GOAL = 0.1, 1.1
CHANCE = "chance"  # a baseline, not an attack
_SETTING_KEYS = ("goal_cut",)
_CELL_KEYS = ("key", "cut", "defense", "family", "level", "attacks")


class ReportError(SplitfedError, ValueError):
    """A results file this module cannot read."""


def load_results(path: str | os.PathLike) -> dict:
    """The results in ``path``, checked for version 1 and the keys the report reads."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e})") from e
    if not isinstance(results, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(results).__name__}")
    if results.get("version") != VERSION:
        raise ReportError(f"{path}: results version {results.get('version')!r}, expected {VERSION}")
    _require(path, "the file", results, ("setting", "cells"))
    _require(path, "setting", results["setting"], _SETTING_KEYS)
    for i, cell in enumerate(results["cells"]):
        _require(path, f"cell {i}", cell, _CELL_KEYS)
        for name, attack in cell["attacks"].items():
            _require(path, f"cell {cell['key']!r} attack {name!r}", attack, ("target",))
    return results


def _require(path: Path, what: str, obj, keys: tuple[str, ...]) -> None:
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: {what} is not an object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ReportError(f"{path}: {what} lacks {', '.join(map(repr, missing))}")


# --- what a cell says -------------------------------------------------------------------------


def attack_ok(attack: dict | None) -> bool:
    return attack is not None and "error" not in attack


def number(x) -> bool:
    return is_number(x) and not math.isnan(x)


def best_inversion(cell: dict) -> tuple[str, float] | None:
    """(attack, ROUGE-L) of the best activation inversion, "chance" and errored attacks aside."""
    found = [
        (name, float(a["rouge_l"]))
        for name, a in cell["attacks"].items()
        if name != CHANCE and a.get("target") == "activations" and attack_ok(a) and number(a.get("rouge_l"))
    ]
    return max(found, key=lambda f: f[1]) if found else None


def baseline(results: dict, cut: int) -> dict | None:
    return next((c for c in results["cells"] if c["cut"] == cut and c["family"] == "none"), None)


def base_ppl(results: dict) -> float | None:
    """The public base model's held-out perplexity: ``results["base"]`` (once per run), else the
    cells' ``ppl_before`` (runs before it was recorded: the model before training, LoRA B = 0,
    which is the base model evaluated the same way)."""
    base = results.get("base")
    if isinstance(base, dict) and number(base.get("ppl")):
        return float(base["ppl"])
    before = [c["ppl_before"] for c in results["cells"] if number(c.get("ppl_before"))]
    return float(before[0]) if before else None


def beats_base(results: dict, cell: dict) -> bool | None:
    """Whether the cell's model has a lower held-out perplexity than the public base model; None if unknown."""
    floor = base_ppl(results)
    if floor is None or not number(cell.get("ppl")):
        return None
    return cell["ppl"] < floor


def ppl_ratio(results: dict, cell: dict) -> float | None:
    """The cell's perplexity over that of the undefended cell (family "none") at the same cut."""
    base = baseline(results, cell["cut"])
    if base is None or not number(cell.get("ppl")) or not number(base.get("ppl")) or base["ppl"] <= 0:
        return None
    return cell["ppl"] / base["ppl"]


def epsilon_of(cell: dict, party: str) -> float | None:
    """``math.inf`` for no guarantee, None when the cell does not state it."""
    eps = cell.get("epsilon")
    if not isinstance(eps, dict) or party not in eps:
        return None
    return math.inf if eps[party] is None else float(eps[party])


def _goal_cut(results: dict) -> int:
    return results["setting"]["goal_cut"]


def _frontier(points: list[tuple[float, float, dict]]) -> list[dict]:
    """Cells no other cell beats on both perplexity and ROUGE-L (lower is better), by ppl."""
    out, lowest = [], math.inf
    for _, rouge_l, cell in sorted(points, key=lambda p: (p[0], p[1])):
        if rouge_l < lowest:
            out.append(cell)
            lowest = rouge_l
    return out


def goal(results: dict, rouge_max: float = ROUGE_GOAL, ppl_ratio_max: float = PPL_RATIO_GOAL) -> dict:
    """At the goal cut: cells with best ROUGE-L <= ``rouge_max`` and ppl ratio <= ``ppl_ratio_max``.

    Returns ``cut``, ``meeting`` (cells, lowest perplexity first), ``frontier`` (the Pareto
    frontier of (ppl, best ROUGE-L), lowest perplexity first) and ``verdict``: one paragraph.
    """
    cut = _goal_cut(results)
    points = []
    for cell in results["cells"]:
        best = best_inversion(cell)
        if cell["cut"] == cut and best is not None and number(cell.get("ppl")):
            points.append((cell["ppl"], best[1], cell))
    meeting = [
        c
        for ppl, r, c in sorted(points, key=lambda p: (p[0], p[1]))
        if r <= rouge_max
        and (ratio := ppl_ratio(results, c)) is not None
        and ratio <= ppl_ratio_max
        and beats_base(results, c) is not False  # a model no better than the public one bought nothing
    ]
    frontier = _frontier(points)
    target = f"best inversion ROUGE-L ≤ {rouge_max:g} at ≤ {ppl_ratio_max:g}× the undefended perplexity"
    if meeting:
        verdict = _met(results, meeting, target, cut)
    elif not points:
        verdict = f"No setting reaches {target} at cut {cut}: no cell there has both a perplexity and an inversion."
    else:
        listed = "; ".join(
            f"{_describe(results, c)}, ε activations {eps_text(c, 'activations')}, ε server {eps_text(c, 'server')}"
            for c in frontier
        )
        verdict = f"No setting reaches {target} at cut {cut}. The frontier (no cell better on both): {listed}."
        if baseline(results, cut) is None:
            verdict += f" There is no undefended cell at cut {cut} to compare perplexity with."
    floor = base_ppl(results)
    if floor is not None:
        verdict += (
            f" The public base model, not fine-tuned, has ppl {floor:.1f}: a cell that does not beat it "
            "bought no utility and does not meet the goal."
        )
    return {"cut": cut, "meeting": meeting, "frontier": frontier, "verdict": verdict}


def _met(results: dict, meeting: list[dict], target: str, cut: int) -> str:
    cell = meeting[0]
    eps = epsilon_of(cell, "activations")
    delta = results["setting"].get("delta")
    if eps is None:
        guarantee = "it states no epsilon for the activations"
    elif math.isinf(eps):
        guarantee = "ε activations = ∞: this defense gives no formal guarantee on what the server receives"
    else:
        guarantee = f"ε activations = {fmt_epsilon(eps)}" + (f" (δ = {delta:g})" if delta is not None else "")
    guarantee += f", ε server (all cut traffic) = {eps_text(cell, 'server')}"
    others = f" ({len(meeting)} settings meet it; this one costs the least perplexity)" if len(meeting) > 1 else ""
    return f"The goal ({target}) is met at cut {cut}{others} by {_describe(results, cell)}; {guarantee}."


def _describe(results: dict, cell: dict) -> str:
    name, rouge_l = best_inversion(cell) or ("-", math.nan)
    ratio = ppl_ratio(results, cell)
    cost = f" (×{ratio:.2f} of none)" if ratio is not None else ""
    floor = "" if beats_base(results, cell) is not False else ", no better than the public base model"
    return (
        f"`{cell['key']}` ({cell['defense']}): ppl {cell['ppl']:.1f}{cost}, best ROUGE-L {rouge_l:.2f} ({name}){floor}"
    )


def fmt_epsilon(eps: float) -> str:
    """3 significant figures: 8, 12.3, 1.23e+04; ∞ for no guarantee."""
    return "∞" if math.isinf(eps) else f"{eps:.3g}"


def eps_text(cell: dict, party: str) -> str:
    eps = epsilon_of(cell, party)
    return "-" if eps is None else fmt_epsilon(eps)


def attack_names(cells: list[dict], targets: tuple[str, ...]) -> list[str]:
    """Attacks on these targets in order of first appearance, "chance" last."""
    names = dict.fromkeys(n for c in cells for n, a in c["attacks"].items() if a.get("target") in targets)
    return sorted(names, key=lambda n: n.split("@")[0] == CHANCE)


def ordered(cells: list[dict]) -> list[dict]:
    """Cells by cut, undefended first, then by family and noise level."""
    return sorted(cells, key=lambda c: (c["cut"], c["family"] != "none", c["family"], c["level"]))
