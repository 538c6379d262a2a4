"""A party's score noise as a privacy mechanism, with a ledger and a budget per querier.

Each answered ``rag_score`` request releases one noised score for every stored document.
The scores are integers on a public grid (`crypto.he.grid`): ``s = <q_int, e_int>`` moves by
at most ``Delta = 2 B_q B_e`` when one document is replaced (rounding included), and the
party adds discrete Gaussian noise of sigma ``noise_multiplier * Delta``, so one answer is the
discrete Gaussian mechanism with that noise multiplier for every document (the privacy unit),
plus the sampler's TV slack ``tv`` (``rows * sampler.tv``, charged to delta by the
accountant); answers to the same querier compose.  The statement is about the integer the
querier rounds to (``s + z``) and assumes an honest, unit-norm query quantised on the grid;
the CKKS error of the unrounded decryption is outside it.  Documents a querier then
*fetches* are disclosed by design and are outside this statement too: epsilon bounds what
the scores reveal about the documents that are not handed over.  Without noise every answer
is a non-private release.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from splitfed.errors import UsageError
from splitfed.privacy.events import DiscreteGaussianEvent, NonPrivateEvent, Party
from splitfed.privacy.ledger import Ledger, LedgerEntry, spent


class BudgetExceeded(Exception):
    """Answering would take a querier past the party's ``max_epsilon``."""


class ScoreBudget:
    """Per-querier ledgers of one party's answers.

    ``noise_multiplier`` (0 = no noise) and ``tv`` describe one answer: `ScoreNoise`'s
    ``noise_multiplier`` and ``tv(rows)`` (see `splitfed.rag.party.score_noise`).
    """

    def __init__(
        self,
        ledger_dir: str | os.PathLike,
        *,
        noise_multiplier: float,
        tv: float = 0.0,
        delta: float = 1e-5,
        max_epsilon: float = 0.0,
        accountant: str = "rdp",
    ):
        if max_epsilon > 0 and noise_multiplier <= 0:
            raise UsageError("max_epsilon needs noise (noise_std > 0): noiseless scores have an infinite epsilon")
        self.dir, self.delta, self.max_epsilon, self.accountant = Path(ledger_dir), delta, max_epsilon, accountant
        self.event = DiscreteGaussianEvent(noise_multiplier, tv=tv) if noise_multiplier > 0 else NonPrivateEvent()

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
