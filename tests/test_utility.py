"""`splitfed.utility`: the public base model as the floor a fine-tuned model must beat."""

from __future__ import annotations

import json
import math

from splitfed.utility import Utility, client_utility, utility_from_summary


def test_beating_the_base_is_strict_and_nan_never_beats_it():
    assert Utility(32.67, 25.85).beats_base and Utility(32.67, 25.85).warning() is None
    assert not Utility(32.67, 32.67).beats_base
    assert not Utility(32.67, math.nan).beats_base and not Utility(32.67, math.inf).beats_base
    assert Utility(32.67, 33.03).warning() == (
        "WARNING: the fine-tuned model (ppl 33.03) does not beat the public base model (ppl 32.67): "
        "this run bought no utility"
    )
    assert Utility(32.67, 25.85).summary() == "held-out perplexity 32.67 (public base model) -> 25.85 (fine-tuned)"


def test_read_from_a_client_summary_and_its_metrics_file(tmp_path):
    assert utility_from_summary({"ppl_before": 30.0}) is None  # no fine-tuned number: nothing to compare
    assert utility_from_summary({"ppl_before": 30.0, "ppl_after": 31.0}) == Utility(30.0, 31.0)
    assert client_utility(tmp_path, "client-0") is None
    (tmp_path / "metrics").mkdir()
    lines = [{"event": "eval", "model": "base"}, {"event": "done", "ppl_before": 30.0, "ppl_after": 29.0}]
    (tmp_path / "metrics" / "client-0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"event": "do')
    got = client_utility(tmp_path, "client-0")
    assert got == Utility(30.0, 29.0) and got.to_json() == {"base_ppl": 30.0, "tuned_ppl": 29.0, "beats_base": True}
