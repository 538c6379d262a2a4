"""A party's score noise is accounted per querier; a querier over budget is refused with a clear error."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from splitfed_testing import DIM, free_port, random_store

from splitfed.rag.budget import BudgetExceeded, ScoreBudget
from splitfed.rag.querier import PartyAddress, Querier
from splitfed.transport.keys import create_party_keys, install_public_keys


def test_budget_composes_answers_and_refuses_before_answering(tmp_path):
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    from splitfed.privacy.accountants import OPACUS_ORDERS
    from splitfed.privacy.events import DiscreteGaussianEvent

    budget = ScoreBudget(tmp_path, noise_multiplier=2.0, tv=1e-30, delta=1e-5, max_epsilon=6.0)
    assert budget.event == DiscreteGaussianEvent(2.0, 1, 1e-30)
    spent = [budget.charge("client-0") for _ in range(3)]
    independent = RdpAccountant(orders=list(OPACUS_ORDERS))  # three answers at noise multiplier 2, by RDP
    independent.compose(dp_accounting.GaussianDpEvent(2.0), 3)
    assert spent == sorted(spent) and spent[-1] == pytest.approx(independent.get_epsilon(1e-5), rel=1e-9)
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
    with pytest.raises(ValueError, match="needs noise"):
        ScoreBudget(tmp_path, noise_multiplier=0.0, max_epsilon=1.0)
    assert ScoreBudget(tmp_path / "x", noise_multiplier=0.0).charge("q") == float("inf")
    # the sampler's slack is charged: a large tv costs delta, hence epsilon
    slack = ScoreBudget(tmp_path / "tv", noise_multiplier=2.0, tv=1e-6, delta=1e-5)
    assert slack.charge("q") > ScoreBudget(tmp_path / "no-tv", noise_multiplier=2.0, delta=1e-5).charge("q")


def test_a_partys_score_event_by_hand(tmp_path):
    """noise_std = 0.5 at dim 384: nm 0.25, grid 2^-9 x 2^-8, Delta = 2 B_q B_e, tv = rows * sampler.tv."""
    from crypto.dgauss import cdt_sampler
    from splitfed.privacy.events import DiscreteGaussianEvent
    from splitfed.rag.config import PartyConfig
    from splitfed.rag.party import Party

    random_store(64, np.random.default_rng(0)).save(tmp_path / "p0")
    cfg = PartyConfig("p0", str(tmp_path / "p0"), f"tcp://127.0.0.1:{free_port()}", noise_std=0.5, max_epsilon=40.0)
    party = Party.from_config(cfg, insecure=True)
    try:
        sqrt_d = Fraction(math.isqrt(384 << 40) + 1, 1 << 20)  # >= sqrt(384)
        sensitivity = 2 * (2**9 + sqrt_d / 2) * (2**8 + sqrt_d / 2)  # ~277,390: sigma ~69,350 <= 2^17 steps
        sigma2 = (Fraction(1, 4) * sensitivity) ** 2
        assert (party.noise.grid.query_bits, party.noise.grid.doc_bits) == (9, 8)
        assert party.noise.sigma2 == sigma2
        assert party.budget.event == DiscreteGaussianEvent(0.25, 1, 64 * cdt_sampler(sigma2).tv)
        assert 0 < party.budget.event.tv < 64 * 2.0**-100
    finally:
        party.socket.close()


@pytest.mark.process
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
            assert all((h.score * 2**17).is_integer() for h in res.hits)  # rounded to the party's grid
            answered += 1
        querier.close()
        assert 1 <= answered < 10
        assert res.contributed == [] and "budget: privacy budget of querier 'client-0' exhausted" in res.failed["p0"]
        ledger = (tmp_path / "p0-ledger" / "client-0.jsonl").read_text().splitlines()
        assert len(ledger) == answered
    finally:
        party.kill()
        party.wait()
