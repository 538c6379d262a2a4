"""Privacy in real runs: the ledger states every channel, the server gets no loss, the budget stops a client."""

from __future__ import annotations

import json
import math
from pathlib import Path

from splitfed.privacy.accountants import epsilon_of
from splitfed.privacy.events import DiscreteGaussianEvent, GaussianEvent, NonPrivateEvent, Party
from splitfed.privacy.ledger import Disclosure, Ledger, LedgerEntry, read_ledger
from splitfed.privacy.mechanisms import MAX_RELEASE_TV


def test_private_run_records_every_channel(make_run):
    run = make_run(
        clients=1,
        training__rounds=2,
        privacy__enabled=True,
        privacy__activations={"enabled": True, "noise_multiplier": 0.5, "clip": 4.0},
        privacy__gradients={"enabled": True, "noise_multiplier": 4.0, "clip": 0.05, "unit": "token"},
    )
    server, client = run.server(), run.client(0)
    assert run.wait(client) == 0, run.log("client-0") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    entries = read_ledger(run.run_dir / "privacy" / "client-0.jsonl")
    assert [(e.round, e.mechanism) for e in entries] == [(0, "sample_count")] + [
        (r, m) for r in (0, 1) for m in ("lengths", "activation_ldp", "gradient_ldp", "raw_update")
    ]
    hello, lengths, act, grad, update = entries[:5]
    assert hello.event == Disclosure(1) and hello.against is Party.AGGREGATOR
    assert lengths.event == Disclosure(1) and lengths.against is Party.SERVER
    # the client built its tables first: the sampler's slack is the tables' own, far below the any-size bound
    assert act.event == DiscreteGaussianEvent(0.5, 1, act.event.tv) and 0 < act.event.tv < MAX_RELEASE_TV * 1e-6
    assert act.against is Party.SERVER and act.unit == "sequence"
    assert grad.event == DiscreteGaussianEvent(4.0 / math.sqrt(48), 1, grad.event.tv)
    assert 0 < grad.event.tv < MAX_RELEASE_TV * 1e-6
    assert grad.unit == "token" and grad.clip == 0.05
    assert update.event == NonPrivateEvent(1) and update.against is Party.AGGREGATOR
    stated = [m for m in run.metrics("client-0") if m["event"] == "privacy"]
    assert [m["round"] for m in stated] == [0, 1]
    assert 0 < stated[0]["epsilon"]["server"] < stated[1]["epsilon"]["server"] < math.inf
    assert stated[1]["epsilon"]["aggregator"] is None and stated[1]["epsilon"]["total"] is None  # infinite
    assert stated[1]["relation"] == {"server": "replace-one", "aggregator": "replace-one", "total": "replace-one"}
    assert [line.split(":")[0] for line in stated[1]["not_covered"]] == [
        "lengths -> server",
        "sample_count -> aggregator",
    ]
    assert "not covered (released in the clear): lengths -> server, sample_count -> aggregator" in run.log("client-0")
    updates = [m for m in run.metrics("server") if m["event"] == "update"]
    assert updates and all(m["loss"] is None for m in updates)  # the loss stays on the client


def _budget_run(make_run, **extra):
    return make_run(
        clients=3,
        data__partition="dirichlet",
        data__alpha=0.3,
        data__batch_size=8,
        training__rounds=3,
        training__local_steps=4,
        privacy__enabled=True,
        privacy__activations={"enabled": True, "noise_multiplier": 8.0, "clip": 4.0},
        privacy__gradients={"enabled": True, "noise_multiplier": 8.0, "clip": 0.05},
        privacy__dpsgd={"enabled": True, "noise_multiplier": 8.0, "max_grad_norm": 1.0},
        **extra,
    )


# Precision (1 / noise multiplier^2, replace-one, no amplification) a round adds: 4 DP-SGD steps
# at 8 / 2 give 0.25; the two cut channels 2 r / 64 for r releases of the most-used example
# (Poisson: 1 <= r <= 4, at random).  Three rounds stay below 1.2; client-0 starts with 0.73
# spent (an earlier run in its ledger): round 0 fits (<= 1.105), round 1 cannot (>= 1.2925).
PRIOR, BUDGET = 0.73, 1.2


def test_budget_stops_one_client_and_the_others_finish(make_run, capsys):
    from splitfed.cli.main import main

    # the cut channels are discrete Gaussian releases: the total is an RDP composition
    budget = epsilon_of([GaussianEvent(BUDGET**-0.5)], 1e-5, accountant="rdp")
    run = _budget_run(make_run, privacy__max_epsilon=budget)
    prior = LedgerEntry(0, "activation_ldp", Party.SERVER, GaussianEvent(PRIOR**-0.5), "sequence", 4.0)
    Ledger(run.run_dir / "privacy" / "client-0.jsonl").append([prior])
    server = run.server()
    clients = [run.client(k) for k in range(3)]
    for k, c in enumerate(clients):
        assert run.wait(c, 240) == 0, run.log(f"client-{k}") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    assert "stopped early: privacy budget: round 1 would bring epsilon to" in run.log("client-0")
    stop = [m for m in run.metrics("client-0") if m["event"] == "budget_stop"]
    assert len(stop) == 1 and stop[0]["round"] == 1 and stop[0]["epsilon"] > budget
    for k in (1, 2):
        stated = [m["epsilon"]["total"] for m in run.metrics(f"client-{k}") if m["event"] == "privacy"]
        assert len(stated) == 3 and stated == sorted(stated) and stated[-1] <= budget
    rounds = [m for m in run.metrics("server") if m["event"] == "round"]
    assert [r["participants"] for r in rounds] == [["client-0", "client-1", "client-2"]] + [
        ["client-1", "client-2"]
    ] * 2
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    # the ledger never records more than the budget allowed, and the report says so
    assert main(["privacy", "report", str(run.run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    by_client = {c["client"]: c for c in report["clients"]}
    assert by_client["client-0"]["rounds"] == [0] and by_client["client-0"]["epsilon"]["total"] <= budget
    assert all(c["budget_left"] >= 0 for c in by_client.values()) and Path(report["plot"]).is_file()
    mechanisms = {m["mechanism"] for m in by_client["client-1"]["mechanisms"]}
    assert mechanisms == {"activation_ldp", "gradient_ldp", "dpsgd"}
    total = by_client["client-1"]["statements"][-1]
    assert total["relation"] == "replace-one" and any("no amplification" in n for n in total["notes"])
    assert [line.split(":")[0] for line in by_client["client-1"]["not_covered"]] == [
        "sample_count -> aggregator",
        "lengths -> server",
    ]
