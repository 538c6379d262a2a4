"""A user's own model directory and data files, each party with its own copy, over CURVE.

The server reads a sharded copy of a tiny Qwen2 model, each client its own single-file copy
and its own data file; at the end every client holds a PEFT adapter that plain transformers
+ PEFT load on that client's model path, and whose held-out perplexity is what the client
reported.
"""

from __future__ import annotations

import json

import pytest
import torch
from splitfed_testing import make_model_dir

ARCH = "qwen2"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _set_args(dotted: dict) -> list[str]:
    return [arg for key, value in dotted.items() for arg in ("--set", f"{key}={value}")]


def _notes(n: int, offset: int = 0) -> list[dict]:
    drugs = ["ibuprofen", "metformin", "sertraline", "lisinopril"]
    return [
        {
            "prompt": f"Note {i + offset}: patient on {drugs[i % 4]} reports",
            "completion": f" {'mild' if i % 2 else 'no'} side effects after {i % 5 + 1} days.",
        }
        for i in range(n)
    ]


def _perplexity(model, examples, tokenizer, padding_side):
    from splitfed.client.data import pad_id
    from splitfed.data import batches
    from splitfed.models import position_ids_from_mask
    from splitfed.training import evaluate

    def logits(ids, mask):
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits

    pad = pad_id(tokenizer)
    return evaluate(logits, batches(examples, 8, pad_token_id=pad, padding_side=padding_side)).perplexity


@pytest.fixture
def models(tmp_path):
    """Three copies of the same weights: the server's sharded, each client's in one file."""
    return {
        "server": make_model_dir(tmp_path / "server-model", ARCH, max_shard_size="20KB", tokenizer=False),
        0: make_model_dir(tmp_path / "hospital-0" / "model", ARCH),
        1: make_model_dir(tmp_path / "hospital-1" / "model", ARCH),
    }


def test_two_clients_on_their_own_files_each_leave_with_a_loadable_adapter(make_run, models, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from splitfed.client.data import load_client_data
    from splitfed.models import load_tokenizer

    h0, h1 = tmp_path / "hospital-0", tmp_path / "hospital-1"
    train0 = _write_jsonl(h0 / "notes.jsonl", _notes(14))
    eval0 = _write_jsonl(h0 / "held-out.jsonl", _notes(6, offset=100))
    (h1 / "notes.csv").write_text(
        "text\n" + "".join(f'"Discharge summary {i}: stable, follow up in {i % 3 + 1} weeks."\n' for i in range(20))
    )
    run = make_run(clients=2, model__path=str(models["server"]), model__cut=[1, 3], data__max_length=32)
    local = {  # each hospital's own keys: never hashed, never sent
        0: {"model.path": str(models[0]), "data.train": str(train0), "data.eval": str(eval0)},
        1: {"model.path": str(models[1]), "data.train": str(h1 / "notes.csv"), "data.eval_fraction": 0.25},
    }
    server = run.server()
    clients = {k: run.client(k, *_set_args(local[k])) for k in (0, 1)}
    for k, p in clients.items():
        assert run.wait(p, 180) == 0, run.log(f"client-{k}") + run.log("server")
    assert run.wait(server) == 0, run.log("server")

    server_adapter = load_file(run.run_dir / "adapter" / "adapter_model.safetensors")
    adapters = {}
    for k in (0, 1):
        done = next(m for m in run.metrics(f"client-{k}") if m["event"] == "done")
        out = run.run_dir / "clients" / f"client-{k}" / "adapter"
        assert done["adapter"] == str(out) and done["trunk_adapter"] is True
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(models[k].resolve())
        adapters[k] = load_file(out / "adapter_model.safetensors")
        assert any(".layers.1." in key for key in adapters[k])  # the trunk's layers [1, 3) are in it
        assert any(".layers.0." in key for key in adapters[k]) and any(".layers.3." in key for key in adapters[k])

        # plain transformers + PEFT on the client's own path: the model the client evaluated
        cfg = run.cfg.with_overrides(**local[k])
        tokenizer = load_tokenizer(models[k])
        data = load_client_data(cfg, k, tokenizer)
        base = AutoModelForCausalLM.from_pretrained(models[k], dtype=torch.float32).eval()
        assert _perplexity(base, data.eval, tokenizer, cfg.data.padding_side) == pytest.approx(
            done["ppl_before"], rel=1e-4
        )
        tuned = PeftModel.from_pretrained(base, out).eval()
        assert _perplexity(tuned, data.eval, tokenizer, cfg.data.padding_side) == pytest.approx(
            done["ppl_after"], rel=1e-4
        )
        assert done["ppl_after"] != pytest.approx(done["ppl_before"], rel=1e-3)  # it really trained

    # shared mode: both clients end with the same aggregate and trunk adapter, the server's too
    assert set(adapters[0]) == set(adapters[1]) == set(server_adapter)
    for key, value in server_adapter.items():
        torch.testing.assert_close(adapters[0][key], value, rtol=0, atol=0)
        torch.testing.assert_close(adapters[1][key], value, rtol=0, atol=0)
    starts = {k: next(m for m in run.metrics(f"client-{k}") if m["event"] == "start") for k in (0, 1)}
    assert starts[0]["data"] == str(train0) and starts[0]["format"] == "prompt_completion"
    assert starts[1]["format"] == "text" and starts[1]["n_samples"] == 15  # 20 rows, 5 held out


def test_a_client_with_another_base_model_is_refused_naming_both_fingerprints(make_run, models, tmp_path):
    from splitfed.models.fingerprint import model_fingerprint
    from splitfed.models.source import short_fingerprint

    other = make_model_dir(tmp_path / "other-model", ARCH, seed=1)  # same architecture, other weights
    data = _write_jsonl(tmp_path / "notes.jsonl", _notes(8))
    run = make_run(clients=1, model__path=str(models["server"]), model__cut=[1, 3])
    server = run.server()
    client = run.client(0, "--set", f"model.path={other}", "--set", f"data.train={data}")
    assert run.wait(client, 120) == 2, run.log("client-0")
    log = run.log("client-0")
    assert "different base model" in log and "Traceback" not in log
    assert short_fingerprint(model_fingerprint(models["server"])) in log
    assert short_fingerprint(model_fingerprint(other)) in log
    assert server.poll() is None  # the server goes on serving
    assert not (run.run_dir / "clients" / "client-0").exists()  # nothing trained


def test_withheld_trunk_adapter_per_client_mode(make_run, models, tmp_path):
    from safetensors.torch import load_file

    data = _write_jsonl(tmp_path / "notes.jsonl", _notes(10))
    run = make_run(
        clients=1,
        model__path=str(models["server"]),
        model__cut=[1, 3],
        server__mode="per_client",
        server__share_trunk_adapter=False,
        training__rounds=1,
    )
    server = run.server()
    client = run.client(0, "--set", f"model.path={models[0]}", "--set", f"data.train={data}")
    assert run.wait(client, 180) == 0, run.log("client-0") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    assert "server kept the trunk adapter" in run.log("client-0")
    adapter = load_file(run.run_dir / "clients" / "client-0" / "adapter" / "adapter_model.safetensors")
    assert adapter and not any(".layers.1." in k or ".layers.2." in k for k in adapter)
    assert any(".layers.1." in k for k in load_file(run.run_dir / "adapter" / "adapter_model.safetensors"))
