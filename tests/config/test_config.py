"""Run configuration: defaults, the example file, round trips, error messages, overrides, hash."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitfed.config import (
    ConfigError,
    DataSection,
    LoraPart,
    LoraSection,
    ModelSection,
    RunConfig,
    TransportSection,
    dump_toml,
    load_config,
    parse_config,
    parse_overrides,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "run.toml"


def parse(text: str) -> RunConfig:
    return parse_config(tomllib.loads(text))


# ----------------------------------------------------------------------------- defaults and files


def test_empty_toml_gives_defaults():
    cfg = parse("")
    assert cfg == RunConfig()
    assert cfg.run.dir == "runs/demo" and cfg.run.seed == 0
    assert cfg.model == ModelSection(name="smollm2-135m", cut=(2, 28), cache_dir="")
    assert cfg.lora.bottom == cfg.lora.trunk == cfg.lora.top == LoraPart()
    assert (cfg.lora.trunk.r, cfg.lora.trunk.alpha, cfg.lora.trunk.target_modules) == (8, 16.0, ())
    assert (cfg.data.clients, cfg.data.partition, cfg.data.alpha, cfg.data.padding_side) == (
        3,
        "dirichlet",
        0.5,
        "right",
    )
    assert (cfg.training.rounds, cfg.training.local_steps, cfg.training.lr) == (3, 10, 1e-3)
    assert (cfg.server.mode, cfg.server.batch_clients, cfg.server.max_batch) == ("shared", False, 64)
    assert cfg.transport.endpoint == "tcp://127.0.0.1:5555" and cfg.transport.compression == "fp32"
    assert cfg.transport.timeout_s > cfg.transport.heartbeat_s
    assert not cfg.aggregation.secure and not cfg.privacy.enabled


def test_partial_tables_keep_other_defaults():
    cfg = parse("[training]\nrounds = 7\n[lora.trunk]\nr = 4\n")
    assert cfg.training.rounds == 7 and cfg.training.local_steps == 10
    assert cfg.lora.trunk.r == 4 and cfg.lora.bottom.r == 8


def test_example_file_parses():
    cfg = load_config(EXAMPLE)
    assert cfg.model.name == "smollm2-135m" and cfg.model.cut == (2, 28)
    assert cfg.data.clients == 3 and cfg.data.partition == "dirichlet"
    assert 1 <= cfg.training.rounds <= 10


def test_load_config_reads_a_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\nname = "tiny-gpt2"\ncut = [1, 3]\n')
    cfg = load_config(path)
    assert cfg.model.name == "tiny-gpt2" and cfg.model.cut == (1, 3)
    assert load_config(str(path)) == cfg


def test_ints_accepted_as_floats():
    cfg = parse("[training]\nlr = 1\n[lora.top]\nalpha = 32\n")
    assert cfg.training.lr == 1.0 and isinstance(cfg.training.lr, float)
    assert isinstance(cfg.lora.top.alpha, float)


def test_direct_construction_is_validated_and_normalised():
    part = LoraPart(target_modules=["q_proj", "v_proj"], alpha=8)
    assert part.target_modules == ("q_proj", "v_proj") and isinstance(part.alpha, float)
    assert ModelSection(cut=[1, 3]).cut == (1, 3)
    with pytest.raises(ConfigError, match=r"data\.clients: expected an integer >= 1, got 0"):
        DataSection(clients=0)
    with pytest.raises(ConfigError, match=r"expected a LoraPart"):
        LoraSection(trunk={"r": 4})
    with pytest.raises(ConfigError, match=r"^transport\.timeout_s: expected a number > transport\.heartbeat_s"):
        TransportSection(heartbeat_s=1, timeout_s=0.5)


@pytest.mark.process
def test_config_module_imports_only_the_standard_library():
    code = "import sys, splitfed.config; bad = {'torch', 'transformers', 'numpy'} & set(sys.modules); print(bad or '')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ----------------------------------------------------------------------------- round trip


def test_round_trip_defaults_and_example():
    for cfg in (RunConfig(), load_config(EXAMPLE)):
        assert parse_config(tomllib.loads(dump_toml(cfg))) == cfg
        assert parse_config(tomllib.loads(dump_toml(cfg, comments=True))) == cfg


def test_round_trip_every_field_changed():
    cfg = RunConfig().with_overrides(
        **{
            "run.dir": 'C:\\runs\\"quoted"\tdir\n\u00e9\x01',
            "run.seed": 12345,
            "model.name": "tiny-llama",
            "model.cut": [0, 1],
            "model.cache_dir": "/tmp/cache",
            "lora.bottom.enabled": False,
            "lora.trunk.r": 2,
            "lora.trunk.alpha": 1e-7,
            "lora.trunk.dropout": 0.125,
            "lora.top.target_modules": ["q_proj", "lm_head"],
            "data.clients": 10,
            "data.partition": "iid",
            "data.alpha": 3e20,
            "data.eval_examples": 0,
            "data.padding_side": "left",
            "training.lr": 5e-324,
            "training.weight_decay": 0.01,
            "server.mode": "per_client",
            "server.batch_clients": True,
            "transport.endpoint": "ipc:///tmp/splitfed.sock",
            "transport.insecure": True,
            "transport.compression": "int8",
            "transport.heartbeat_s": 0.5,
            "transport.timeout_s": 1.5,
        }
    )
    text = dump_toml(cfg)
    assert parse_config(tomllib.loads(text)) == cfg
    assert tomllib.loads(text) == cfg.to_dict()


def test_to_dict_is_plain():
    d = RunConfig().to_dict()
    assert d["model"]["cut"] == [2, 28] and isinstance(d["model"]["cut"], list)
    assert d["lora"]["trunk"]["target_modules"] == []
    assert set(d) == {f.name for f in dataclasses.fields(RunConfig)}
    assert parse_config(d) == RunConfig()


@settings(max_examples=40, deadline=None)
@given(
    rounds=st.integers(1, 10**6),
    lr=st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False),
    cut=st.tuples(st.integers(0, 1000), st.integers(1, 1000)).filter(lambda c: c[0] < c[1]),
    clients=st.integers(1, 1000),
    compression=st.sampled_from(["fp32", "fp16", "bf16", "int8"]),
    run_dir=st.text(min_size=1, max_size=20),
)
def test_round_trip_property(rounds, lr, cut, clients, compression, run_dir):
    cfg = RunConfig().with_overrides(
        **{
            "training.rounds": rounds,
            "training.lr": lr,
            "model.cut": list(cut),
            "data.clients": clients,
            "transport.compression": compression,
            "run.dir": run_dir,
        }
    )
    assert parse_config(tomllib.loads(dump_toml(cfg))) == cfg


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # unknown table / key, with the known names listed
        (
            "[datta]\nclients = 2\n",
            r"^unknown table \[datta\] \(known tables: aggregation, client, data, generate, .*did you mean \[data\]",
        ),
        (
            "[data]\nbatchsize = 2\n",
            r"^unknown key 'data\.batchsize' \(known keys in \[data\]: alpha, batch_size, clients, .*\); "
            r"did you mean 'batch_size'\?",
        ),
        ("seed = 1\n", r"unknown top-level key 'seed'.*did you mean \[run\] seed"),
        ("[lora.middle]\nr = 2\n", r"unknown table \[lora\.middle\] \(known tables in \[lora\]: bottom, top, trunk\)"),
        ("[lora]\nr = 2\n", r"unknown key 'lora\.r'.*set 'r' in \[lora\.bottom\]"),
        ("[lora.top]\nrank = 2\n", r"unknown key 'lora\.top\.rank' \(known keys in \[lora\.top\]: alpha, dropout"),
        # wrong types
        ("[training]\nrounds = '3'\n", r"^training\.rounds: expected an integer >= 1, got '3' \(string\)$"),
        ("[training]\nrounds = true\n", r"^training\.rounds: expected an integer >= 1, got true \(boolean\)$"),
        ("[lora.bottom]\nr = false\n", r"^lora\.bottom\.r: expected an integer >= 1, got false \(boolean\)$"),
        ("[training]\nlr = true\n", r"^training\.lr: expected a number > 0, got true \(boolean\)$"),
        ("[training]\nlr = '1e-3'\n", r"^training\.lr: expected a number > 0, got '1e-3' \(string\)$"),
        ("[run]\ndir = 3\n", r"^run\.dir: expected a non-empty string, got 3 \(integer\)$"),
        ("[server]\nbatch_clients = 1\n", r"^server\.batch_clients: expected a boolean \(true or false\), got 1"),
        ("[lora.top]\ntarget_modules = 'q_proj'\n", r"^lora\.top\.target_modules: expected a list of non-empty str"),
        ("[lora.top]\ntarget_modules = ['q_proj', '']\n", r"lora\.top\.target_modules: .*got \['q_proj', ''\]"),
        ("data = 3\n", r"^data: expected a table \[data\], got 3 \(integer\)$"),
        ("[data.clients]\nn = 3\n", r"^data\.clients: expected an integer >= 1, got a table$"),
        # out of range
        ("[training]\nrounds = 0\n", r"^training\.rounds: expected an integer >= 1, got 0$"),
        ("[run]\nseed = -1\n", r"^run\.seed: expected an integer >= 0, got -1$"),
        ("[training]\nlr = 0.0\n", r"^training\.lr: expected a number > 0, got 0\.0$"),
        ("[training]\nlr = nan\n", r"^training\.lr: expected a number > 0, got nan$"),
        ("[lora.trunk]\ndropout = 1\n", r"^lora\.trunk\.dropout: expected a number in \[0, 1\), got 1$"),
        ("[data]\nmax_length = 4\n", r"^data\.max_length: expected an integer >= 8, got 4$"),
        ("[run]\ndir = ''\n", r"^run\.dir: expected a non-empty string, got ''$"),
        # bad Literal
        ("[data]\npartition = 'random'\n", r"^data\.partition: expected one of 'iid', 'dirichlet', got 'random'$"),
        ("[model]\nname = 'gpt-5'\n", r"^model\.name: expected one of 'smollm2-135m', 'tiny-llama', 'tiny-gpt2'"),
        ("[transport]\ncompression = 'fp8'\n", r"^transport\.compression: expected one of 'fp32', 'fp16', 'bf16'"),
        ("[server]\nmode = 1\n", r"^server\.mode: expected one of 'shared', 'per_client', got 1 \(integer\)$"),
        # bad cut
        ("[model]\ncut = [5, 3]\n", r"^model\.cut: expected two integers \[a, b\] with 0 <= a < b, got \[5, 3\]$"),
        ("[model]\ncut = [3, 3]\n", r"^model\.cut: expected two integers .*got \[3, 3\]$"),
        ("[model]\ncut = [-1, 3]\n", r"^model\.cut: .*got \[-1, 3\]$"),
        ("[model]\ncut = [1, 2, 3]\n", r"^model\.cut: .*got \[1, 2, 3\]$"),
        ("[model]\ncut = [1, true]\n", r"^model\.cut: .*got \[1, true\]$"),
        ("[model]\ncut = 2\n", r"^model\.cut: .*got 2 \(integer\)$"),
        # cross-field and other checks
        (
            "[transport]\nheartbeat_s = 5\ntimeout_s = 5\n",
            r"^transport\.timeout_s: expected a number > transport\.heartbeat_s \(5\.0\), got 5\.0$",
        ),
        ("[transport]\nendpoint = 'http://x:1'\n", r"^transport\.endpoint: expected a string starting with 'tcp://'"),
        # features that are not there yet
        ("[aggregation]\nsecure = true\nbits = 32\n", r"^aggregation\.bits: expected an integer"),
        ("[aggregation]\nclip = 0\n", r"^aggregation\.clip: expected a number > 0"),
        ("[privacy]\nmax_epsilon = 3\n", r"^privacy\.max_epsilon: a budget needs privacy\.enabled = true$"),
        (
            "[privacy.activations]\nenabled = true\n",
            r"^privacy\.activations\.epsilon: set exactly one of epsilon \(calibrated\) and noise_multiplier",
        ),
        (
            "[privacy.dpsgd]\nsample_rate = 1.5\n",
            r"^privacy\.dpsgd\.sample_rate: expected a number in \[0, 1\], got 1\.5$",
        ),
    ],
)
def test_error_messages(text, message):
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_error_carries_the_key():
    with pytest.raises(ConfigError) as info:
        parse("[lora.trunk]\nr = 0\n")
    assert info.value.key == "lora.trunk.r"
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        load_config(missing)


def test_toml_syntax_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[training]\nrounds = = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML: .*line 2") as info:
        load_config(path)
    assert info.value.path == str(path)


def test_file_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[data]\npartition = 'random'\n")
    with pytest.raises(ConfigError, match=r"run\.toml: data\.partition: expected one of 'iid', 'dirichlet'") as info:
        load_config(path)
    assert info.value.key == "data.partition"


# ----------------------------------------------------------------------------- overrides


def test_with_overrides():
    cfg = RunConfig()
    new = cfg.with_overrides(**{"training.rounds": 1, "lora.trunk.r": 4, "model.cut": [1, 3]})
    assert new.training.rounds == 1 and new.lora.trunk.r == 4 and new.model.cut == (1, 3)
    assert new.lora.bottom.r == 8 and new.training.lr == cfg.training.lr
    assert cfg.training.rounds == 3  # unchanged: frozen
    assert cfg.with_overrides() == cfg


def test_with_overrides_applies_related_keys_together():
    cfg = RunConfig().with_overrides(**{"transport.heartbeat_s": 100, "transport.timeout_s": 200})
    assert (cfg.transport.heartbeat_s, cfg.transport.timeout_s) == (100.0, 200.0)
    with pytest.raises(ConfigError, match=r"transport\.timeout_s: expected a number > transport\.heartbeat_s"):
        RunConfig().with_overrides(**{"transport.heartbeat_s": 100})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"training.round": 1}, r"unknown key 'training\.round' \(known keys in \[training\]: .*did you mean 'rounds'"),
        ({"trainig.rounds": 1}, r"unknown table \[trainig\]"),
        ({"training.rounds.x": 1}, r"unknown key 'training\.rounds\.x'"),
        ({"training": 1}, r"'training' is a table, not a key"),
        ({"training.rounds": 0}, r"^training\.rounds: expected an integer >= 1, got 0$"),
        ({"lora.bottom.r": True}, r"^lora\.bottom\.r: expected an integer >= 1, got true \(boolean\)$"),
        ({"aggregation.stage_timeout_s": -1.0}, r"^aggregation\.stage_timeout_s: expected a number > 0"),
    ],
)
def test_with_overrides_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig().with_overrides(**overrides)


def test_parse_overrides():
    got = parse_overrides(["training.rounds=1", "model.name=tiny-gpt2", "model.cut=[1, 3]", "training.lr = 1e-4"])
    assert got == {"training.rounds": 1, "model.name": "tiny-gpt2", "model.cut": [1, 3], "training.lr": 1e-4}
    cfg = RunConfig().with_overrides(**got)
    assert cfg.model.cut == (1, 3) and cfg.training.lr == 1e-4
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        parse_overrides(["training.rounds"])


# ----------------------------------------------------------------------------- LoRA and hash


def test_to_split_lora():
    from splitfed.models.lora import LoraSpec, SplitLoraConfig

    cfg = parse(
        "[lora.bottom]\nenabled = false\n"
        "[lora.trunk]\nr = 4\nalpha = 8\ndropout = 0.1\ntarget_modules = ['q_proj', 'k_proj']\n"
    )
    split = cfg.lora.to_split_lora()
    assert isinstance(split, SplitLoraConfig)
    assert split.bottom is None
    assert split.trunk == LoraSpec(r=4, alpha=8.0, dropout=0.1, target_modules=("q_proj", "k_proj"))
    assert split.top == LoraSpec(r=8, alpha=16.0, dropout=0.0, target_modules=None)  # [] -> architecture default


def test_hash_ignores_local_paths_and_tracks_training():
    base = RunConfig()
    h = base.hash()
    assert len(h) == 64 and int(h, 16) >= 0
    assert h == RunConfig().hash() == parse(dump_toml(base)).hash()
    local = base.with_overrides(
        **{
            "run.dir": "elsewhere",
            "transport.endpoint": "tcp://10.0.0.1:7000",
            "transport.keys_dir": "/k",
            "model.cache_dir": "/c",
        }
    )
    assert local.hash() == h
    assert base.with_overrides(**{"training.rounds": 4}).hash() != h
    assert base.with_overrides(**{"lora.trunk.r": 4}).hash() != h
    assert base.with_overrides(**{"transport.compression": "fp16"}).hash() != h


def test_connect_timeout_is_local_and_positive():
    cfg = RunConfig()
    assert cfg.transport.connect_timeout_s == 30.0
    assert cfg.with_overrides(**{"transport.connect_timeout_s": 2}).hash() == cfg.hash()
    with pytest.raises(ConfigError, match=r"^transport\.connect_timeout_s"):
        cfg.with_overrides(**{"transport.connect_timeout_s": 0})


# ----------------------------------------------------------------------------- [generate]


def test_generate_table_loads_and_validates(tmp_path):
    from splitfed.config import GenerationSettings

    cfg = parse('[generate]\nmax_new_tokens = 16\ndo_sample = true\ntop_p = 0.9\nstop = ["\\n\\n"]\nseed = 7\n')
    assert cfg.generate == GenerationSettings(max_new_tokens=16, do_sample=True, top_p=0.9, stop=("\n\n",), seed=7)
    assert cfg.training == RunConfig().training and parse("").generate == GenerationSettings()
    assert parse_config(tomllib.loads(dump_toml(cfg))) == cfg
    assert cfg.with_overrides(**{"generate.top_k": 5}).generate.top_k == 5
    path = tmp_path / "run.toml"
    path.write_text("[generate]\ntemperature = 0\n")
    with pytest.raises(ConfigError, match=r"run\.toml: generate\.temperature: expected a number > 0, got 0$") as err:
        load_config(path)
    assert err.value.key == "generate.temperature"
    with pytest.raises(ConfigError, match=r"unknown key 'generate\.max_tokens'.*did you mean 'max_new_tokens'"):
        parse("[generate]\nmax_tokens = 3\n")
    with pytest.raises(ConfigError, match=r"^generate\.seed: expected an integer >= 0, got -1"):
        parse("[generate]\nseed = -1\n")
    with pytest.raises(ConfigError, match=r"unknown top-level key 'max_new_tokens'.*did you mean \[generate\]"):
        parse("max_new_tokens = 3\n")


def test_generate_is_the_inference_settings_class():
    from splitfed.config import GenerationSettings
    from splitfed.inference import GenerationSettings as FromInference
    from splitfed.inference.settings import GenerationSettings as FromSettings

    assert GenerationSettings is FromInference is FromSettings


def test_generate_table_is_left_out_of_the_hash():
    base = RunConfig()
    sampled = base.with_overrides(
        **{"generate.max_new_tokens": 8, "generate.do_sample": True, "generate.seed": 3, "generate.stop": ["x"]}
    )
    assert sampled.hash() == base.hash()
    assert sampled.key_digests() == base.key_digests()
    assert "generate" not in base.agreed() and "generate" in base.to_dict()
    assert not any(key.startswith("generate.") for key in base.key_digests())
    assert parse(dump_toml(sampled)).hash() == base.hash()


def test_every_generate_key_is_documented():
    text = dump_toml(RunConfig(), comments=True)
    section = text[text.index("\n[generate]\n") :]
    for f in dataclasses.fields(RunConfig().generate):
        assert f.metadata["help"] and f"# {f.metadata['help']}" in section, f.name
    assert "# seed: unset; an integer >= 0" in section  # an unset key is shown, commented out
    example = tomllib.loads(EXAMPLE.read_text())
    assert "generate" in example and parse_config(example).generate == RunConfig().generate
