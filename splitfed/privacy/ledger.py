"""The per-client privacy ledger: every application of a mechanism, appended durably.

One JSON object per line in ``<run.dir>/privacy/<client>.jsonl``.  Each line is written with
one ``write`` on a file opened for appending and then fsynced, so a crash leaves at worst a
truncated last line, which `read_ledger` skips; a resumed run appends to the same file.
The privacy unit of every entry is one training example of that client (for the RAG
ledger: one query answer of a party to one querier).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitfed.privacy.events import (
    DiscreteGaussianEvent,
    GaussianEvent,
    NonPrivateEvent,
    Party,
    PrivacyEvent,
    SampledGaussianEvent,
)

_EVENTS = {
    "gaussian": GaussianEvent,
    "discrete_gaussian": DiscreteGaussianEvent,
    "sampled_gaussian": SampledGaussianEvent,
    "non_private": NonPrivateEvent,
}
_NAMES = {cls: name for name, cls in _EVENTS.items()}


@dataclass(frozen=True)
class LedgerEntry:
    round: int
    mechanism: str  # activation_ldp, gradient_ldp, dpsgd, raw_activations, raw_gradients, raw_update, rag_scores
    against: Party
    event: PrivacyEvent
    unit: str = "example"
    clip: float | None = None

    def to_json(self) -> dict[str, Any]:
        event = {"type": _NAMES[type(self.event)], **self.event.__dict__}
        out = {"round": self.round, "mechanism": self.mechanism, "against": self.against.value, "unit": self.unit}
        return {**out, "clip": self.clip, "event": event}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LedgerEntry:
        event = dict(obj["event"])
        kind = _EVENTS[event.pop("type")]
        return cls(obj["round"], obj["mechanism"], Party(obj["against"]), kind(**event), obj["unit"], obj["clip"])


class Ledger:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, entries: Iterable[LedgerEntry]) -> None:
        text = "".join(json.dumps(e.to_json(), allow_nan=False) + "\n" for e in entries)
        if not text:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size and not _ends_with_newline(self.path):
                text = "\n" + text  # a crash left half a line: keep it apart from what follows
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[LedgerEntry]:
        return read_ledger(self.path)


def read_ledger(path: str | os.PathLike) -> list[LedgerEntry]:
    """The complete entries of a ledger file (a truncated or corrupt line is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(LedgerEntry.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def spent(entries: Iterable[LedgerEntry], delta: float, *, accountant: str = "rdp") -> dict[str, float]:
    """Epsilon at `delta` against each party, and ``total`` for all of a client's releases composed.

    In this system the server also aggregates (plain FedAvg), so the server process sees
    both the cut traffic and the adapter updates: ``total`` is the statement against it.
    """
    entries = list(entries)
    out = {}
    for party in Party:
        events = [e.event for e in entries if e.against is party]
        if events:
            out[party.value] = compose(events, delta, accountant=accountant)
    out["total"] = compose([e.event for e in entries], delta, accountant=accountant)
    return out


def compose(events: list[PrivacyEvent], delta: float, *, accountant: str = "rdp") -> float:
    """Epsilon of `events` composed: exact when all are unsampled Gaussian releases (the local-DP
    channels: the same analytic calibration that set their noise), else the named accountant."""
    from splitfed.privacy.accountants import epsilon_of
    from splitfed.privacy.calibrate import gaussian_composition_epsilon

    if not events:
        return 0.0
    if all(isinstance(e, GaussianEvent) for e in events):
        return gaussian_composition_epsilon(events, delta)
    return epsilon_of(events, delta, accountant=accountant)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def finite(x: float) -> float | None:
    """JSON-friendly epsilon: None stands for infinity."""
    return x if math.isfinite(x) else None
