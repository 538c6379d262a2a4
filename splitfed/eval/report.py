"""What an evaluation run found: ``RUN_DIR/results.json`` rendered as markdown and PNG plots.

The runner writes one *cell* per (cut, defense) with the held-out perplexity, the epsilon per
party and one entry per attack (or ``{"target": ..., "error": ...}``).  An epsilon of ``null``
means no formal guarantee (infinite).  `goal` answers the question the runs ask: at the goal
cut, does any defense keep the best inversion's ROUGE-L <= 0.1 at <= 1.1x the undefended
perplexity?  `write_report` writes ``results.md`` and the plots beside the results.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

RESULTS, MARKDOWN = "results.json", "results.md"
VERSION = 1
ROUGE_GOAL, PPL_RATIO_GOAL = 0.1, 1.1
CHANCE = "chance"  # a baseline, not an attack
_SETTING_KEYS = ("goal_cut",)
_CELL_KEYS = ("key", "cut", "defense", "family", "level", "attacks")


class ReportError(ValueError):
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


def _ok(attack: dict | None) -> bool:
    return attack is not None and "error" not in attack


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and not math.isnan(x)


def best_inversion(cell: dict) -> tuple[str, float] | None:
    """(attack, ROUGE-L) of the best activation inversion, "chance" and errored attacks aside."""
    found = [
        (name, float(a["rouge_l"]))
        for name, a in cell["attacks"].items()
        if name != CHANCE and a.get("target") == "activations" and _ok(a) and _number(a.get("rouge_l"))
    ]
    return max(found, key=lambda f: f[1]) if found else None


def _baseline(results: dict, cut: int) -> dict | None:
    return next((c for c in results["cells"] if c["cut"] == cut and c["family"] == "none"), None)


def ppl_ratio(results: dict, cell: dict) -> float | None:
    """The cell's perplexity over that of the undefended cell (family "none") at the same cut."""
    base = _baseline(results, cell["cut"])
    if base is None or not _number(cell.get("ppl")) or not _number(base.get("ppl")) or base["ppl"] <= 0:
        return None
    return cell["ppl"] / base["ppl"]


def _epsilon(cell: dict, party: str) -> float | None:
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
        if cell["cut"] == cut and best is not None and _number(cell.get("ppl")):
            points.append((cell["ppl"], best[1], cell))
    meeting = [
        c
        for ppl, r, c in sorted(points, key=lambda p: (p[0], p[1]))
        if r <= rouge_max and (ratio := ppl_ratio(results, c)) is not None and ratio <= ppl_ratio_max
    ]
    frontier = _frontier(points)
    target = f"best inversion ROUGE-L ≤ {rouge_max:g} at ≤ {ppl_ratio_max:g}× the undefended perplexity"
    if meeting:
        verdict = _met(results, meeting, target, cut)
    elif not points:
        verdict = f"No setting reaches {target} at cut {cut}: no cell there has both a perplexity and an inversion."
    else:
        listed = "; ".join(
            f"{_describe(results, c)}, ε activations {_eps_text(c, 'activations')}, ε server {_eps_text(c, 'server')}"
            for c in frontier
        )
        verdict = f"No setting reaches {target} at cut {cut}. The frontier (no cell better on both): {listed}."
        if _baseline(results, cut) is None:
            verdict += f" There is no undefended cell at cut {cut} to compare perplexity with."
    return {"cut": cut, "meeting": meeting, "frontier": frontier, "verdict": verdict}


def _met(results: dict, meeting: list[dict], target: str, cut: int) -> str:
    cell = meeting[0]
    eps = _epsilon(cell, "activations")
    delta = results["setting"].get("delta")
    if eps is None:
        guarantee = "it states no epsilon for the activations"
    elif math.isinf(eps):
        guarantee = "ε activations = ∞: this defense gives no formal guarantee on what the server receives"
    else:
        guarantee = f"ε activations = {fmt_epsilon(eps)}" + (f" (δ = {delta:g})" if delta is not None else "")
    guarantee += f", ε server (all cut traffic) = {_eps_text(cell, 'server')}"
    others = f" ({len(meeting)} settings meet it; this one costs the least perplexity)" if len(meeting) > 1 else ""
    return f"The goal ({target}) is met at cut {cut}{others} by {_describe(results, cell)}; {guarantee}."


def _describe(results: dict, cell: dict) -> str:
    name, rouge_l = best_inversion(cell) or ("-", math.nan)
    ratio = ppl_ratio(results, cell)
    cost = f" (×{ratio:.2f} of none)" if ratio is not None else ""
    return f"`{cell['key']}` ({cell['defense']}): ppl {cell['ppl']:.1f}{cost}, best ROUGE-L {rouge_l:.2f} ({name})"


# --- markdown ---------------------------------------------------------------------------------


def fmt_epsilon(eps: float) -> str:
    """3 significant figures: 8, 12.3, 1.23e+04; ∞ for no guarantee."""
    return "∞" if math.isinf(eps) else f"{eps:.3g}"


def _eps_text(cell: dict, party: str) -> str:
    eps = _epsilon(cell, party)
    return "-" if eps is None else fmt_epsilon(eps)


def _frac(x) -> str:
    """A score in [0, 1]: 2 decimals, 3 below 0.1 so small leaks stay visible."""
    if not _number(x):
        return "-"
    return f"{x:.2f}" if x == 0 or abs(x) >= 0.1 else f"{x:.3f}"


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]


def _names(cells: list[dict], targets: tuple[str, ...]) -> list[str]:
    """Attacks on these targets in order of first appearance, "chance" last."""
    names = dict.fromkeys(n for c in cells for n, a in c["attacks"].items() if a.get("target") in targets)
    return sorted(names, key=lambda n: n == CHANCE)


def _ordered(cells: list[dict]) -> list[dict]:
    return sorted(cells, key=lambda c: (c["cut"], c["family"] != "none", c["family"], c["level"]))


def _entry(cell: dict, name: str, columns: list[tuple[str, ...]]) -> list[str]:
    """One attack's columns, each the listed fields joined by " / "; "-" if absent, "err" if it failed."""
    a = cell["attacks"].get(name)
    if a is None:
        return ["-"] * len(columns)
    if "error" in a:
        return ["err"] * len(columns)
    return [" / ".join(str(a.get(k, "-")) if k == "clients" else _frac(a.get(k)) for k in keys) for keys in columns]


def _errors(cells: list[dict], names: list[str]) -> list[str]:
    found = [(c, n) for c in cells for n in names if "error" in c["attacks"].get(n, {})]
    if not found:
        return []
    return ["", "Errors:", ""] + [f"- `{c['key']}` {n}: {_md(c['attacks'][n]['error'])}" for c, n in found]


def _ppl(results: dict, cell: dict) -> str:
    if not _number(cell.get("ppl")):
        return "-"
    ratio = ppl_ratio(results, cell)
    return f"{cell['ppl']:.1f}" + (f" (×{ratio:.2f})" if ratio is not None else "")


def _setting(setting: dict) -> list[str]:
    lines = ["## Setting", ""]
    lines += [f"- {k.replace('_', ' ')}: {_md(v)}" for k, v in setting.items() if k != "attackers"]
    attackers = setting.get("attackers") or {}
    if attackers:
        rows = [[n, a.get("party", "-"), a.get("sees", "-"), a.get("knows", "-")] for n, a in attackers.items()]
        lines += ["", "Attacker models:", ""] + _table(["attack", "party", "sees", "knows"], rows)
    return lines


def _inversion_table(results: dict, cells: list[dict]) -> list[str]:
    names = _names(cells, ("activations",))
    cells = [c for c in cells if any(n in c["attacks"] for n in names)]
    if not cells:
        return []
    header = ["cut", "defense", "ε activations", "ε server", "ε aggregator", "ppl (× none)"]
    header += [f"{n} ROUGE-L / acc" for n in names] + ["best"]
    rows = []
    for c in cells:
        best = best_inversion(c)
        eps = [_eps_text(c, party) for party in ("activations", "server", "aggregator")]
        row = [str(c["cut"]), c["defense"], *eps, _ppl(results, c)]
        row += [_entry(c, n, [("rouge_l", "token_accuracy")])[0] for n in names]
        rows.append(row + [f"{best[0]} {_frac(best[1])}" if best else "-"])
    intro = (
        "ROUGE-L / token accuracy of the private input recovered from the activations the server "
        f"receives. `{CHANCE}` is a baseline (no access), not an attack; best excludes it. "
        "ε activations: the activation channel alone; ε server: everything the server receives "
        "(activations and returned gradients, composed); ∞ = no guarantee."
    )
    return ["## Table 1: activation inversion", "", intro, ""] + _table(header, rows) + _errors(cells, names)


def _top_table(cells: list[dict]) -> list[str]:
    names = _names(cells, ("gradients",))
    cells = [c for c in cells if any(n in c["attacks"] for n in names)]
    if not cells:
        return []
    header = ["cut", "defense"] + [f"{n} acc" for n in names]
    rows = [[str(c["cut"]), c["defense"]] + [_entry(c, n, [("token_accuracy",)])[0] for n in names] for c in cells]
    intro = "Token accuracy of the private labels inferred from the gradients the server returns."
    return ["## Table 2: top side", "", intro, ""] + _table(header, rows) + _errors(cells, names)


def _update_table(cells: list[dict]) -> list[str]:
    updates, models = _names(cells, ("update",)), _names(cells, ("model",))
    cells = [c for c in cells if any(n in c["attacks"] for n in updates + models)]
    if not cells:
        return []
    header = ["cut", "defense", "ε aggregator"]
    for n in updates:
        header += [f"{n} ROUGE-L", "token precision / recall", "clients"]
    header += [f"{n} AUC / TPR@1%" for n in models]
    rows = []
    for c in cells:
        row = [str(c["cut"]), c["defense"], _eps_text(c, "aggregator")]
        for n in updates:
            row += _entry(c, n, [("rouge_l",), ("token_precision", "token_recall"), ("clients",)])
        rows.append(row + [_entry(c, n, [("auc", "tpr_at_1pct_fpr")])[0] for n in models])
    intro = "What the aggregator recovers from client updates, and membership inference on the fine-tuned model."
    return (
        ["## Table 3: update inversion and membership", "", intro, ""]
        + _table(header, rows)
        + _errors(cells, updates + models)
    )


def render_markdown(results: dict) -> str:
    """The report page: setting, verdict, then each table that has data."""
    setting, cells = results["setting"], _ordered(results["cells"])
    lines = [f"# Attack and defense evaluation: {_md(setting.get('model', 'model'))}", ""]
    lines += _setting(setting) + ["", "## Verdict", "", goal(results)["verdict"]]
    for table in (_inversion_table(results, cells), _top_table(cells), _update_table(cells)):
        if table:
            lines += [""] + table
    return "\n".join(lines) + "\n"


# --- plots ------------------------------------------------------------------------------------


def _curves(cells: list[dict], key) -> dict:
    """Cells with a best inversion grouped by ``key(cell)``, each curve sorted by level."""
    curves: dict = {}
    for c in cells:
        if best_inversion(c) is not None:
            curves.setdefault(key(c), []).append(c)
    return {k: sorted(v, key=lambda c: c["level"]) for k, v in curves.items()}


def _attack_vs_ppl(results: dict, path: Path, plt) -> Path | None:
    from matplotlib.ticker import FormatStrFormatter

    cells = [c for c in results["cells"] if _number(c.get("ppl")) and best_inversion(c) is not None]
    cuts = sorted({c["cut"] for c in cells})
    if not cuts:
        return None
    fig, axes = plt.subplots(1, len(cuts), figsize=(5.5 * len(cuts), 4.2), squeeze=False)
    for ax, cut in zip(axes[0], cuts, strict=True):
        for family, curve in _curves([c for c in cells if c["cut"] == cut], lambda c: c["family"]).items():
            xs, ys = [c["ppl"] for c in curve], [best_inversion(c)[1] for c in curve]
            ax.plot(xs, ys, marker="o", label=family)
            for x, y, c in zip(xs, ys, curve, strict=True):
                eps = _epsilon(c, "activations")
                if eps is not None and math.isfinite(eps):
                    ax.annotate(f"ε={fmt_epsilon(eps)}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(ROUGE_GOAL, linestyle="--", color="gray", label=f"goal ({ROUGE_GOAL:g})")
        chance = [
            c["attacks"][CHANCE]["rouge_l"]
            for c in results["cells"]
            if c["cut"] == cut and _ok(c["attacks"].get(CHANCE)) and _number(c["attacks"][CHANCE].get("rouge_l"))
        ]
        if chance:
            ax.axhline(sum(chance) / len(chance), linestyle=":", color="black", label="chance")
        base = _baseline(results, cut)
        if base is not None and _number(base.get("ppl")):
            ax.axvline(PPL_RATIO_GOAL * base["ppl"], linestyle="--", color="red", label=f"{PPL_RATIO_GOAL:g}× none ppl")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # perplexities span little: plain numbers
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_ylim(0, 1)
        ax.set_xlabel("held-out perplexity")
        ax.set_ylabel("best inversion ROUGE-L")
        ax.set_title(f"cut {cut}")
        ax.legend(fontsize=7)
    return _save(fig, path, plt)


def _attack_vs_epsilon(results: dict, path: Path, plt) -> Path | None:
    def finite(c: dict) -> bool:
        eps = _epsilon(c, "activations")
        return eps is not None and math.isfinite(eps) and eps > 0

    curves = _curves([c for c in results["cells"] if finite(c)], lambda c: (c["family"], c["cut"]))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for (family, cut), curve in sorted(curves.items()):
        curve = sorted(curve, key=lambda c: _epsilon(c, "activations"))
        xs, ys = [_epsilon(c, "activations") for c in curve], [best_inversion(c)[1] for c in curve]
        ax.plot(xs, ys, marker="o", label=f"{family} (cut {cut})")
    ax.axhline(ROUGE_GOAL, linestyle="--", color="gray", label=f"goal ({ROUGE_GOAL:g})")
    delta = results["setting"].get("delta")
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("ε server" + (f" (δ = {delta:g})" if delta is not None else ""))
    ax.set_ylabel("best inversion ROUGE-L")
    ax.legend(fontsize=7)
    return _save(fig, path, plt)


def _update_membership(results: dict, path: Path, plt) -> Path | None:
    cells = _ordered(results["cells"])
    series = [(n, "rouge_l", f"{n} ROUGE-L") for n in _names(cells, ("update",))]
    series += [(n, "auc", f"{n} AUC") for n in _names(cells, ("model",))]

    def value(c: dict, name: str, field: str) -> float | None:
        a = c["attacks"].get(name)
        return a[field] if _ok(a) and _number(a.get(field)) else None

    cells = [c for c in cells if any(value(c, n, f) is not None for n, f, _ in series)]
    if not cells:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cells)), 4.2))
    width = 0.8 / len(series)
    for i, (name, field, label) in enumerate(series):
        pts = [(j, v) for j, c in enumerate(cells) if (v := value(c, name, field)) is not None]
        if pts:
            ax.bar([j + (i - (len(series) - 1) / 2) * width for j, _ in pts], [v for _, v in pts], width, label=label)
    ax.axhline(0.5, linestyle=":", color="black", label="AUC of a coin flip")
    ax.set_xticks(range(len(cells)), [f"{c['defense']}\ncut {c['cut']}" for c in cells], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("ROUGE-L / AUC")
    ax.set_title("update inversion and membership inference")
    ax.legend(fontsize=7)
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot(results: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write the plots that have data into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = [
        _attack_vs_ppl(results, out / "attack_vs_ppl.png", plt),
        _attack_vs_epsilon(results, out / "attack_vs_epsilon.png", plt),
        _update_membership(results, out / "update_membership.png", plt),
    ]
    return [p for p in made if p is not None]


def write_report(run_dir: str | os.PathLike) -> list[Path]:
    """Render ``run_dir/results.json`` into ``results.md`` and the plots beside it; the paths written."""
    run_dir = Path(run_dir)
    results = load_results(run_dir / RESULTS)
    md = run_dir / MARKDOWN
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(render_markdown(results), encoding="utf-8")
    os.replace(tmp, md)
    return [md, *plot(results, run_dir)]
