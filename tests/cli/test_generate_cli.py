"""`splitfed generate` argument handling: prompts from flags and files, generation settings."""

from __future__ import annotations

import pytest

from splitfed.cli.generate import read_prompts, settings_from
from splitfed.cli.main import build_parser, main
from splitfed.errors import UsageError


def _args(*argv: str):
    return build_parser().parse_args(["generate", "--client-id", "0", *argv])


def test_prompts_come_from_flags_then_the_file(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first line\n\n  second line\n")
    assert read_prompts(_args("--prompt", "a", "--prompts-file", str(txt))) == ["a", "first line", "  second line"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "x"}\n{"prompt": "y", "id": 2}\n')
    assert read_prompts(_args("--prompts-file", str(jsonl))) == ["x", "y"]


@pytest.mark.parametrize(
    "content, message",
    [('{"text": "x"}\n', 'p.jsonl:1: expected a JSON object with a "prompt" field'), ("not json\n", "p.jsonl:1")],
)
def test_a_bad_prompts_file_names_the_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        read_prompts(_args("--prompts-file", str(path)))


def test_no_prompt_and_a_missing_file_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UsageError, match="no prompt"):
        read_prompts(_args())
    assert main(["generate", "--client-id", "0", "--prompts-file", str(tmp_path / "none.txt")]) == 2
    assert "--prompts-file" in capsys.readouterr().err


def test_settings_take_the_flags_and_refuse_bad_values():
    s = settings_from(_args("--max-new-tokens", "5", "--do-sample", "--top-p", "0.9", "--stop", "\n", "--seed", "3"))
    assert (s.max_new_tokens, s.do_sample, s.top_p, s.stop, s.seed) == (5, True, 0.9, ("\n",), 3)
    assert settings_from(_args()).max_new_tokens == 64 and not settings_from(_args()).do_sample
    with pytest.raises(UsageError, match="top_p"):
        settings_from(_args("--top-p", "1.5"))
    with pytest.raises(UsageError, match="max_new_tokens"):
        settings_from(_args("--max-new-tokens", "0"))


def test_flags_override_the_toml_generate_table_which_overrides_the_defaults():
    from splitfed.config import GenerationSettings, parse_config

    toml = parse_config({"generate": {"max_new_tokens": 12, "do_sample": True, "top_k": 5, "stop": ["END"]}}).generate
    s = settings_from(_args(), toml)  # no flag: the TOML's values, defaults for the rest
    assert s == GenerationSettings(max_new_tokens=12, do_sample=True, top_k=5, stop=("END",))
    s = settings_from(_args("--max-new-tokens", "3", "--stop", "\n", "--temperature", "0.5"), toml)
    assert (s.max_new_tokens, s.stop, s.temperature) == (3, ("\n",), 0.5)  # flags win
    assert (s.do_sample, s.top_k, s.top_p) == (True, 5, 1.0)  # unset flags keep the TOML, then the default
    assert not settings_from(_args("--no-do-sample"), toml).do_sample
    assert settings_from(_args("--do-sample"), GenerationSettings()).do_sample
    with pytest.raises(UsageError, match="generate.top_k"):
        settings_from(_args("--top-k", "-1"), toml)


def test_generate_reads_the_generate_table_of_its_config(tmp_path, monkeypatch):
    import splitfed.client.generator as generator

    seen = {}

    class FakeLM:
        def __init__(self, cfg, *args, **kwargs):
            self.name, self.base_model, self.adapter = "client-0", "base", "adapter"
            self.last_session = None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def generate_text(self, prompts, settings, **kwargs):
            seen["settings"] = settings
            return ["" for _ in prompts]

    monkeypatch.setattr(generator, "SplitLM", FakeLM)
    path = tmp_path / "run.toml"
    path.write_text("[generate]\nmax_new_tokens = 9\ntop_p = 0.5\n")
    argv = ["generate", "--config", str(path), "--client-id", "0", "--prompt", "a", "--prompt", "b"]
    assert main([*argv, "--top-p", "0.25"]) == 0
    assert (seen["settings"].max_new_tokens, seen["settings"].top_p) == (9, 0.25)
    assert main([*argv, "--set", "generate.max_new_tokens=4"]) == 0
    assert (seen["settings"].max_new_tokens, seen["settings"].top_p) == (4, 0.5)


def _config(tmp_path, **extra) -> str:
    from splitfed_testing import make_model_dir

    from splitfed.config import dump_toml, parse_config

    model = make_model_dir(tmp_path / "model", "llama")
    cfg = parse_config({"run": {"dir": str(tmp_path / "run")}, "model": {"path": str(model), "cut": [1, 3]}, **extra})
    path = tmp_path / "run.toml"
    path.write_text(dump_toml(cfg))
    return str(path)


def test_without_a_trained_adapter_generate_says_what_to_do(tmp_path, capsys):
    assert main(["generate", "--config", _config(tmp_path), "--client-id", "0", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "no PEFT adapter at" in err and "--base" in err and "Traceback" not in err


def test_with_privacy_on_a_damaged_inference_ledger_stops_generate_before_it_connects(tmp_path, capsys):
    cfg = _config(tmp_path, privacy={"enabled": True, "activations": {"enabled": True, "epsilon": 8.0}})
    ledger = tmp_path / "run" / "privacy" / "inference" / "client-0.jsonl"
    ledger.parent.mkdir(parents=True)
    ledger.write_text("{not json\n")
    assert main(["generate", "--config", cfg, "--client-id", "0", "--prompt", "x", "--base"]) == 2
    err = capsys.readouterr().err
    assert f"{ledger}:1: not a complete ledger entry" in err and "Traceback" not in err
