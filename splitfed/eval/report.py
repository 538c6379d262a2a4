"""An evaluation run rendered as markdown: ``results.md`` (setting, verdict, tables), plus the plots.

`write_report` writes ``results.md`` and the plots (`splitfed.eval.plots`) beside the results.
"""

from __future__ import annotations

import os
from pathlib import Path

from splitfed.atomic import atomic_write_text
from splitfed.eval.results import (
    CHANCE,
    MARKDOWN,
    PPL_RATIO_GOAL,
    RESULTS,
    ROUGE_GOAL,
    ReportError,
    attack_names,
    base_ppl,
    beats_base,
    best_inversion,
    eps_text,
    fmt_epsilon,
    goal,
    load_results,
    number,
    ordered,
    ppl_ratio,
)

__all__ = ["CHANCE", "PPL_RATIO_GOAL", "ROUGE_GOAL", "ReportError", "base_ppl", "beats_base", "best_inversion",
           "fmt_epsilon", "goal", "load_results", "ppl_ratio", "render_markdown", "write_report"]  # fmt: skip


def _frac(x) -> str:
    """A score in [0, 1]: 2 decimals, 3 below 0.1 so small leaks stay visible."""
    if not number(x):
        return "-"
    return f"{x:.2f}" if x == 0 or abs(x) >= 0.1 else f"{x:.3f}"


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]


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
    if not number(cell.get("ppl")):
        return "-"
    ratio = ppl_ratio(results, cell)
    return f"{cell['ppl']:.1f}" + (f" (×{ratio:.2f})" if ratio is not None else "")


def _beats(results: dict, cell: dict) -> str:
    b = beats_base(results, cell)
    return "-" if b is None else ("yes" if b else "**no**")


def _base_line(results: dict) -> list[str]:
    floor = base_ppl(results)
    if floor is None:
        return []
    return [
        f"Public base model (not fine-tuned, evaluated the same way): ppl {floor:.1f}. "
        '"beats base" says whether a cell\'s fine-tuned model has a lower perplexity; one that does not '
        "bought no utility, whatever its privacy.",
        "",
    ]


def _setting(setting: dict) -> list[str]:
    lines = ["## Setting", ""]
    lines += [f"- {k.replace('_', ' ')}: {_md(v)}" for k, v in setting.items() if k != "attackers"]
    attackers = setting.get("attackers") or {}
    if attackers:
        rows = [[n, a.get("party", "-"), a.get("sees", "-"), a.get("knows", "-")] for n, a in attackers.items()]
        lines += ["", "Attacker models:", ""] + _table(["attack", "party", "sees", "knows"], rows)
    return lines


def _inversion_table(results: dict, cells: list[dict]) -> list[str]:
    names = attack_names(cells, ("activations",))
    cells = [c for c in cells if any(n in c["attacks"] for n in names)]
    if not cells:
        return []
    header = ["cut", "defense", "ε activations", "ε server", "ε aggregator", "ppl (× none)", "beats base"]
    header += [f"{n} ROUGE-L / acc" for n in names] + ["best"]
    rows = []
    for c in cells:
        best = best_inversion(c)
        eps = [eps_text(c, party) for party in ("activations", "server", "aggregator")]
        row = [str(c["cut"]), c["defense"], *eps, _ppl(results, c), _beats(results, c)]
        row += [_entry(c, n, [("rouge_l", "token_accuracy")])[0] for n in names]
        rows.append(row + [f"{best[0]} {_frac(best[1])}" if best else "-"])
    intro = (
        "ROUGE-L / token accuracy of the private input recovered from the activations the server "
        f"receives. `{CHANCE}` is a baseline (no access), not an attack; best excludes it. "
        "ε activations: the activation channel alone; ε server: everything the server receives "
        "(activations and returned gradients, composed); ∞ = no guarantee."
    )
    return (
        ["## Table 1: activation inversion", "", intro, ""]
        + _base_line(results)
        + _table(header, rows)
        + _errors(cells, names)
    )


def _top_table(cells: list[dict]) -> list[str]:
    names = attack_names(cells, ("gradients",))
    cells = [c for c in cells if any(n in c["attacks"] for n in names)]
    if not cells:
        return []
    header = ["cut", "defense"] + [f"{n} acc" for n in names]
    rows = [[str(c["cut"]), c["defense"]] + [_entry(c, n, [("token_accuracy",)])[0] for n in names] for c in cells]
    intro = "Token accuracy of the private labels inferred from the gradients the server returns."
    return ["## Table 2: top side", "", intro, ""] + _table(header, rows) + _errors(cells, names)


def _update_table(cells: list[dict]) -> list[str]:
    updates, models = attack_names(cells, ("update",)), attack_names(cells, ("model",))
    cells = [c for c in cells if any(n in c["attacks"] for n in updates + models)]
    if not cells:
        return []
    header = ["cut", "defense", "ε aggregator"]
    for n in updates:
        header += [f"{n} ROUGE-L", "token precision: train / held-out / lift", "clients"]
    header += [f"{n} AUC / TPR@1%" for n in models]
    rows = []
    for c in cells:
        row = [str(c["cut"]), c["defense"], eps_text(c, "aggregator")]
        for n in updates:
            precision = ("token_precision_matched", "token_precision_heldout", "token_precision_lift")
            row += _entry(c, n, [("rouge_l",), precision, ("clients",)])
        rows.append(row + [_entry(c, n, [("auc", "tpr_at_1pct_fpr")])[0] for n in models])
    intro = (
        "What the aggregator recovers from client updates, and membership inference on the fine-tuned model. "
        "Token precision is the share of the update attack's guessed tokens found in as many training reviews "
        "as there are held-out ones, then in the held-out reviews; the lift (the difference) is what the update "
        "reveals beyond generic review vocabulary, which a guess from the public model alone also hits."
    )
    return (
        ["## Table 3: update inversion and membership", "", intro, ""]
        + _table(header, rows)
        + _errors(cells, updates + models)
    )


def _generation_ppl(results: dict, cell: dict) -> tuple[str, str]:
    """The held-out perplexity with generation's releases, and whether it beats the public base model."""
    ppl, floor = cell.get("ppl_generation"), base_ppl(results)
    if not number(ppl):
        return "-", "-"
    return f"{ppl:.1f}", "-" if floor is None else ("yes" if ppl < floor else "**no**")


def _generation_table(results: dict, cells: list[dict]) -> list[str]:
    names = attack_names(cells, ("generation",))
    cells = [c for c in cells if any(n in c["attacks"] for n in names)]
    if not cells:
        return []
    header = ["cut", "defense", "ε per prompt", "ppl as generated", "beats base"]
    header += [f"{n} ROUGE-L / acc" for n in names]
    rows = [
        [str(c["cut"]), c["defense"], eps_text(c, "generation"), *_generation_ppl(results, c)]
        + [_entry(c, n, [("rouge_l", "token_accuracy")])[0] for n in names]
        for c in cells
    ]
    intro = (
        "The same inversions on what the server receives while the trained victim generates (split inference): "
        "each held-out prompt's activations, then one position per new token, through the same defense. The "
        "truth is the prompt and the answer. ε per prompt: the inference ledger's statement for one prompt "
        "(the prefill and every decode position composed); ∞ = no guarantee. ppl as generated: the held-out "
        "perplexity with the Bottom's output released as generation releases it (the same noise at inference), "
        "against the public base model run locally without noise."
    )
    return ["## Table 4: split generation", "", intro, ""] + _table(header, rows) + _errors(cells, names)


def render_markdown(results: dict) -> str:
    """The report page: setting, verdict, then each table that has data."""
    setting, cells = results["setting"], ordered(results["cells"])
    lines = [f"# Attack and defense evaluation: {_md(setting.get('model', 'model'))}", ""]
    lines += _setting(setting) + ["", "## Verdict", "", goal(results)["verdict"]]
    tables = (
        _inversion_table(results, cells),
        _top_table(cells),
        _update_table(cells),
        _generation_table(results, cells),
    )
    for table in tables:
        if table:
            lines += [""] + table
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | os.PathLike) -> list[Path]:
    """Render ``run_dir/results.json`` into ``results.md`` and the plots beside it; the paths written."""
    run_dir = Path(run_dir)
    results = load_results(run_dir / RESULTS)
    md = run_dir / MARKDOWN
    atomic_write_text(md, render_markdown(results))
    from splitfed.eval.plots import plot

    return [md, *plot(results, run_dir)]
