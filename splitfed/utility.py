"""The utility floor: a fine-tuned model is worth something only if it beats the public base model.

Anyone can download the base model; a run (private or not) whose held-out perplexity is not
below the base model's, evaluated the same way (same held-out data, same tokenization and
truncation), bought no utility, and says so.  Leaf module: no torch, so readers of a run
directory (`splitfed privacy report`) import it cheaply.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from splitfed.checks import is_number


@dataclass(frozen=True)
class Utility:
    """Held-out perplexity of the public base model and of the fine-tuned model."""

    base_ppl: float
    tuned_ppl: float

    @property
    def beats_base(self) -> bool:
        """Strictly lower perplexity than the base model (a NaN or infinite one never beats it)."""
        return math.isfinite(self.tuned_ppl) and self.tuned_ppl < self.base_ppl

    def summary(self) -> str:
        """``held-out perplexity 32.67 (public base model) -> 25.85 (fine-tuned)``."""
        return f"held-out perplexity {self.base_ppl:.2f} (public base model) -> {self.tuned_ppl:.2f} (fine-tuned)"

    def warning(self) -> str | None:
        """The one-line statement when the fine-tuned model does not beat the base; else None."""
        if self.beats_base:
            return None
        return (
            f"WARNING: the fine-tuned model (ppl {self.tuned_ppl:.2f}) does not beat the public base model "
            f"(ppl {self.base_ppl:.2f}): this run bought no utility"
        )

    def to_json(self) -> dict:
        return {"base_ppl": _finite(self.base_ppl), "tuned_ppl": _finite(self.tuned_ppl), "beats_base": self.beats_base}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def utility_from_summary(summary: dict) -> Utility | None:
    """From a client's run summary (its ``done`` metrics event): ``ppl_before`` is the base model."""
    base, tuned = summary.get("ppl_before"), summary.get("ppl_after")
    if not is_number(base) or tuned is None:
        return None
    return Utility(float(base), math.nan if not is_number(tuned) else float(tuned))


def client_utility(run_dir: str | os.PathLike, client: str) -> Utility | None:
    """What ``<run_dir>/metrics/<client>.jsonl`` records (its last ``done`` event); None if nothing."""
    import json

    path = Path(run_dir) / "metrics" / f"{client}.jsonl"
    if not path.is_file():
        return None
    done = None
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a crash: the rest of the file still counts
            if isinstance(record, dict) and record.get("event") == "done":
                done = record
    return utility_from_summary(done) if done is not None else None
