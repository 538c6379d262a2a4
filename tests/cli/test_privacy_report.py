"""`splitfed privacy report` on ledgers written by the library: text, JSON, PNG, refusals."""

import json
import math

from splitfed.cli.main import main
from splitfed.privacy.calibrate import analytic_gaussian_epsilon
from splitfed.privacy.events import GaussianEvent, NonPrivateEvent, Party, SampledGaussianEvent
from splitfed.privacy.ledger import Disclosure, Ledger, LedgerEntry, Relation
from splitfed.privacy.report import write_settings


def _run_dir(tmp_path):
    root = tmp_path / "run" / "privacy"
    write_settings(root, delta=1e-5, accountant="rdp", max_epsilon=10.0)
    Ledger(root / "client-0.jsonl").append(
        [LedgerEntry(0, "sample_count", Party.AGGREGATOR, Disclosure(), reason="n_samples at HELLO")]
    )
    for rnd in (0, 1):
        dpsgd = SampledGaussianEvent(20.0, 0.05, 10)
        Ledger(root / "client-0.jsonl").append(
            [
                LedgerEntry(rnd, "lengths", Party.SERVER, Disclosure(1), reason="attention mask in the clear"),
                LedgerEntry(rnd, "activation_ldp", Party.SERVER, GaussianEvent(2.0, 1), "sequence", 1.0),
                LedgerEntry(rnd, "gradient_ldp", Party.SERVER, GaussianEvent(2.0, 1), "token", 0.1),
                LedgerEntry(rnd, "dpsgd", Party.AGGREGATOR, dpsgd, clip=1.0, relation=Relation.ADD_REMOVE),
            ]
        )
        Ledger(root / "client-1.jsonl").append([LedgerEntry(rnd, "raw_update", Party.AGGREGATOR, NonPrivateEvent())])
    return tmp_path / "run"


def test_report_text_json_and_plot(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["privacy", "report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "privacy report: delta 1e-05, accountant rdp, budget 10" in out
    assert "client-1: epsilon total inf" in out and "(infinite: a channel above was released without noise" in out
    # no amplification; the server's 4 releases at 2 are one at 1; 20 DP-SGD steps at 20 are one at
    # 20 / sqrt(20) under add/remove and, at sensitivity 2C, one at 10 / sqrt(20) under replace-one
    server = analytic_gaussian_epsilon(1.0, 1e-5)
    aggregator = analytic_gaussian_epsilon(20 / math.sqrt(20), 1e-5)
    total = analytic_gaussian_epsilon((4 / 2.0**2 + 20 / 10.0**2) ** -0.5, 1e-5)
    assert f"client-0: epsilon total {total:.4g} (server {server:.4g}, aggregator {aggregator:.4g})" in out
    assert f"against server: epsilon {server:.4g} under replace-one, composing activation_ldp, gradient_ldp" in out
    assert f"against aggregator: epsilon {aggregator:.4g} under add/remove, composing dpsgd" in out
    assert "note: no amplification by subsampling: the aggregator is the server process" in out
    assert "not covered by any epsilon (released in the clear): \n    sample_count -> aggregator" in out
    assert "    lengths -> server: attention mask in the clear" in out
    assert (run / "privacy" / "epsilon.png").stat().st_size > 1000
    assert main(["privacy", "report", str(run), "--json", "--no-plot", "--delta", "1e-6"]) == 0
    r = json.loads(capsys.readouterr().out)
    c0, c1 = r["clients"]
    assert r["settings"]["delta"] == 1e-6 and r["plot"] is None
    assert c0["rounds"] == [0, 1] and c0["total_by_round"][0] < c0["total_by_round"][1] == c0["epsilon"]["total"]
    assert c0["epsilon"]["server"] < c0["epsilon"]["total"] and 0 < c0["budget_left"] < 10
    assert c1["epsilon"] == {"aggregator": None, "total": None} and c1["budget_left"] == 0
    assert c0["not_covered"] == [
        "sample_count -> aggregator: n_samples at HELLO",
        "lengths -> server: attention mask in the clear",
    ]
    total = c0["statements"][-1]
    assert total["party"] == "total" and total["relation"] == "replace-one"
    assert (
        total["composes"] == ["activation_ldp", "gradient_ldp", "dpsgd"] and total["not_covered"] == c0["not_covered"]
    )
    assert any("converted to replace-one" in n for n in total["notes"])


def test_report_refuses_a_run_without_ledgers(tmp_path, capsys):
    assert main(["privacy", "report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no privacy ledgers (was the run started with privacy.enabled = true?)" in err[0]


def test_report_refuses_a_damaged_ledger_naming_file_and_line(tmp_path, capsys):
    run = _run_dir(tmp_path)
    path = run / "privacy" / "client-0.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + "{not json\n" + "".join(lines[2:]))
    assert main(["privacy", "report", str(run), "--no-plot"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:3: not a complete ledger entry" in err[0] and "Traceback" not in err[0]


def test_report_states_split_generation_per_prompt_and_all_sessions_composed(tmp_path, capsys):
    from splitfed.client.inference_privacy import InferencePrivacy
    from splitfed.config import parse_config

    run = _run_dir(tmp_path)
    act = {"enabled": True, "noise_multiplier": 3.0, "mechanism": "float"}
    cfg = parse_config({"run": {"dir": str(run)}, "privacy": {"enabled": True, "activations": act}})
    ip = InferencePrivacy(cfg, "client-0")
    first = ip.open(rows=2, prompt_positions=5, max_new_tokens=4, hidden=8)
    both = ip.open(rows=1, prompt_positions=5, max_new_tokens=4, hidden=8)
    InferencePrivacy(cfg, "client-2").open(rows=1, prompt_positions=3, max_new_tokens=2, hidden=8)
    assert main(["privacy", "report", str(run), "--json", "--no-plot"]) == 0
    r = json.loads(capsys.readouterr().out)
    c0, c1, c2 = r["clients"]
    assert c1["inference"] is None and c2["client"] == "client-2" and c2["rounds"] == []  # generated, never trained
    inf = c0["inference"]
    assert inf["sessions"] == 2 and inf["unit"] == "prompt"
    assert math.isclose(inf["epsilon_per_session"][0], first.epsilon(), rel_tol=1e-9)
    assert math.isclose(inf["epsilon_all_sessions"], both.epsilon("client"), rel_tol=1e-9)
    # 4 releases at 3 per session (prefill + 3 decode positions), 8 composed: one at 3 / sqrt(8)
    assert math.isclose(inf["epsilon_all_sessions"], analytic_gaussian_epsilon(3 / math.sqrt(8), 1e-5), rel_tol=1e-6)
    # training figures are untouched by generation
    assert math.isclose(c0["epsilon"]["server"], analytic_gaussian_epsilon(1.0, 1e-5), rel_tol=1e-9)
    assert main(["privacy", "report", str(run), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert f"generation (unit: one prompt): 2 sessions; epsilon per prompt up to {first.epsilon():.4g}" in out
    assert "not covered: prompt_shape -> server: the attention mask travels in the clear" in out


def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path):
    import subprocess
    import sys

    run = _run_dir(tmp_path)
    cmd = [sys.executable, "-m", "splitfed.cli.main", "privacy", "report", str(run), "--no-plot"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before anything is written (`| head` that already left)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err
