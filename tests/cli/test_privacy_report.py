"""`splitfed privacy report` on ledgers written by the library: text, JSON, PNG, refusals."""

import json

from splitfed.cli.main import main
from splitfed.privacy.events import GaussianEvent, NonPrivateEvent, Party, SampledGaussianEvent
from splitfed.privacy.ledger import Ledger, LedgerEntry
from splitfed.privacy.report import write_settings


def _run_dir(tmp_path):
    root = tmp_path / "run" / "privacy"
    write_settings(root, delta=1e-5, accountant="rdp", max_epsilon=10.0)
    for rnd in (0, 1):
        Ledger(root / "client-0.jsonl").append(
            [
                LedgerEntry(rnd, "activation_ldp", Party.SERVER, GaussianEvent(2.0, 1), "sequence", 1.0),
                LedgerEntry(rnd, "gradient_ldp", Party.SERVER, GaussianEvent(2.0, 1), "token", 0.1),
                LedgerEntry(rnd, "dpsgd", Party.AGGREGATOR, SampledGaussianEvent(1.0, 0.05, 10), clip=1.0),
            ]
        )
        Ledger(root / "client-1.jsonl").append([LedgerEntry(rnd, "raw_update", Party.AGGREGATOR, NonPrivateEvent())])
    return tmp_path / "run"


def test_report_text_json_and_plot(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["privacy", "report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "privacy report: delta 1e-05, accountant rdp, budget 10" in out
    assert "client-1: epsilon total inf" in out and "(infinite: a channel above was released without noise)" in out
    assert (run / "privacy" / "epsilon.png").stat().st_size > 1000
    assert main(["privacy", "report", str(run), "--json", "--no-plot", "--delta", "1e-6"]) == 0
    r = json.loads(capsys.readouterr().out)
    c0, c1 = r["clients"]
    assert r["settings"]["delta"] == 1e-6 and r["plot"] is None
    assert c0["rounds"] == [0, 1] and c0["total_by_round"][0] < c0["total_by_round"][1] == c0["epsilon"]["total"]
    assert c0["epsilon"]["server"] < c0["epsilon"]["total"] and 0 < c0["budget_left"] < 10
    assert c1["epsilon"] == {"aggregator": None, "total": None} and c1["budget_left"] == 0


def test_report_refuses_a_run_without_ledgers(tmp_path, capsys):
    assert main(["privacy", "report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no privacy ledgers (was the run started with privacy.enabled = true?)" in err[0]
