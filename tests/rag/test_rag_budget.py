"""A party's score noise is accounted per querier; a querier over budget is refused with a clear error."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from splitfed_testing import DIM, free_port, random_store

from splitfed.rag.budget import BudgetExceeded, ScoreBudget
from splitfed.rag.querier import PartyAddress, Querier
from splitfed.transport.keys import create_party_keys, install_public_keys


def test_budget_composes_answers_and_refuses_before_answering(tmp_path):
    from splitfed.privacy.calibrate import gaussian_composition_epsilon
    from splitfed.privacy.events import GaussianEvent

    budget = ScoreBudget(tmp_path, noise_std=4.0, delta=1e-5, max_epsilon=6.0)
    spent = [budget.charge("client-0") for _ in range(3)]
    exact = gaussian_composition_epsilon([GaussianEvent(2.0, 3)], 1e-5)  # three answers at noise multiplier 2
    assert spent == sorted(spent) and spent[-1] == pytest.approx(exact)
    assert budget.epsilon("client-1") == 0.0  # ledgers are per querier
    n = 3
    while True:
        try:
            budget.charge("client-0")
            n += 1
        except BudgetExceeded as exc:
            assert "privacy budget of querier 'client-0' exhausted" in str(exc)
            break
    assert budget.epsilon("client-0") <= 6.0 < budget.epsilon("client-0", more=1)
    assert len(budget.ledger("client-0").entries()) == n  # the refused answer was not recorded
    with pytest.raises(ValueError, match="needs noise_std > 0"):
        ScoreBudget(tmp_path, noise_std=0.0, max_epsilon=1.0)
    assert ScoreBudget(tmp_path / "x", noise_std=0.0).charge("q") == float("inf")


def test_querier_over_budget_gets_a_refusal_not_an_answer(tmp_path):
    store = random_store(64, np.random.default_rng(0))
    store.save(tmp_path / "p0")
    keys = tmp_path / "keys"
    public = create_party_keys(keys, "p0", sign=False).path
    querier_key = create_party_keys(tmp_path / "querier", "client-0", sign=False).path
    install_public_keys(keys / "allowed", [querier_key])
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp_path / "p0.toml"
    cfg.write_text(
        f'name = "p0"\nindex = "{tmp_path / "p0"}"\nendpoint = "{endpoint}"\nkeys_dir = "{keys}"\n'
        "noise_std = 0.5\nmax_epsilon = 40.0\n"
    )
    log = open(tmp_path / "p0.log", "wb")  # noqa: SIM115
    party = subprocess.Popen(
        [sys.executable, "-m", "splitfed.cli.main", "rag", "party", "--config", str(cfg)], stdout=log, stderr=log
    )
    try:
        querier = Querier(
            [PartyAddress("p0", endpoint, public)], keys_dir=tmp_path / "querier", name="client-0", timeout_s=60
        )
        q = np.ones(DIM) / np.sqrt(DIM)
        answered = 0
        for _ in range(10):
            res = querier.search_vector(q, k=3)
            if not res.hits:
                break
            answered += 1
        querier.close()
        assert 1 <= answered < 10
        assert res.contributed == [] and "budget: privacy budget of querier 'client-0' exhausted" in res.failed["p0"]
        ledger = (tmp_path / "p0-ledger" / "client-0.jsonl").read_text().splitlines()
        assert len(ledger) == answered
    finally:
        party.kill()
        party.wait()
