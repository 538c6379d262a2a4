"""The privacy ledger: round trip, resume appends, a torn last line, damage refused, relations."""

import json
import math

import pytest

from splitfed.privacy.calibrate import analytic_gaussian_epsilon
from splitfed.privacy.events import GaussianEvent, NonPrivateEvent, Party, SampledGaussianEvent
from splitfed.privacy.ledger import (
    NO_AMPLIFICATION,
    Disclosure,
    Ledger,
    LedgerEntry,
    LedgerError,
    Relation,
    read_ledger,
    spent,
    statements,
)


def _entries(rnd):
    return [
        LedgerEntry(rnd, "activation_ldp", Party.SERVER, GaussianEvent(1.5, 2), "sequence", 1.0),
        LedgerEntry(rnd, "dpsgd", Party.AGGREGATOR, SampledGaussianEvent(1.1, 0.01, 10), relation=Relation.ADD_REMOVE),
        LedgerEntry(rnd, "raw_gradients", Party.SERVER, NonPrivateEvent(2)),
        LedgerEntry(rnd, "lengths", Party.SERVER, Disclosure(2), reason="the attention mask"),
    ]


def test_round_trip_and_resume(tmp_path):
    path = tmp_path / "privacy" / "client-0.jsonl"
    Ledger(path).append(_entries(0))
    Ledger(path).append(_entries(1))  # a resumed run opens the same file and continues it
    got = read_ledger(path)
    assert got == _entries(0) + _entries(1)


def test_torn_last_line_is_skipped_and_cut_off_by_the_next_append(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path)
    ledger.append(_entries(0)[:1])
    with open(path, "a") as f:
        f.write('{"round": 1, "mechanism": "activ')  # a crash in the middle of a write
    assert ledger.entries() == _entries(0)[:1]
    ledger.append(_entries(2)[:1])
    assert ledger.entries() == _entries(0)[:1] + _entries(2)[:1]
    assert "activ\n" not in path.read_text() and path.read_text().endswith("\n")


def test_a_torn_only_line_is_cut_off_too(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"round": 0')
    assert read_ledger(path) == []
    Ledger(path).append(_entries(0))
    assert read_ledger(path) == _entries(0)


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ('{"round": 1, "mechanism": "activ', "not a complete ledger entry"),
        ("[1, 2]", "expected a JSON object"),
        (
            '{"round": 0, "mechanism": "x", "against": "server", "unit": "example", "clip": null, "event": {}}',
            "unknown",
        ),
        (
            '{"round": 0, "mechanism": "x", "against": "nobody", "unit": "example", "clip": null, '
            '"event": {"type": "non_private", "count": 1}}',
            "'nobody' is not a valid Party",
        ),
        (
            '{"round": 0, "mechanism": "x", "against": "server", "unit": "example", "clip": null, '
            '"event": {"type": "gaussian", "noise_multiplier": -1, "count": 1}}',
            "noise_multiplier must be",
        ),
        (
            '{"round": 0, "mechanism": "x", "against": "server", "clip": null, '
            '"event": {"type": "non_private", "count": 1}}',
            "missing key 'unit'",
        ),
        ("", "not a complete ledger entry"),
    ],
)
def test_a_damaged_middle_line_is_refused_naming_file_and_line(tmp_path, line, what):
    path = tmp_path / "l.jsonl"
    Ledger(path).append(_entries(0)[:1])
    with open(path, "a") as f:
        f.write(line + "\n")
    Ledger(path).append(_entries(1)[:1])
    with pytest.raises(LedgerError, match=f"^{path}:2: ") as err:
        read_ledger(path)
    assert what in str(err.value) and "\n" not in str(err.value)


def test_entries_written_before_relations_load_with_the_relation_of_their_mechanism(tmp_path):
    old = {"round": 0, "against": "aggregator", "unit": "example", "clip": 1.0}
    old_dpsgd = {
        **old,
        "mechanism": "dpsgd",
        "event": {"type": "sampled_gaussian", "noise_multiplier": 1.0, "sample_rate": 0.1, "count": 1},
    }
    old_ldp = {
        **old,
        "mechanism": "activation_ldp",
        "against": "server",
        "event": {"type": "gaussian", "noise_multiplier": 1.0, "count": 1},
    }
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps(old_dpsgd) + "\n" + json.dumps(old_ldp) + "\n")
    dpsgd, ldp = read_ledger(path)
    assert dpsgd.relation is Relation.ADD_REMOVE and ldp.relation is Relation.REPLACE_ONE and ldp.reason is None


def test_every_statement_names_its_relation_and_dpsgd_gets_no_amplification():
    entries = [
        LedgerEntry(0, "sample_count", Party.AGGREGATOR, Disclosure(), reason="n_samples"),
        LedgerEntry(0, "lengths", Party.SERVER, Disclosure(3), reason="mask"),
        LedgerEntry(0, "activation_ldp", Party.SERVER, GaussianEvent(3.0, 1), "sequence", 1.0),
        LedgerEntry(0, "dpsgd", Party.AGGREGATOR, SampledGaussianEvent(8.0, 0.01, 4), relation=Relation.ADD_REMOVE),
    ]
    server, aggregator, total = statements(entries, 1e-5)
    assert (server.party, server.relation, server.composes) == ("server", Relation.REPLACE_ONE, ("activation_ldp",))
    assert server.epsilon == pytest.approx(analytic_gaussian_epsilon(3.0, 1e-5))
    # 4 steps at 8 with sample rate 1: one Gaussian at 8 / 2 under add/remove
    assert aggregator.relation is Relation.ADD_REMOVE and NO_AMPLIFICATION in aggregator.notes
    assert aggregator.epsilon == pytest.approx(analytic_gaussian_epsilon(4.0, 1e-5))
    # replace-one: DP-SGD's sensitivity doubles, its multiplier halves to 4 per step (2 for all 4)
    assert total.relation is Relation.REPLACE_ONE and any("converted to replace-one" in n for n in total.notes)
    assert total.epsilon == pytest.approx(analytic_gaussian_epsilon((1 / 9 + 1 / 4) ** -0.5, 1e-5))
    assert total.not_covered == ("sample_count -> aggregator: n_samples", "lengths -> server: mask")
    assert server.not_covered == ("lengths -> server: mask",)
    assert spent(entries, 1e-5) == {"server": server.epsilon, "aggregator": aggregator.epsilon, "total": total.epsilon}


def test_a_non_private_release_states_its_reason():
    why = "noise reproducible from the shared config (privacy.secure_noise = false)"
    entries = [LedgerEntry(0, "activation_ldp", Party.SERVER, NonPrivateEvent(1), "sequence", 1.0, reason=why)]
    (server, total) = statements(entries, 1e-5)
    assert (
        math.isinf(server.epsilon)
        and f"activation_ldp: {why}" in server.notes
        and f"activation_ldp: {why}" in total.notes
    )
