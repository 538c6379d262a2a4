"""RAG party and querier configs: TOML round trips, error messages, and the files `build_index` writes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from splitfed.config import ConfigError
from splitfed.config.toml import dump_toml
from splitfed.rag.config import PartyAddress, PartyConfig, QuerierConfig, load_party_config, load_querier_config
from splitfed.rag.corpus import Document
from splitfed.rag.index import build_news_demo
from splitfed.transport.keys import read_public_key_file


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_party_config_round_trip(tmp_path):
    cfg = PartyConfig(
        name="party-0",
        index=tmp_path / "party-0",
        endpoint="ipc:///tmp/p0.sock",
        keys_dir=tmp_path / 'keys "quoted"\\0',
        noise_std=0.25,
        k_max=3,
    )
    assert cfg.index == str(tmp_path / "party-0") and isinstance(cfg.keys_dir, str)
    text = dump_toml(cfg)
    assert tomllib.loads(text) == {
        "name": "party-0",
        "index": str(tmp_path / "party-0"),
        "endpoint": "ipc:///tmp/p0.sock",
        "keys_dir": str(tmp_path / 'keys "quoted"\\0'),
        "noise_std": 0.25,
        "k_max": 3,
        "delta": 1e-5,
        "max_epsilon": 0.0,
        "ledger_dir": "",
    }
    assert load_party_config(write(tmp_path / "p.toml", text)) == cfg
    assert load_party_config(write(tmp_path / "c.toml", dump_toml(cfg, comments=True))) == cfg


def test_party_config_defaults(tmp_path):
    path = write(tmp_path / "p.toml", 'name = "a"\nindex = "idx"\nendpoint = "tcp://127.0.0.1:6000"\nk_max = 4\n')
    cfg = load_party_config(path)
    assert (cfg.keys_dir, cfg.noise_std, cfg.k_max) == ("", 0.0, 4)
    assert isinstance(cfg.noise_std, float)


def test_querier_config_round_trip(tmp_path):
    cfg = QuerierConfig(
        [PartyAddress("p0", "tcp://127.0.0.1:6000", tmp_path / "p0.key"), PartyAddress("p1", "tcp://127.0.0.1:6001")],
        keys_dir=tmp_path / "me",
        name="me",
        timeout_s=12.5,
    )
    assert cfg.parties[0].public_key == str(tmp_path / "p0.key") and cfg.parties[1].public_key is None
    text = dump_toml(cfg)
    assert text.count("[[party]]") == 2
    assert tomllib.loads(text) == {
        "keys_dir": str(tmp_path / "me"),
        "name": "me",
        "timeout_s": 12.5,
        "party": [
            {"name": "p0", "endpoint": "tcp://127.0.0.1:6000", "public_key": str(tmp_path / "p0.key")},
            {"name": "p1", "endpoint": "tcp://127.0.0.1:6001"},
        ],
    }
    assert load_querier_config(write(tmp_path / "q.toml", text)) == cfg
    assert load_querier_config(write(tmp_path / "c.toml", dump_toml(cfg, comments=True))) == cfg


PARTY = 'name = "a"\nindex = "idx"\nendpoint = "tcp://127.0.0.1:6000"\n'
ADDRESS = '[[party]]\nname = "a"\nendpoint = "tcp://127.0.0.1:6000"\n'


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('name = "a"\nendpoint = "tcp://x:1"\n', "index", r"p\.toml: index: required key missing; expected a non"),
        (PARTY + "noise_std = -1\n", "noise_std", r"noise_std: expected a number >= 0, got -1$"),
        (PARTY + "k_max = 0\n", "k_max", r"k_max: expected an integer >= 1, got 0$"),
        (PARTY + "max_epsilon = 3\n", "max_epsilon", r"max_epsilon: a budget needs noise_std > 0"),
        (PARTY + "k_max = '3'\n", "k_max", r"k_max: expected an integer >= 1, got '3' \(string\)$"),
        (
            PARTY + "kmax = 3\n",
            "kmax",
            r"unknown key 'kmax' \(known keys: delta, endpoint, index, .*did you mean 'k_max'\?",
        ),
        (PARTY.replace("tcp://", "http://"), "endpoint", r"endpoint: expected a string starting with 'tcp://'"),
    ],
)
def test_party_config_errors(tmp_path, text, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_party_config(write(tmp_path / "p.toml", text))
    assert info.value.key == key


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("timeout_s = 3.0\n", "party", r"party: required key missing; expected at least one \[\[party\]\] table"),
        ("party = []\n", "party", r"party: expected at least one \[\[party\]\] table, got \[\]$"),
        (ADDRESS + ADDRESS, "party", r"party: expected distinct party names, got \['a', 'a'\]$"),
        ("timeout_s = 0\n" + ADDRESS, "timeout_s", r"timeout_s: expected a number > 0, got 0$"),
        (ADDRESS + 'endpoint2 = "x"\n', "party[0].endpoint2", r"unknown key 'party\[0\]\.endpoint2'"),
        (ADDRESS.replace("tcp://", "udp://"), "party[0].endpoint", r"party\[0\]\.endpoint: expected a string"),
        ('[[party]]\nname = "a"\n', "party[0].endpoint", r"party\[0\]\.endpoint: required key missing"),
    ],
)
def test_querier_config_errors(tmp_path, text, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_querier_config(write(tmp_path / "q.toml", text))
    assert info.value.key == key


def test_missing_file_and_direct_construction(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        load_querier_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"^party\.endpoint: expected a string starting with 'tcp://'"):
        PartyAddress("a", "localhost:6000")
    with pytest.raises(ConfigError, match=r"^noise_std: expected a number >= 0"):
        PartyConfig("a", "idx", "tcp://127.0.0.1:1", noise_std=-0.5)


class FakeEmbedder:
    def embed(self, texts, *, progress=None):
        v = np.random.default_rng(len(texts)).standard_normal((len(texts), 8)).astype(np.float32)
        if progress is not None:
            progress(len(texts))
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_news_demo_writes_per_party_keys_and_configs_that_load_back(tmp_path):
    docs = [Document(f"d{i}", f"title {i}", f"text {i}") for i in range(7)]
    seen = []
    result = build_news_demo(
        tmp_path / "rag", parties=3, docs=docs, base_port=7000, embedder=FakeEmbedder(), progress=seen.append
    )
    assert sum(seen) == 7 and [p.documents for p in result.parties] == [3, 2, 2]
    querier_key = read_public_key_file(tmp_path / "rag" / "querier" / "querier.key")
    assert result.querier_key.curve == querier_key.curve
    for k, party in enumerate(result.parties):
        root = tmp_path / "rag" / f"party-{k}"
        assert party.config_path == root / "party.toml"
        assert load_party_config(party.config_path) == party.config
        assert tomllib.loads(party.config_path.read_text()) == {
            "name": f"party-{k}",
            "index": str(root / "index"),
            "endpoint": f"tcp://127.0.0.1:{7000 + k}",
            "keys_dir": str(root / "keys"),
            "noise_std": 0.0,
            "k_max": 10,
            "delta": 1e-5,
            "max_epsilon": 0.0,
            "ledger_dir": "",
        }
        keys = root / "keys"
        # the party's own pair; only the querier's PUBLIC key in its allow-list; no other secret
        assert sorted(f.name for f in keys.iterdir()) == ["allowed", f"party-{k}.key", f"party-{k}.key_secret"]
        assert [f.name for f in (keys / "allowed").iterdir()] == ["querier.key"]
        assert read_public_key_file(keys / "allowed" / "querier.key").curve == querier_key.curve
        assert (Path(party.config.index) / "meta.json").is_file()
    assert result.querier_path == tmp_path / "rag" / "parties.toml"
    querier = load_querier_config(result.querier_path)
    assert querier == result.querier and querier.timeout_s == 30.0
    assert (querier.keys_dir, querier.name) == (str(tmp_path / "rag" / "querier"), "querier")
    for address, party in zip(querier.parties, result.parties, strict=True):
        assert (address.name, address.endpoint) == (party.config.name, party.config.endpoint)
        assert read_public_key_file(address.public_key).curve == party.public_key.curve
    secrets = sorted(f.name for f in (tmp_path / "rag").rglob("*_secret"))
    assert secrets == ["party-0.key_secret", "party-1.key_secret", "party-2.key_secret", "querier.key_secret"]
    # a second run keeps every key
    again = build_news_demo(tmp_path / "rag", parties=3, docs=docs, base_port=7000, embedder=FakeEmbedder())
    assert [p.public_key.curve for p in again.parties] == [p.public_key.curve for p in result.parties]
    assert not any(p.new_keys for p in again.parties) and again.querier_key.curve == querier_key.curve
