"""The per-client privacy ledger: every application of a mechanism, appended durably.

One JSON object per line in ``<run.dir>/privacy/<client>.jsonl``.  Each line is written with
one ``write`` on a file opened for appending and then fsynced, so a crash leaves at worst a
torn last line (no trailing newline): `read_ledger` skips that one, and the next `append`
cuts it off before writing.  Any other line that does not parse is damage, and
`read_ledger` refuses the file (`LedgerError`, naming ``file:line``): a ledger that loses
entries would state less than was spent.  The privacy unit of every entry is one training
example of that client (for the RAG ledger: one query answer of a party to one querier).

Every epsilon is stated under one neighbouring relation (`Relation`), and next to the list
of what it does not cover: side information released in the clear (`Disclosure`: lengths,
the example count) and never composed.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitfed.checks import is_int
from splitfed.errors import SplitfedError
from splitfed.privacy.events import (
    DiscreteGaussianEvent,
    GaussianEvent,
    NonPrivateEvent,
    Party,
    PrivacyEvent,
    SampledGaussianEvent,
)


class Relation(enum.Enum):
    """The neighbouring relation a mechanism's noise is calibrated to (or an epsilon is stated under)."""

    ADD_REMOVE = "add/remove"  # D' = D with one example added or removed (DP-SGD: sensitivity C)
    REPLACE_ONE = "replace-one"  # D' = D with one example replaced (local DP: sensitivity 2C)


@dataclass(frozen=True)
class Disclosure:
    """Side information released in the clear, `count` times: never composed into an epsilon,
    always listed next to one (what it does not cover)."""

    count: int = 1

    def __post_init__(self) -> None:
        if not is_int(self.count) or self.count < 1:
            raise ValueError(f"count must be an integer >= 1, got {self.count!r}")


LedgerEvent = PrivacyEvent | Disclosure
_EVENTS = {
    "gaussian": GaussianEvent,
    "discrete_gaussian": DiscreteGaussianEvent,
    "sampled_gaussian": SampledGaussianEvent,
    "non_private": NonPrivateEvent,
    "disclosure": Disclosure,
}
_NAMES = {cls: name for name, cls in _EVENTS.items()}

# The aggregator is the server process in this system (plain FedAvg; under SecAgg too): it sees
# each Poisson batch's size, and which steps were empty, in the cut traffic.
NO_AMPLIFICATION = (
    "no amplification by subsampling: the aggregator is the server process, which sees each Poisson "
    "batch's size and its empty steps in the cut traffic"
)
REPRODUCIBLE_NOISE = "noise reproducible from the shared config (privacy.secure_noise = false)"


class LedgerError(SplitfedError, ValueError):
    """A ledger file that cannot be read as written: it names ``file:line`` and what was wrong."""


@dataclass(frozen=True)
class LedgerEntry:
    round: int
    # activation_ldp, gradient_ldp, dpsgd, raw_activations, raw_gradients, raw_update, rag_scores;
    # disclosures: lengths, sample_count
    mechanism: str
    against: Party
    event: LedgerEvent
    unit: str = "example"
    clip: float | None = None
    relation: Relation = Relation.REPLACE_ONE  # what the event's noise multiplier is calibrated to
    reason: str | None = None  # why a release is non-private, or what a disclosure discloses

    def to_json(self) -> dict[str, Any]:
        event = {"type": _NAMES[type(self.event)], **self.event.__dict__}
        out = {"round": self.round, "mechanism": self.mechanism, "against": self.against.value, "unit": self.unit}
        return {**out, "clip": self.clip, "relation": self.relation.value, "reason": self.reason, "event": event}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LedgerEntry:
        """ValueError, KeyError or TypeError for anything but a complete entry."""
        if not isinstance(obj, dict) or not isinstance(obj.get("event"), dict):
            raise ValueError(f"expected a JSON object with an 'event' object, got {type(obj).__name__}")
        event = dict(obj["event"])
        kind = _EVENTS.get(event.pop("type", None))
        if kind is None:
            raise ValueError(f"unknown event type; known: {', '.join(_EVENTS)}")
        rnd = obj["round"]
        if not is_int(rnd) or rnd < 0:
            raise ValueError(f"round must be an integer >= 0, got {rnd!r}")
        # entries written before relations were recorded: local DP and the non-private ones are
        # replace-one, DP-SGD's multiplier is calibrated to add/remove
        default = Relation.ADD_REMOVE if obj["mechanism"] == "dpsgd" else Relation.REPLACE_ONE
        relation = Relation(obj["relation"]) if "relation" in obj else default
        return cls(
            rnd,
            obj["mechanism"],
            Party(obj["against"]),
            kind(**event),
            obj["unit"],
            obj["clip"],
            relation,
            obj.get("reason"),
        )


class Ledger:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, entries: Iterable[LedgerEntry]) -> None:
        text = "".join(json.dumps(e.to_json(), allow_nan=False) + "\n" for e in entries)
        if not text:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            keep = _complete_prefix(fd, size)
            if keep < size:  # a crash left half a line: cut it off, so mid-file damage always means damage
                os.ftruncate(fd, keep)
                os.fsync(fd)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[LedgerEntry]:
        return read_ledger(self.path)


def read_ledger(path: str | os.PathLike) -> list[LedgerEntry]:
    """The entries of a ledger file.  A torn last line (no trailing newline: a crash mid-write)
    is skipped; any other line that is not a complete entry raises `LedgerError` (``file:line``)."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LedgerError(f"{p}: not UTF-8 text ({exc}); the ledger is damaged") from None
    lines = text.split("\n")
    lines.pop()  # "" when the file ends with a newline, else a line cut short by a crash: skipped
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            out.append(LedgerEntry.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise LedgerError(
                f"{p}:{number}: not a complete ledger entry ({what}); the ledger is damaged, "
                "refusing to state less than was spent"
            ) from None
    return out


@dataclass(frozen=True)
class Statement:
    """One stated epsilon: against whom, under which relation, what it composes and what it leaves out."""

    party: str  # a Party value, or "total" (the server process, which also aggregates)
    relation: Relation
    epsilon: float
    composes: tuple[str, ...]  # the mechanisms composed into it
    not_covered: tuple[str, ...]  # side information released to that party in the clear
    notes: tuple[str, ...] = ()  # how it was accounted (no amplification, reproducible noise)

    def to_json(self) -> dict[str, Any]:
        return {
            "party": self.party,
            "relation": self.relation.value,
            "epsilon": finite(self.epsilon),
            "composes": list(self.composes),
            "not_covered": list(self.not_covered),
            "notes": list(self.notes),
        }


def statements(entries: Iterable[LedgerEntry], delta: float, *, accountant: str = "rdp") -> list[Statement]:
    """Epsilon at `delta` against each party, and ``total`` for all of a client's releases composed.

    Against one party every release is stated under its own relation (local DP: replace-one;
    DP-SGD against the aggregator: add/remove).  ``total`` composes everything the server
    process sees (it also aggregates) under replace-one: an add/remove Gaussian at multiplier
    s is one at s / 2 there.  DP-SGD is accounted without amplification by subsampling
    (`NO_AMPLIFICATION`).  Disclosures are listed in ``not_covered``, never composed.
    """
    entries = list(entries)
    out = []
    for party in Party:
        mine = [e for e in entries if e.against is party]
        if mine:
            relation = _relation_of([e for e in mine if not isinstance(e.event, Disclosure)])
            out.append(_statement(party.value, mine, relation, delta, accountant))
    out.append(_statement("total", entries, Relation.REPLACE_ONE, delta, accountant))
    return out


def spent(entries: Iterable[LedgerEntry], delta: float, *, accountant: str = "rdp") -> dict[str, float]:
    """Epsilon per party and ``total`` (see `statements`, which also names relations and omissions)."""
    return {s.party: s.epsilon for s in statements(entries, delta, accountant=accountant)}


def describe(stated: list[Statement], delta: float) -> str:
    """One line: every epsilon with its relation, then what none of them covers."""
    eps = ", ".join(f"{s.party} {_fmt(s.epsilon)} ({s.relation.value})" for s in stated)
    left = sorted({line.split(":")[0] for s in stated for line in s.not_covered})
    return f"epsilon at delta {delta:g}: {eps}; not covered (released in the clear): {', '.join(left) or 'nothing'}"


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else "inf"


def not_covered(entries: Iterable[LedgerEntry]) -> list[str]:
    """What no epsilon covers, one line per disclosure: ``"lengths -> server: <reason>"``."""
    out = []
    for e in entries:
        if isinstance(e.event, Disclosure):
            line = f"{e.mechanism} -> {e.against.value}: {e.reason or 'released in the clear'}"
            if line not in out:
                out.append(line)
    return out


def _relation_of(entries: list[LedgerEntry]) -> Relation:
    """The relation the entries' own noise is calibrated to; replace-one when they mix."""
    relations = {e.relation for e in entries}
    return relations.pop() if len(relations) == 1 else Relation.REPLACE_ONE


def _statement(party: str, entries: list[LedgerEntry], relation: Relation, delta: float, acc: str) -> Statement:
    releases = [e for e in entries if not isinstance(e.event, Disclosure)]
    events = [_under(e, relation) for e in releases]
    notes = []
    if any(isinstance(e.event, SampledGaussianEvent) or e.mechanism == "dpsgd" for e in releases):
        notes.append(NO_AMPLIFICATION)
    if any(e.relation is not relation for e in releases):
        notes.append(f"add/remove releases converted to {relation.value}: sensitivity doubles, multiplier halves")
    notes += sorted({f"{e.mechanism}: {e.reason}" for e in releases if e.reason})
    composes = tuple(dict.fromkeys(e.mechanism for e in releases))
    eps = compose(events, delta, accountant=acc)
    return Statement(party, relation, eps, composes, tuple(not_covered(entries)), tuple(notes))


def _under(entry: LedgerEntry, relation: Relation) -> PrivacyEvent:
    """The entry's event under `relation`, without amplification by subsampling."""
    event = entry.event
    if isinstance(event, SampledGaussianEvent):
        event = GaussianEvent(event.noise_multiplier, event.count)  # sample rate 1: see NO_AMPLIFICATION
    gaussian = isinstance(event, GaussianEvent | DiscreteGaussianEvent)
    if gaussian and entry.relation is Relation.ADD_REMOVE and relation is Relation.REPLACE_ONE:
        event = dataclasses.replace(event, noise_multiplier=event.noise_multiplier / 2.0)
    if gaussian and entry.relation is Relation.REPLACE_ONE and relation is Relation.ADD_REMOVE:
        raise ValueError(f"{entry.mechanism}: a replace-one release has no add/remove statement here")
    return event


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


def _complete_prefix(fd: int, size: int) -> int:
    """Bytes of the file up to and including its last newline (0 when it has none)."""
    pos, chunk = size, 4096
    while pos > 0:
        start = max(0, pos - chunk)
        data = os.pread(fd, pos - start, start)
        i = data.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def finite(x: float) -> float | None:
    """JSON-friendly epsilon: None stands for infinity."""
    return x if math.isfinite(x) else None
