"""A party's score noise as a privacy mechanism, with a ledger and a budget per querier.

Each answered ``rag_score`` request releases one noised score for every stored document.
Scores of unit vectors move by at most 2 when one document changes, so one answer is the
Gaussian mechanism with noise multiplier ``noise_std / 2`` for every document (the privacy
unit); answers to the same querier compose.  Documents a querier then *fetches* are
disclosed by design and are outside this statement: epsilon bounds what the scores reveal
about the documents that are not handed over.  Without noise every answer is a
non-private release.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from splitfed.privacy.events import GaussianEvent, NonPrivateEvent, Party
from splitfed.privacy.ledger import Ledger, LedgerEntry, spent

SCORE_SENSITIVITY = 2.0


class BudgetExceeded(Exception):
    """Answering would take a querier past the party's ``max_epsilon``."""


class ScoreBudget:
    def __init__(
        self,
        ledger_dir: str | os.PathLike,
        *,
        noise_std: float,
        delta: float = 1e-5,
        max_epsilon: float = 0.0,
        accountant: str = "rdp",
    ):
        if max_epsilon > 0 and noise_std <= 0:
            raise ValueError("max_epsilon needs noise_std > 0: noiseless scores have an infinite epsilon")
        self.dir, self.delta, self.max_epsilon, self.accountant = Path(ledger_dir), delta, max_epsilon, accountant
        nm = noise_std / SCORE_SENSITIVITY
        self.event = GaussianEvent(nm) if noise_std > 0 else NonPrivateEvent()

    def ledger(self, querier: str) -> Ledger:
        return Ledger(self.dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', querier)}.jsonl")

    def epsilon(self, querier: str, *, more: int = 0) -> float:
        """Epsilon spent on `querier` so far (plus `more` answers)."""
        entries = self.ledger(querier).entries()
        entries += [self._entry(len(entries))] * more
        return spent(entries, self.delta, accountant=self.accountant)["total"]

    def charge(self, querier: str) -> float:
        """Record one answer to `querier` before it is given; refuse it if over budget."""
        if self.max_epsilon > 0:
            eps = self.epsilon(querier, more=1)
            if eps > self.max_epsilon:
                raise BudgetExceeded(
                    f"privacy budget of querier {querier!r} exhausted: one more answer would bring epsilon to "
                    f"{eps:.3g} > max_epsilon = {self.max_epsilon:g} (delta {self.delta:g})"
                )
        ledger = self.ledger(querier)
        ledger.append([self._entry(len(ledger.entries()))])
        return self.epsilon(querier)

    def _entry(self, index: int) -> LedgerEntry:
        return LedgerEntry(index, "rag_scores", Party.QUERIER, self.event, unit="document")
