"""Your own model directory: validation, loading parts from bf16 / fp16 / sharded checkpoints, the CLI."""

import argparse
import json
import re
import shutil

import pytest
import torch
from splitfed_testing import ARCHS, make_model_dir, padded_batch, tiny_config

from splitfed.models import CheckpointError, load_part, split_model
from splitfed.models.local import SUPPORTED_MODEL_TYPES, ModelDirError, ModelInfo, inspect_model_dir

CUT = (1, 3)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Tiny model directories, written once for the module."""
    root = tmp_path_factory.mktemp("models")
    return {
        "llama": make_model_dir(root / "llama", "llama"),
        "qwen2-sharded": make_model_dir(root / "qwen2-sharded", "qwen2", max_shard_size="100KB"),
        "gpt2": make_model_dir(root / "gpt2", "gpt2", chat_template=False),
        "llama-bf16": make_model_dir(root / "llama-bf16", "llama", dtype=torch.bfloat16),
        "mistral-fp16-sharded": make_model_dir(
            root / "mistral-fp16", "mistral", dtype=torch.float16, max_shard_size="100KB"
        ),
    }


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _full_split(path, cut=CUT):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return split_model(model, cut)


def _parts(path, cut=CUT, dtype=torch.float32):
    return {role: load_part(path, role, cut, dtype=dtype) for role in ("bottom", "trunk", "top")}


def _run(parts, batch):
    mask = batch["attention_mask"]
    with torch.no_grad():
        return parts["top"](parts["trunk"](parts["bottom"](batch["input_ids"], mask), mask), mask)


# --------------------------------------------------------------------------- supported families


def test_supported_model_types_are_the_exactness_tested_families():
    assert set(SUPPORTED_MODEL_TYPES) == {tiny_config(a).model_type for a in ARCHS}
    assert SUPPORTED_MODEL_TYPES[:2] == ("llama", "qwen2")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_family_loads_by_parts_like_from_pretrained(tmp_path, arch):
    """Checkpoint keys map to model keys as from_pretrained maps them (GPT-NeoX's embed_out,
    MoE experts saved one by one and fused on load)."""
    path = make_model_dir(tmp_path / arch, arch, tokenizer=False)
    batch = padded_batch("left", vocab=100)
    want = _full_split(path)(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(_run(_parts(path), batch), want, atol=0, rtol=0)


# --------------------------------------------------------------------------- load_part: dtypes and shards


@pytest.mark.parametrize("name", ["llama", "qwen2-sharded", "gpt2", "llama-bf16", "mistral-fp16-sharded"])
def test_parts_equal_the_split_full_model(dirs, name):
    path = dirs[name]
    parts = _parts(path)
    assert all(p.dtype == torch.float32 for part in parts.values() for p in part.parameters())
    for padding in ("left", "right"):
        batch = padded_batch(padding, vocab=100)
        want = _full_split(path)(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(_run(parts, batch), want, atol=0, rtol=0)


def test_requested_dtype(dirs):
    for name in ("llama", "llama-bf16", "mistral-fp16-sharded"):
        trunk = load_part(dirs[name], "trunk", CUT, dtype=torch.bfloat16)
        assert {p.dtype for p in trunk.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("name", ["qwen2-sharded", "llama", "gpt2"])
def test_loaded_keys_stay_in_their_part(dirs, name):
    path = dirs[name]
    index = path / "model.safetensors.index.json"
    if name == "qwen2-sharded":
        assert len(set(json.loads(index.read_text())["weight_map"].values())) > 2
    layers = "transformer.h" if name == "gpt2" else "model.layers"
    parts = _parts(path)
    trunk_keys, bottom_keys = parts["trunk"].loaded_keys, parts["bottom"].loaded_keys
    assert trunk_keys and all(k.startswith((f"{layers}.1.", f"{layers}.2.")) for k in trunk_keys)
    for k in trunk_keys:
        assert not any(w in k for w in ("embed", "wte", "wpe", "lm_head", "ln_f")), k
        assert not k.startswith(("model.norm", "transformer.ln_f")), k
    assert not set(bottom_keys) & set(trunk_keys)
    assert not any(k.startswith((f"{layers}.1.", f"{layers}.2.", f"{layers}.3.")) for k in bottom_keys)
    assert not any(k.startswith((f"{layers}.0.", f"{layers}.1.", f"{layers}.2.")) for k in parts["top"].loaded_keys)


def test_legacy_gpt2_keys_without_the_base_prefix(tmp_path, dirs):
    """GPT-2 checkpoints on the Hub store ``h.0...`` rather than ``transformer.h.0...``."""
    from safetensors.torch import load_file, save_file

    path = _copy(dirs["gpt2"], tmp_path / "legacy")
    tensors = load_file(path / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, path / "model.safetensors")
    batch = padded_batch("left", vocab=100)
    want = _full_split(dirs["gpt2"])(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(_run(_parts(path), batch), want, atol=0, rtol=0)
    assert inspect_model_dir(path).num_layers == 4


def test_load_part_errors_name_the_problem(tmp_path, dirs):
    path = _copy(dirs["qwen2-sharded"], tmp_path / "broken")
    shard = sorted(path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"names shard file\(s\) that are missing: {shard.name}"):
        load_part(path, "trunk", CUT)
    cfg = json.loads((dirs["llama"] / "config.json").read_text())
    bad = _copy(dirs["llama"], tmp_path / "shape")
    (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 48}))
    with pytest.raises(CheckpointError, match=r"has shape \(64, 32\) in the checkpoint, but config.json gives"):
        load_part(bad, "trunk", CUT)


# --------------------------------------------------------------------------- inspect_model_dir


def test_inspect_describes_the_directory(dirs):
    info = inspect_model_dir(dirs["llama"])
    assert isinstance(info, ModelInfo)
    assert (info.model_type, info.architecture, info.num_layers, info.hidden_size) == (
        "llama",
        "LlamaForCausalLM",
        4,
        32,
    )
    assert info.vocab_size == json.loads((dirs["llama"] / "config.json").read_text())["vocab_size"]
    assert (info.dtype, info.sharded, info.has_tokenizer, info.has_chat_template) == ("float32", False, True, True)
    assert inspect_model_dir(dirs["qwen2-sharded"]).sharded
    assert inspect_model_dir(dirs["llama-bf16"]).dtype == "bfloat16"
    assert inspect_model_dir(dirs["mistral-fp16-sharded"]).dtype == "float16"
    gpt2 = inspect_model_dir(dirs["gpt2"])
    assert (gpt2.model_type, gpt2.num_layers, gpt2.has_tokenizer, gpt2.has_chat_template) == ("gpt2", 4, True, False)


def test_server_needs_no_tokenizer(tmp_path):
    path = make_model_dir(tmp_path / "m", "llama", tokenizer=False)
    assert not inspect_model_dir(path, need_tokenizer=False).has_tokenizer
    with pytest.raises(ModelDirError, match=rf"{path}: no tokenizer \(expected tokenizer.json"):
        inspect_model_dir(path)


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _bad_dirs(tmp_path, dirs):
    """(name, directory, expected message) for every kind of bad input."""
    from safetensors.torch import load_file, save_file

    cases = []
    cases.append(("missing", tmp_path / "nope", "no such directory"))
    (tmp_path / "file").write_text("x")
    cases.append(("file", tmp_path / "file", "not a directory"))
    (tmp_path / "empty").mkdir()
    cases.append(("no config", tmp_path / "empty", "no config.json; expected a Hugging Face model directory"))
    p = _copy(dirs["llama"], tmp_path / "badjson")
    (p / "config.json").write_text("{not json")
    cases.append(("config unreadable", p, "config.json is unreadable"))
    p = _copy(dirs["llama"], tmp_path / "notype")
    cfg = json.loads((p / "config.json").read_text())
    del cfg["model_type"]
    (p / "config.json").write_text(json.dumps(cfg))
    cases.append(("no model_type", p, "config.json has no model_type"))
    p = _copy(dirs["llama"], tmp_path / "granite")
    _edit_config(p, model_type="granite", architectures=["GraniteForCausalLM"])
    cases.append(
        (
            "unsupported",
            p,
            r"unsupported architecture GraniteForCausalLM \(model_type='granite'\); supported: llama, qwen2, ",
        )
    )
    p = _copy(dirs["llama"], tmp_path / "t5")
    _edit_config(p, model_type="t5", architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True)
    cases.append(("encoder-decoder", p, r"T5ForConditionalGeneration \(model_type='t5'\) is an encoder-decoder"))
    p = _copy(dirs["llama"], tmp_path / "bart")
    _edit_config(p, model_type="bart", architectures=["BartForConditionalGeneration"])
    cases.append(("encoder-decoder by type", p, "is an encoder-decoder model"))
    p = _copy(dirs["llama"], tmp_path / "quantized")
    _edit_config(p, quantization_config={"quant_method": "gptq", "bits": 4})
    cases.append(("quantized", p, r"quantized weights \(quantization_config.quant_method='gptq'\)"))
    p = _copy(dirs["llama"], tmp_path / "noweights")
    (p / "model.safetensors").unlink()
    cases.append(("no weights", p, "no weights; expected model.safetensors or model.safetensors.index.json"))
    p = _copy(dirs["llama"], tmp_path / "bin")
    (p / "model.safetensors").rename(p / "pytorch_model.bin")
    cases.append(
        (
            "bin only",
            p,
            r"only pytorch_model.bin weights, which splitfed does not read \(pickle.*"
            r"save_pretrained\(dir, safe_serialization=True\)",
        )
    )
    p = _copy(dirs["llama"], tmp_path / "oddname")
    (p / "model.safetensors").rename(p / "consolidated.safetensors")
    cases.append(("unindexed safetensors", p, "found consolidated.safetensors but no model.safetensors"))
    p = _copy(dirs["qwen2-sharded"], tmp_path / "noshard")
    shard = sorted(p.glob("model-*.safetensors"))[-1]
    shard.unlink()
    cases.append(("missing shard", p, f"names shard file\\(s\\) that are missing: {shard.name}"))
    p = _copy(dirs["qwen2-sharded"], tmp_path / "badindex")
    (p / "model.safetensors.index.json").write_text('{"metadata": {}}')
    cases.append(("index without weight_map", p, "unreadable model.safetensors.index.json"))
    p = _copy(dirs["llama"], tmp_path / "notok")
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (p / f).unlink(missing_ok=True)
    cases.append(("no tokenizer", p, "no tokenizer"))
    p = _copy(dirs["llama"], tmp_path / "corrupt")
    (p / "model.safetensors").write_bytes(b"\xff" * 16)
    cases.append(("not safetensors", p, "not a safetensors file"))
    p = _copy(dirs["llama"], tmp_path / "lacking")
    tensors = load_file(p / "model.safetensors")
    del tensors["model.layers.2.mlp.up_proj.weight"]
    save_file(tensors, p / "model.safetensors", metadata={"format": "pt"})
    cases.append(("lacks a tensor", p, r"the weights lack 'model.layers.2.mlp.up_proj.weight'"))
    p = _copy(dirs["llama"], tmp_path / "wrongshape")
    _edit_config(p, intermediate_size=48)
    cases.append(("shape", p, r"has shape \(64, 32\) on disk but config.json gives \(48, 32\)"))
    return cases


def test_every_bad_directory_is_a_model_dir_error_naming_it(tmp_path, dirs):
    cases = _bad_dirs(tmp_path, dirs)
    for name, path, message in cases:
        with pytest.raises(ModelDirError) as info:
            inspect_model_dir(path)
        text = str(info.value)
        assert text.startswith(str(path)), (name, text)
        assert "\n" not in text, (name, text)
        assert re.search(message, text), (name, text)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, FileNotFoundError) and isinstance(err, CheckpointError)


# --------------------------------------------------------------------------- CLI


def _cli(argv):
    from splitfed.cli.models import register

    parser = argparse.ArgumentParser(prog="splitfed")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_inspect_and_prepare_a_directory(dirs, tmp_path, capsys):
    from splitfed.models.fingerprint import model_fingerprint

    path = dirs["qwen2-sharded"]
    assert _cli(["models", "inspect", str(path), "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(path.resolve())
    for line in ("Qwen2ForCausalLM (model_type=qwen2)", "layers         4", "hidden         32", "sharded        yes"):
        assert line in out
    assert "chat template  yes" in out and "tokenizer      yes" in out
    assert model_fingerprint(path, cache=False) in out
    assert (tmp_path / "fingerprints.json").is_file()
    assert _cli(["models", "prepare", str(path), "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == out


def test_cli_errors_are_value_errors(tmp_path):
    with pytest.raises(ModelDirError, match="no config.json"):
        _cli(["models", "inspect", str(tmp_path)])
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(ModelDirError, match="not a JSON object"):
        _cli(["models", "prepare", str(tmp_path)])
    with pytest.raises(ValueError, match=r"unknown model 'nonesuch': give a built-in name \(smollm2-135m"):
        _cli(["models", "prepare", "nonesuch"])


def test_cli_server_copy_without_tokenizer(tmp_path, capsys):
    path = make_model_dir(tmp_path / "server", "gpt2", tokenizer=False)
    with pytest.raises(ModelDirError, match="no tokenizer"):
        _cli(["models", "inspect", str(path), "--cache-dir", str(tmp_path)])
    assert _cli(["models", "inspect", str(path), "--no-tokenizer", "--cache-dir", str(tmp_path)]) == 0
    assert "tokenizer      no" in capsys.readouterr().out


def test_cli_prepare_builtin_says_preparing_only_once(tmp_path, capsys):
    assert _cli(["models", "prepare", "tiny-llama", "--cache-dir", str(tmp_path)]) == 0
    first = capsys.readouterr()
    assert "preparing tiny-llama ... (converted once)" in first.err
    assert first.out.strip() == str(tmp_path / "models" / "tiny-llama")
    assert _cli(["models", "prepare", "tiny-llama", "--cache-dir", str(tmp_path)]) == 0
    second = capsys.readouterr()
    assert second.err == "" and second.out == first.out
    assert _cli(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "tiny-llama     cached" in listing and "tiny-gpt2      not prepared" in listing
