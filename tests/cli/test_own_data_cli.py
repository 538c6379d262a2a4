"""Bad model directories and data files: one line naming the file (and row), exit 2, nothing trained.

`splitfed client` reads its model and data before it writes or sends anything, so each case
runs in-process without a server.
"""

from __future__ import annotations

import json

import pytest
from splitfed_testing import make_model_dir, tiny_config

from splitfed.cli.main import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m") / "llama", "llama")


def _client(tmp_path, capsys, model, **local) -> tuple[int, str]:
    args = ["client", "--client-id", "0", "--no-progress", "--set", f"run.dir={tmp_path / 'run'}"]
    args += ["--set", f"model.path={model}", "--set", "model.cut=[1, 3]"]
    for key, value in local.items():
        args += ["--set", f"{key.replace('__', '.')}={value}"]
    rc = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "metrics").exists()  # nothing written, nothing trained
    return rc, err.strip()


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = [{"prompt": "Q: dose?", "completion": " 20 mg."}] * 4


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.jsonl", None, ["missing.jsonl"]),
        ("notes.xlsx", "a,b\n", ["notes.xlsx", ".jsonl"]),
        ("nofield.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c"}], ["nofield.jsonl", "2", "completion"]),
        ("empty.jsonl", "", ["empty.jsonl"]),
        ("broken.jsonl", '{"text": "ok"}\n{"text": oops}\n', ["broken.jsonl", "2"]),
        ("unknown.csv", "note,summary\nx,y\n", ["unknown.csv", "note"]),
        (
            "roles.jsonl",
            [{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}],
            ["roles.jsonl", "1", "assistant"],
        ),
    ],
)
def test_bad_data_file_is_one_line_naming_it(tmp_path, capsys, model_dir, name, content, expected):
    path = tmp_path / name
    if isinstance(content, list):
        _jsonl(path, content)
    elif content is not None:
        path.write_text(content)
    rc, err = _client(tmp_path, capsys, model_dir, data__train=path)
    assert rc == 2
    assert err.count("\n") == 0 and err.startswith("splitfed: error:"), err
    for word in expected:
        assert word in err, err


def test_messages_need_a_chat_template(tmp_path, capsys):
    model = make_model_dir(tmp_path / "no-template", "llama", chat_template=False)
    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    rc, err = _client(tmp_path, capsys, model, data__train=_jsonl(tmp_path / "chat.jsonl", chat))
    assert rc == 2 and "chat.jsonl" in err and "chat template" in err, err


def test_eval_file_errors_name_the_eval_file(tmp_path, capsys, model_dir):
    train = _jsonl(tmp_path / "train.jsonl", GOOD)
    rc, err = _client(tmp_path, capsys, model_dir, data__train=train, data__eval=tmp_path / "held.jsonl")
    assert rc == 2 and "held.jsonl" in err, err


def test_model_directory_without_weights(tmp_path, capsys, model_dir):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    for f in bare.glob("*.safetensors"):
        f.unlink()
    rc, err = _client(tmp_path, capsys, bare, data__train=_jsonl(tmp_path / "t.jsonl", GOOD))
    assert rc == 2 and str(bare) in err and "safetensors" in err, err


def test_model_directory_without_tokenizer(tmp_path, capsys):
    model = make_model_dir(tmp_path / "no-tok", "llama", tokenizer=False)
    rc, err = _client(tmp_path, capsys, model, data__train=_jsonl(tmp_path / "t.jsonl", GOOD))
    assert rc == 2 and str(model) in err and "tokenizer" in err, err


def test_unsupported_architecture_names_the_supported_ones(tmp_path, capsys, model_dir):
    from transformers import BertForMaskedLM

    from splitfed.models.local import SUPPORTED_MODEL_TYPES

    bert = tmp_path / "bert"
    BertForMaskedLM(tiny_config("bert")).save_pretrained(bert)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bert / f).write_bytes((model_dir / f).read_bytes())
    rc, err = _client(tmp_path, capsys, bert, data__train=_jsonl(tmp_path / "t.jsonl", GOOD))
    assert rc == 2 and str(bert) in err and "bert" in err, err
    assert all(t in err for t in SUPPORTED_MODEL_TYPES[:3]), err


def test_data_check_reports_format_and_truncation(tmp_path, capsys, model_dir):
    rows = [{"prompt": "Summarise: " + "word " * 40, "completion": " short."}, *GOOD]
    path = _jsonl(tmp_path / "notes.jsonl", rows)
    assert main(["data", "check", str(path), "--model", str(model_dir), "--max-length", "16"]) == 0
    out = capsys.readouterr().out
    assert "5 records, format prompt_completion" in out and "1 truncated" in out, out
