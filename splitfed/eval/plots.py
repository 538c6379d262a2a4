"""The evaluation's plots: attack success against perplexity and against epsilon; update and membership."""

from __future__ import annotations

import math
import os
from pathlib import Path

from splitfed.eval.results import (
    CHANCE,
    PPL_RATIO_GOAL,
    ROUGE_GOAL,
    attack_names,
    attack_ok,
    base_ppl,
    baseline,
    best_inversion,
    epsilon_of,
    fmt_epsilon,
    number,
    ordered,
)

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

    cells = [c for c in results["cells"] if number(c.get("ppl")) and best_inversion(c) is not None]
    cuts = sorted({c["cut"] for c in cells})
    if not cuts:
        return None
    fig, axes = plt.subplots(1, len(cuts), figsize=(5.5 * len(cuts), 4.2), squeeze=False)
    for ax, cut in zip(axes[0], cuts, strict=True):
        for family, curve in _curves([c for c in cells if c["cut"] == cut], lambda c: c["family"]).items():
            xs, ys = [c["ppl"] for c in curve], [best_inversion(c)[1] for c in curve]
            ax.plot(xs, ys, marker="o", label=family)
            for x, y, c in zip(xs, ys, curve, strict=True):
                eps = epsilon_of(c, "activations")
                if eps is not None and math.isfinite(eps):
                    ax.annotate(f"ε={fmt_epsilon(eps)}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(ROUGE_GOAL, linestyle="--", color="gray", label=f"goal ({ROUGE_GOAL:g})")
        chance = [
            c["attacks"][CHANCE]["rouge_l"]
            for c in results["cells"]
            if c["cut"] == cut and attack_ok(c["attacks"].get(CHANCE)) and number(c["attacks"][CHANCE].get("rouge_l"))
        ]
        if chance:
            ax.axhline(sum(chance) / len(chance), linestyle=":", color="black", label="chance")
        base = baseline(results, cut)
        if base is not None and number(base.get("ppl")):
            ax.axvline(PPL_RATIO_GOAL * base["ppl"], linestyle="--", color="red", label=f"{PPL_RATIO_GOAL:g}× none ppl")
        floor = base_ppl(results)
        if floor is not None:  # right of it a defended model is worse than the untouched public one
            ax.axvline(floor, linestyle="-", color="purple", label=f"public base model ({floor:.1f})")
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
        eps = epsilon_of(c, "activations")
        return eps is not None and math.isfinite(eps) and eps > 0

    curves = _curves([c for c in results["cells"] if finite(c)], lambda c: (c["family"], c["cut"]))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for (family, cut), curve in sorted(curves.items()):
        curve = sorted(curve, key=lambda c: epsilon_of(c, "activations"))
        xs, ys = [epsilon_of(c, "activations") for c in curve], [best_inversion(c)[1] for c in curve]
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
    cells = ordered(results["cells"])
    series = [(n, "rouge_l", f"{n} ROUGE-L") for n in attack_names(cells, ("update",))]
    series += [(n, "auc", f"{n} AUC") for n in attack_names(cells, ("model",))]

    def value(c: dict, name: str, field: str) -> float | None:
        a = c["attacks"].get(name)
        return a[field] if attack_ok(a) and number(a.get(field)) else None

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
