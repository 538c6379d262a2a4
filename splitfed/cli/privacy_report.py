"""`splitfed privacy report RUN_DIR`: what a run's ledgers say, per client and party."""

from __future__ import annotations

import math
from pathlib import Path

from splitfed.errors import MissingFileError


def add_report(psub, *, delta_type, run) -> None:
    p = psub.add_parser(
        "report",
        help="epsilon per client against each party, from a run's privacy ledgers (+ a PNG over rounds)",
        description="Read RUN_DIR/privacy/*.jsonl (and inference/*.jsonl: split generation) and state, per "
        "client, the mechanisms used and epsilon at "
        "delta against the server, the aggregator and in total, and the budget left.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory (run.dir)")
    p.add_argument("--delta", type=delta_type, default=None, help="delta (default: the run's privacy.delta)")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: RUN_DIR/privacy/epsilon.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=lambda args: run(args, _report, _report_text))


def _report(args) -> dict:
    from splitfed.privacy.report import plot_epsilon, privacy_report

    settings, reports = privacy_report(args.run_dir, delta=args.delta)
    if not reports:
        raise MissingFileError(f"{args.run_dir / 'privacy'}: no client ledgers (*.jsonl)")
    plot = None
    if not args.no_plot:
        path = args.plot or args.run_dir / "privacy" / "epsilon.png"
        plot = str(plot_epsilon(reports, path, delta=settings["delta"], budget=settings.get("max_epsilon", 0.0)))
    return {"settings": settings, "clients": [r.to_json() for r in reports], "plot": plot}


def _eps(x) -> str:
    return "inf" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.4g}"


def _report_text(r: dict) -> list[str]:
    s = r["settings"]
    lines = [
        f"privacy report: delta {s['delta']:g}, accountant {s['accountant']}, budget "
        + (f"{s['max_epsilon']:g}" if s.get("max_epsilon") else "none")
    ]
    for c in r["clients"]:
        eps = c["epsilon"]
        if not c["rounds"] and c.get("inference"):  # it generated, it never trained
            lines.append(f"{c['client']}: no training releases")
            lines += _inference_text(c["inference"])
            continue
        parties = ", ".join(f"{k} {_eps(v)}" for k, v in eps.items() if k != "total")
        lines.append(f"{c['client']}: epsilon total {_eps(eps['total'])} ({parties}) after rounds {c['rounds']}")
        for st in c["statements"]:
            who = "total (the server process, which also aggregates)" if st["party"] == "total" else st["party"]
            lines.append(
                f"  against {who}: epsilon {_eps(st['epsilon'])} under {st['relation']}, composing "
                + (", ".join(st["composes"]) or "nothing")
            )
            lines += [f"    note: {n}" for n in st["notes"]]
        left = "" if c["not_covered"] else "none"
        lines.append(f"  not covered by any epsilon (released in the clear): {left}")
        lines += [f"    {line}" for line in c["not_covered"]]
        if c["budget_left"] is not None:
            lines.append(f"  budget left: {_eps(c['budget_left'])}")
        for m in c["mechanisms"]:
            nm = "no noise" if m["noise_multiplier"] is None else f"noise multiplier {m['noise_multiplier']:.4g}"
            clip = "" if m["clip"] is None else f", clip {m['clip']:g}"
            why = f" ({m['reason']})" if m.get("reason") else ""
            lines.append(
                f"  {m['mechanism']:<16} -> {m['against']:<10} unit {m['unit']}{clip}, {nm}, {m['relation']}{why}"
            )
        if eps["total"] is None:
            lines.append("  (infinite: a channel above was released without noise, or with noise the server rebuilds)")
        lines.append(_utility_text(c.get("utility")))
        lines += _inference_text(c.get("inference"))
    if r["plot"]:
        lines.append(f"plot: {r['plot']}")
    return lines


def _inference_text(inf: dict | None) -> list[str]:
    """Split generation's figures: per session (one prompt) and every session composed."""
    if not inf:
        return []
    per = inf["epsilon_per_session"]
    worst = None if any(x is None for x in per) else max(per, default=0.0)
    lines = [
        f"  generation (unit: one prompt): {inf['sessions']} sessions; epsilon per prompt up to {_eps(worst)}, "
        f"every session composed {_eps(inf['epsilon_all_sessions'])} (a text in every prompt), against the server"
    ]
    lines += [f"    not covered: {line}" for line in inf["not_covered"]]
    return lines


def _utility_text(u: dict | None) -> str:
    """One line: the client's held-out perplexity against the public base model's."""
    if u is None:
        return "  utility not recorded (no held-out perplexity in the client's metrics)"
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    line = f"  held-out perplexity {fmt(u['tuned_ppl'])} fine-tuned vs {fmt(u['base_ppl'])} public base model"
    if u["beats_base"]:
        return line + ": beats the base model"
    return line + ": does NOT beat the public base model: this privacy bought no utility"
