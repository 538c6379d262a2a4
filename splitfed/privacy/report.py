"""What a run's ledgers say: per client, the mechanisms used and epsilon against each party.

``<run.dir>/privacy/<client>.jsonl`` are the ledgers; ``settings.json`` beside them holds the
run's delta, accountant and budget (written by the clients).  `privacy_report` returns
values; `plot_epsilon` writes the PNG of epsilon over rounds per client.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from splitfed.atomic import atomic_write_text
from splitfed.errors import MissingFileError
from splitfed.privacy.ledger import (
    Disclosure,
    LedgerEntry,
    LedgerError,
    finite,
    not_covered,
    read_ledger,
    spent,
    statements,
)

SETTINGS = "settings.json"


def write_settings(directory: str | os.PathLike, *, delta: float, accountant: str, max_epsilon: float) -> None:
    path = Path(directory) / SETTINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"delta": delta, "accountant": accountant, "max_epsilon": max_epsilon}))


@dataclass
class ClientReport:
    client: str
    mechanisms: list[dict]  # distinct (mechanism, against, unit, clip, noise multiplier)
    epsilon: dict[str, float]  # party -> epsilon, and "total"
    rounds: list[int] = field(default_factory=list)
    total_by_round: list[float] = field(default_factory=list)  # cumulative total epsilon after each round
    budget_left: float | None = None
    statements: list[dict] = field(default_factory=list)  # per party: relation, epsilon, composes, not covered
    not_covered: list[str] = field(default_factory=list)  # released in the clear, covered by no epsilon
    utility: dict | None = None  # held-out perplexity, public base vs fine-tuned (`add_utility`); None: not recorded
    inference: dict | None = None  # split generation's ledger (unit: one prompt); None: the client never generated

    def to_json(self) -> dict:
        return {
            "client": self.client,
            "mechanisms": self.mechanisms,
            "epsilon": {k: finite(v) for k, v in self.epsilon.items()},
            "statements": self.statements,
            "not_covered": self.not_covered,
            "rounds": self.rounds,
            "total_by_round": [finite(v) for v in self.total_by_round],
            "budget_left": None if self.budget_left is None else finite(self.budget_left),
            "utility": self.utility,
            "inference": self.inference,
        }


def privacy_report(run_dir: str | os.PathLike, *, delta: float | None = None) -> tuple[dict, list[ClientReport]]:
    """(settings, one report per client ledger).  Raises `MissingFileError` naming what is missing,
    `LedgerError` for a damaged ledger or settings file."""
    root = Path(run_dir) / "privacy"
    if not root.is_dir():
        raise MissingFileError(f"{root}: no privacy ledgers (was the run started with privacy.enabled = true?)")
    settings = {"delta": 1e-5, "accountant": "rdp", "max_epsilon": 0.0}
    if (root / SETTINGS).is_file():
        try:
            settings.update(json.loads((root / SETTINGS).read_text()))
        except (ValueError, TypeError) as exc:  # not JSON, not UTF-8, or not an object
            raise LedgerError(
                f"{root / SETTINGS}: not a JSON object of settings ({exc}); the file is damaged"
            ) from None
    if delta is not None:
        settings["delta"] = delta
    training = {p.stem: p for p in root.glob("*.jsonl")}
    inference = {p.stem: p for p in (root / "inference").glob("*.jsonl")}
    reports = []
    for name in sorted(training.keys() | inference.keys()):
        report = _client(name, read_ledger(training[name]) if name in training else [], settings)
        if name in inference:
            report.inference = _inference(read_ledger(inference[name]), settings)
        reports.append(report)
    add_utility(run_dir, reports)
    return settings, reports


def add_utility(run_dir: str | os.PathLike, reports: list[ClientReport]) -> None:
    """Each client's held-out perplexity after training next to the public base model's, from what
    the client recorded in ``<run_dir>/metrics/<client>.jsonl``: an epsilon that bought a model no
    better than the public base model bought nothing."""
    from splitfed.utility import client_utility

    for r in reports:
        utility = client_utility(run_dir, r.client)
        r.utility = None if utility is None else utility.to_json()


def _client(name: str, entries: list[LedgerEntry], settings: dict) -> ClientReport:
    delta, acc = settings["delta"], settings["accountant"]
    mechanisms = []
    for e in entries:
        if isinstance(e.event, Disclosure):
            continue
        row = {"mechanism": e.mechanism, "against": e.against.value, "unit": e.unit, "clip": e.clip}
        row["noise_multiplier"] = getattr(e.event, "noise_multiplier", None)
        row["relation"] = e.relation.value
        row["reason"] = e.reason
        if row not in mechanisms:
            mechanisms.append(row)
    rounds = sorted({e.round for e in entries})
    by_round = [spent([e for e in entries if e.round <= r], delta, accountant=acc)["total"] for r in rounds]
    stated = statements(entries, delta, accountant=acc)
    report = ClientReport(
        name,
        mechanisms,
        {st.party: st.epsilon for st in stated},
        rounds,
        by_round,
        statements=[st.to_json() for st in stated],
        not_covered=not_covered(entries),
    )
    if settings.get("max_epsilon", 0) > 0:
        report.budget_left = max(0.0, settings["max_epsilon"] - report.epsilon["total"])
    return report


def _inference(entries: list[LedgerEntry], settings: dict) -> dict:
    """Split generation's statements: epsilon for one prompt of each session, and all sessions composed
    (a text in every prompt), against the server (`splitfed.client.inference_privacy`)."""
    delta, acc = settings["delta"], settings["accountant"]
    sessions = sorted({e.round for e in entries})
    per = [spent([e for e in entries if e.round == n], delta, accountant=acc).get("server", 0.0) for n in sessions]
    stated = statements(entries, delta, accountant=acc)
    return {
        "unit": "prompt",
        "sessions": len(sessions),
        "epsilon_per_session": [finite(x) for x in per],
        "epsilon_all_sessions": finite(spent(entries, delta, accountant=acc).get("server", 0.0)),
        "statements": [st.to_json() for st in stated if st.party != "total"],
        "not_covered": not_covered(entries),
    }


def plot_epsilon(reports: list[ClientReport], path: str | os.PathLike, *, delta: float, budget: float = 0.0) -> Path:
    """PNG of the total epsilon after each round, one line per client (infinite values are not drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in reports:
        pts = [(x, y) for x, y in zip(r.rounds, r.total_by_round, strict=True) if math.isfinite(y)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=r.client)
        else:
            ax.plot([], [], label=f"{r.client} (infinite: a channel without noise)")
    if budget > 0:
        ax.axhline(budget, linestyle="--", color="gray", label=f"budget {budget:g}")
        ax.set_ylim(top=max(ax.get_ylim()[1], budget * 1.05))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("round")
    ax.set_ylabel(f"epsilon (delta = {delta:g})")
    ax.set_title("privacy spent per client")
    ax.legend()
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
