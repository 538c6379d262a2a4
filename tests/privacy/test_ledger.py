"""The privacy ledger: round trip, resume appends, a torn last line is skipped."""

from splitfed.privacy.events import GaussianEvent, NonPrivateEvent, Party, SampledGaussianEvent
from splitfed.privacy.ledger import Ledger, LedgerEntry, read_ledger


def _entries(rnd):
    return [
        LedgerEntry(rnd, "activation_ldp", Party.SERVER, GaussianEvent(1.5, 2), "sequence", 1.0),
        LedgerEntry(rnd, "dpsgd", Party.AGGREGATOR, SampledGaussianEvent(1.1, 0.01, 10)),
        LedgerEntry(rnd, "raw_gradients", Party.SERVER, NonPrivateEvent(2)),
    ]


def test_round_trip_and_resume(tmp_path):
    path = tmp_path / "privacy" / "client-0.jsonl"
    Ledger(path).append(_entries(0))
    Ledger(path).append(_entries(1))  # a resumed run opens the same file and continues it
    got = read_ledger(path)
    assert got == _entries(0) + _entries(1)


def test_torn_last_line_is_skipped_and_kept_apart(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path)
    ledger.append(_entries(0)[:1])
    with open(path, "a") as f:
        f.write('{"round": 1, "mechanism": "activ')  # a crash in the middle of a write
    assert ledger.entries() == _entries(0)[:1]
    ledger.append(_entries(2)[:1])
    assert ledger.entries() == _entries(0)[:1] + _entries(2)[:1]
