"""`splitfed privacy report` states each client's utility next to its epsilon: the fine-tuned
held-out perplexity against the public base model's, read from the client's metrics."""

import json

from splitfed.cli.main import main
from splitfed.privacy.events import GaussianEvent, Party
from splitfed.privacy.ledger import Ledger, LedgerEntry
from splitfed.privacy.report import privacy_report, write_settings


def _run_dir(tmp_path, done: dict[str, dict]):
    run = tmp_path / "run"
    write_settings(run / "privacy", delta=1e-5, accountant="rdp", max_epsilon=0.0)
    (run / "metrics").mkdir(parents=True)
    for name in ("client-0", "client-1", "client-2"):
        Ledger(run / "privacy" / f"{name}.jsonl").append(
            [LedgerEntry(0, "activation_ldp", Party.SERVER, GaussianEvent(2.0, 1), "sequence", 1.0)]
        )
        if name in done:
            events = [{"event": "eval", "round": -1, "model": "base"}, {"event": "done", **done[name]}]
            (run / "metrics" / f"{name}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


def test_report_states_utility_against_the_public_base_model(tmp_path, capsys):
    run = _run_dir(
        tmp_path,
        {"client-0": {"ppl_before": 32.67, "ppl_after": 33.03}, "client-1": {"ppl_before": 32.67, "ppl_after": 26.78}},
    )
    _, reports = privacy_report(run)
    assert [r.utility for r in reports] == [
        {"base_ppl": 32.67, "tuned_ppl": 33.03, "beats_base": False},
        {"base_ppl": 32.67, "tuned_ppl": 26.78, "beats_base": True},
        None,
    ]
    assert main(["privacy", "report", str(run), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert (
        "held-out perplexity 33.03 fine-tuned vs 32.67 public base model: does NOT beat the public base model: "
        "this privacy bought no utility"
    ) in out
    assert "held-out perplexity 26.78 fine-tuned vs 32.67 public base model: beats the base model" in out
    assert "utility not recorded" in out.split("client-2:")[1]
    assert main(["privacy", "report", str(run), "--json", "--no-plot"]) == 0
    clients = json.loads(capsys.readouterr().out)["clients"]
    assert clients[0]["utility"]["beats_base"] is False and clients[2]["utility"] is None
