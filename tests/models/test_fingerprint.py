"""`model_fingerprint`: same model -> same value (however stored), any relevant difference -> another."""

import json
import os
import shutil

import pytest
import torch
from splitfed_testing import make_model_dir

from splitfed.models import CheckpointError
from splitfed.models.fingerprint import model_fingerprint


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp")
    return {
        "single": make_model_dir(root / "single", "llama"),
        "sharded": make_model_dir(root / "sharded", "llama", max_shard_size="100KB"),
        "bf16": make_model_dir(root / "bf16", "llama", dtype=torch.bfloat16),
        "bf16-sharded": make_model_dir(root / "bf16-sharded", "llama", dtype=torch.bfloat16, max_shard_size="100KB"),
        "other-seed": make_model_dir(root / "other-seed", "llama", seed=1),
        "qwen2": make_model_dir(root / "qwen2", "qwen2", max_shard_size="100KB"),
        "gpt2": make_model_dir(root / "gpt2", "gpt2"),
    }


def fp(path):
    return model_fingerprint(path, cache=False)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg, indent=4))


def _perturb_one_weight(path, key="model.layers.1.self_attn.q_proj.weight"):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] += 1e-3
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_format_and_determinism(dirs):
    value = fp(dirs["single"])
    assert value.startswith("sha256:") and len(value) == len("sha256:") + 64
    assert fp(dirs["single"]) == value


def test_single_file_and_sharded_are_equal(dirs):
    assert len(list(dirs["sharded"].glob("model-*.safetensors"))) > 2
    assert fp(dirs["single"]) == fp(dirs["sharded"])
    assert fp(dirs["bf16"]) == fp(dirs["bf16-sharded"])


def test_different_models_differ(dirs):
    values = [fp(dirs[k]) for k in ("single", "bf16", "other-seed", "qwen2", "gpt2")]
    assert len(set(values)) == len(values)


def test_a_changed_weight_differs(tmp_path, dirs):
    """A fine-tuned variant: same names, shapes and dtypes, one value changed."""
    tuned = _copy(dirs["single"], tmp_path / "tuned")
    _perturb_one_weight(tuned)
    assert fp(tuned) != fp(dirs["single"])


@pytest.mark.parametrize(
    "change",
    [
        {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}},
        {"rms_norm_eps": 1e-5},
        {"max_position_embeddings": 128},
        {"tie_word_embeddings": True},
    ],
)
def test_a_relevant_config_value_differs(tmp_path, dirs, change):
    other = _copy(dirs["single"], tmp_path / "other")
    _edit_config(other, **change)
    assert fp(other) != fp(dirs["single"])


def test_bookkeeping_does_not_count(tmp_path, dirs):
    """Version stamps, names, the class name, the storage dtype label, token ids, the
    tokenizer files and JSON formatting do not change the model."""
    other = _copy(dirs["single"], tmp_path / "other")
    _edit_config(
        other,
        transformers_version="4.99.0",
        _name_or_path="/somewhere/else",
        architectures=["LlamaModel"],
        torch_dtype="bfloat16",
        dtype="float16",
        use_cache=False,
        pad_token_id=7,
    )
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (other / f).unlink(missing_ok=True)
    assert fp(other) == fp(dirs["single"])


def test_cache_gives_the_same_value_and_is_used(tmp_path, dirs):
    cache = tmp_path / "fp.json"
    path = _copy(dirs["single"], tmp_path / "m")
    cold = model_fingerprint(path, cache=cache)
    assert cold == fp(path)
    data = json.loads(cache.read_text())
    (key,) = data["files"]
    st = (path / "model.safetensors").stat()
    assert key == str((path / "model.safetensors").resolve())
    assert (data["files"][key]["size"], data["files"][key]["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    assert model_fingerprint(path, cache=cache) == cold
    # the warm call reads the digests from the cache: a planted digest shows through
    name = "model.norm.weight"
    data["files"][key]["tensors"][name][2] = "0" * 64
    cache.write_text(json.dumps(data))
    assert model_fingerprint(path, cache=cache) != cold


def test_a_modified_file_is_hashed_again(tmp_path, dirs):
    cache = tmp_path / "fp.json"
    path = _copy(dirs["single"], tmp_path / "m")
    before = model_fingerprint(path, cache=cache)
    weights = path / "model.safetensors"
    st = weights.stat()
    _perturb_one_weight(path)
    assert weights.stat().st_size == st.st_size  # same size: only the mtime tells
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    after = model_fingerprint(path, cache=cache)
    assert after != before and after == fp(path)


def test_cache_problems_are_not_errors(tmp_path, dirs):
    want = fp(dirs["single"])
    (tmp_path / "a-file").write_text("")
    assert model_fingerprint(dirs["single"], cache=tmp_path / "a-file" / "fp.json") == want  # unwritable
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    assert model_fingerprint(dirs["single"], cache=corrupt) == want
    assert json.loads(corrupt.read_text())["version"] == 1  # replaced by a good one
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".corrupt.json.")]  # no temporary left


def test_default_cache_location(tmp_path, dirs, monkeypatch):
    monkeypatch.setenv("SPLITFED_CACHE", str(tmp_path / "cache"))
    assert model_fingerprint(dirs["gpt2"]) == fp(dirs["gpt2"])
    assert (tmp_path / "cache" / "fingerprints.json").is_file()


def test_bad_directories(tmp_path, dirs):
    with pytest.raises(CheckpointError, match="no config.json"):
        fp(tmp_path)
    truncated = _copy(dirs["single"], tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="lies outside the file"):
        fp(truncated)
    noweights = _copy(dirs["single"], tmp_path / "noweights")
    (noweights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        fp(noweights)
