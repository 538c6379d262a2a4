"""[generate] settings: defaults, TOML table, CLI overrides and errors that name the key."""

import pytest

from splitfed.config import ConfigError
from splitfed.inference import GenerationSettings


def test_defaults():
    s = GenerationSettings()
    assert (s.max_new_tokens, s.do_sample, s.temperature, s.top_k, s.top_p) == (64, False, 1.0, 0, 1.0)
    assert (s.repetition_penalty, s.stop, s.seed) == (1.0, (), None)


def test_from_table_and_overrides():
    s = GenerationSettings.from_table({"max_new_tokens": 5, "do_sample": True, "stop": ["\n\n"], "seed": 7})
    assert s == GenerationSettings(max_new_tokens=5, do_sample=True, stop=("\n\n",), seed=7)
    t = s.with_overrides({"generate.top_k": 4, "temperature": 2})
    assert (t.top_k, t.temperature, t.max_new_tokens, t.seed) == (4, 2.0, 5, 7)
    assert isinstance(t.temperature, float)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"max_new_tokens": 0}, "generate.max_new_tokens: expected an integer >= 1, got 0"),
        ({"temperature": 0}, "generate.temperature: expected a number > 0, got 0"),
        ({"top_p": 1.5}, "generate.top_p: expected a number > 0 <= 1, got 1.5"),
        ({"top_k": -1}, "generate.top_k: expected an integer >= 0, got -1"),
        ({"repetition_penalty": -1.0}, "generate.repetition_penalty: expected a number > 0, got -1.0"),
        ({"stop": [""]}, "generate.stop: expected a list of non-empty strings, got ['']"),
        ({"seed": -3}, "generate.seed: expected an integer >= 0, got -3"),
        ({"do_sample": 1}, "generate.do_sample: expected a boolean (true or false), got 1 (integer)"),
    ],
)
def test_errors_name_key_expected_and_got(bad, message):
    with pytest.raises(ConfigError) as err:
        GenerationSettings.from_table(bad)
    assert str(err.value) == message
    with pytest.raises(ConfigError) as err:
        GenerationSettings().with_overrides({f"generate.{k}": v for k, v in bad.items()})
    assert str(err.value) == message


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown key 'generate.max_tokens'.*did you mean 'max_new_tokens'"):
        GenerationSettings.from_table({"max_tokens": 3})
    with pytest.raises(ConfigError, match="unknown key 'generate.topk'"):
        GenerationSettings().with_overrides({"generate.topk": 3})


def test_frozen():
    with pytest.raises(AttributeError):
        GenerationSettings().max_new_tokens = 3  # type: ignore[misc]
