"""Split generation over CURVE with real processes: a finished run is served (`splitfed serve`)
and two clients generate at once (`splitfed generate`); each answer equals Hugging Face
`generate` (greedy) on the unsplit model with that client's exported adapter merged."""

from __future__ import annotations

import re

import torch
from splitfed_testing import make_model_dir

PROMPTS = ["The patient was given", "Side effects of this drug include"]


def _local_answers(run, k: int, prompts: list[str], max_new: int) -> list[str]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from splitfed.models.source import resolve_base_model

    base = resolve_base_model(run.cfg.model, need_tokenizer=True).path
    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, run.run_dir / "clients" / f"client-{k}" / "adapter").merge_and_unload()
    enc = tok(prompts, return_tensors="pt", padding=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = model.eval().generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=pad)
    return [tok.decode(row[enc["input_ids"].shape[1] :], skip_special_tokens=True) for row in out]


def test_two_clients_generate_at_once_against_a_served_run(make_run, tmp_path):
    model = make_model_dir(tmp_path / "model", "llama")  # with a Hugging Face tokenizer
    # secure aggregation on, as in a real deployment: a generating client says which roster it holds too
    run = make_run(
        clients=2, model__path=str(model), training__rounds=1, training__local_steps=2, aggregation__secure=True
    )
    server = run.server()
    trainers = [run.client(k) for k in range(2)]
    for p in trainers:
        assert run.wait(p) == 0, run.log("client-0") + run.log("client-1")
    assert run.wait(server) == 0, run.log("server")

    serve = run._spawn(["serve", "--config", str(run.config_path)], "serve.log")
    run.wait_for(lambda: "listening" in run.log("serve"), what="the serving server")
    max_new = 12
    gens = []
    for k in range(2):
        args = ["generate", "--config", str(run.config_path), "--client-id", str(k), "--max-new-tokens", str(max_new)]
        for prompt in PROMPTS:
            args += ["--prompt", prompt]
        gens.append(run._spawn(args, f"generate-{k}.log"))
    for k, p in enumerate(gens):
        assert run.wait(p, timeout=180) == 0, run.log(f"generate-{k}") + run.log("serve")
    for k in range(2):
        got = dict(re.findall(r"^\[(\d+)\] (.*)$", run.log(f"generate-{k}"), flags=re.M))
        want = _local_answers(run, k, PROMPTS, max_new)
        assert [got.get(str(i)) for i in range(len(PROMPTS))] == [w.split("\n")[0] for w in want]
    assert serve.poll() is None  # still serving
    steps = [m for m in run.metrics("server") if m.get("event") == "generate_step"]
    assert steps and all(m["rows"] <= 4 for m in steps)
    closes = [m for m in run.metrics("server") if m.get("event") == "generate_close"]
    assert len(closes) == 2 and {m["client"] for m in closes} == {"client-0", "client-1"}


def test_private_generation_is_noised_recorded_before_sending_and_reported(make_run, tmp_path):
    from splitfed.privacy.events import DiscreteGaussianEvent
    from splitfed.privacy.ledger import read_ledger

    model = make_model_dir(tmp_path / "model", "llama")
    act = {"enabled": True, "noise_multiplier": 1.0, "clip": 4.0}
    run = make_run(
        model__path=str(model),
        training__rounds=1,
        training__local_steps=1,
        privacy__enabled=True,
        privacy__activations=act,
    )
    server, client = run.server(), run.client(0)
    assert run.wait(client) == 0, run.log("client-0") + run.log("server")
    assert run.wait(server) == 0, run.log("server")
    serve = run._spawn(["serve", "--config", str(run.config_path)], "serve.log")
    run.wait_for(lambda: "listening" in run.log("serve"), what="the serving server")
    args = ["generate", "--config", str(run.config_path), "--client-id", "0", "--max-new-tokens", "6"]
    gen = run._spawn([*args, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]], "generate-0.log")
    assert run.wait(gen, timeout=180) == 0, run.log("generate-0") + run.log("serve")
    stated = re.search(
        r"privacy: session 1: epsilon per prompt ([0-9.]+), this client's sessions composed ([0-9.]+)",
        run.log("generate-0"),
    )
    assert stated and stated.group(1) == stated.group(2), run.log("generate-0")
    shape, release = read_ledger(run.run_dir / "privacy" / "inference" / "client-0.jsonl")
    assert shape.mechanism == "prompt_shape" and release.mechanism == "inference_activation_ldp"
    assert isinstance(release.event, DiscreteGaussianEvent) and release.event.count == 6  # prefill + 5 positions
    steps = [m for m in run.metrics("server") if m.get("event") == "generate_step"]
    assert sum(m["rows"] for m in steps) == 2 * 5  # every decode position sent, none after the rows stopped
    report = run._spawn(["privacy", "report", str(run.run_dir), "--no-plot"], "report.log")
    assert run.wait(report) == 0, run.log("report")
    assert "generation (unit: one prompt): 1 sessions" in run.log("report")
    assert serve.poll() is None
