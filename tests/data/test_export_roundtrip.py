"""The bundled reviews written out by `splitfed data export` read back as exactly the simulation's examples."""

from __future__ import annotations

from splitfed_testing import tiny_tokenizer

from splitfed.cli.main import main
from splitfed.client.data import load_client_data
from splitfed.config import RunConfig


def test_exported_files_give_the_simulations_examples(tmp_path, capsys):
    sim = RunConfig().with_overrides(**{"data.clients": 3, "data.partition": "dirichlet", "run.seed": 3})
    assert main(["data", "export", "--out", str(tmp_path), "--set", "data.clients=3", "--set", "run.seed=3"]) == 0
    assert "client-2:" in capsys.readouterr().out
    tok = tiny_tokenizer()
    for k in range(3):
        files = sim.with_overrides(
            **{"data.train": str(tmp_path / f"client-{k}.jsonl"), "data.eval": str(tmp_path / "eval.jsonl")}
        )
        want, got = load_client_data(sim, k, tok), load_client_data(files, k, tok)
        assert got.format == "prompt_completion" and got.source.endswith(f"client-{k}.jsonl")
        assert got.train == want.train and len(got.train) > 0
        assert got.eval == want.eval and len(got.eval) == sim.data.eval_examples
