"""Tests for reading local data files into validated records (real files in tmp_path, no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from splitfed.data import DataError, FieldMap, Records, load_records, split_eval

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the dose?"},
    {"role": "assistant", "content": "20 mg twice a day."},
]
ROWS = {
    "text": [{"text": "The patient reports mild headache."}, {"text": "Follow up in two weeks."}],
    "prompt_completion": [
        {"prompt": "Question: dose?", "completion": " 20 mg."},
        {"prompt": "", "completion": "NA"},  # an empty prompt is allowed; "NA" stays text
    ],
    "messages": [{"messages": CHAT}, {"messages": CHAT[1:]}],
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def data_error(path, **kwargs) -> str:
    """The message of the `DataError` that loading `path` raises; checks it is one clean line naming the file."""
    with pytest.raises(DataError) as info:
        load_records(path, **kwargs)
    msg = str(info.value)
    assert Path(path).name in msg and "\n" not in msg and "Traceback" not in msg
    return msg


# --- reading each file type in each format ---------------------------------------------------------


@pytest.mark.parametrize("fmt", list(ROWS))
def test_jsonl(tmp_path: Path, fmt: str) -> None:
    rows = [{**r, "id": i} for i, r in enumerate(ROWS[fmt])]  # extra fields are dropped
    records = load_records(write_jsonl(tmp_path / "d.jsonl", rows))
    assert records.format == fmt and records.rows == ROWS[fmt]
    assert records.where(1) == f"{tmp_path / 'd.jsonl'} line 2"


@pytest.mark.parametrize("fmt", list(ROWS))
def test_parquet(tmp_path: Path, fmt: str) -> None:
    Dataset.from_list(ROWS[fmt]).to_parquet(tmp_path / "d.parquet")
    records = load_records(tmp_path / "d.parquet")
    assert records.format == fmt and records.rows == ROWS[fmt] and len(records) == 2


@pytest.mark.parametrize("fmt", ["text", "prompt_completion"])
def test_csv(tmp_path: Path, fmt: str) -> None:
    Dataset.from_list(ROWS[fmt]).to_csv(tmp_path / "d.csv", index=False)
    records = load_records(tmp_path / "d.csv")
    assert records.format == fmt and records.rows == ROWS[fmt]


def test_csv_cells_stay_text(tmp_path: Path) -> None:
    """Numbers, NA/None/null and empty cells are strings, not numbers or nulls (pandas' defaults)."""
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n5,NA\n,None\nnull,"two\nlines"\n', encoding="utf-8")
    assert load_records(path).rows == [
        {"prompt": "5", "completion": "NA"},
        {"prompt": "", "completion": "None"},
        {"prompt": "null", "completion": "two\nlines"},
    ]


def test_json_array(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS["prompt_completion"], indent=2), encoding="utf-8")
    records = load_records(path)
    assert records.rows == ROWS["prompt_completion"] and records.where(0).endswith("d.json row 1")


def test_save_to_disk(tmp_path: Path) -> None:
    Dataset.from_list(ROWS["messages"]).save_to_disk(tmp_path / "ds")
    assert load_records(tmp_path / "ds").rows == ROWS["messages"]
    splits = {"train": Dataset.from_list(ROWS["text"]), "test": Dataset.from_list(ROWS["text"][:1])}
    DatasetDict(splits).save_to_disk(tmp_path / "dd")
    records = load_records(tmp_path / "dd")
    assert records.format == "text" and records.rows == ROWS["text"]


def test_text_paragraphs(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("First note,\nsecond line.\n\nSecond note.\n\n\n\n  \n\nThird note.  \n", encoding="utf-8")
    records = load_records(path)
    assert records.format == "text"
    assert records.rows == [{"text": "First note,\nsecond line."}, {"text": "Second note."}, {"text": "Third note."}]
    (tmp_path / "notes.md").write_text("# Title\n\nBody text.", encoding="utf-8")
    assert load_records(tmp_path / "notes.md").rows == [{"text": "# Title"}, {"text": "Body text."}]


def test_field_map(tmp_path: Path) -> None:
    Dataset.from_list([{"note": "Pt stable.", "summary": " Stable."}]).to_csv(tmp_path / "d.csv", index=False)
    records = load_records(tmp_path / "d.csv", fields=FieldMap(prompt="note", completion="summary"))
    assert records.format == "prompt_completion"
    assert records.rows == [{"prompt": "Pt stable.", "completion": " Stable."}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"conv": CHAT, "body": "x"}])
    assert load_records(path, fields=FieldMap(messages="conv"), format="messages").rows == [{"messages": CHAT}]


def test_detection_order_and_explicit_format(tmp_path: Path) -> None:
    both = {"messages": CHAT, "prompt": "p", "completion": "c", "text": "t"}
    path = write_jsonl(tmp_path / "d.jsonl", [both])
    assert load_records(path).format == "messages"
    assert load_records(path, format="prompt_completion").rows == [{"prompt": "p", "completion": "c"}]
    assert load_records(path, format="text").rows == [{"text": "t"}]


def test_path_with_glob_characters(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "notes[1]*.jsonl", ROWS["text"])
    assert load_records(path).rows == ROWS["text"]


def test_no_cache_left_behind(tmp_path: Path) -> None:
    import datasets

    cache = Path(datasets.config.HF_DATASETS_CACHE)
    before = sorted(cache.rglob("*")) if cache.exists() else []
    load_records(write_jsonl(tmp_path / "d.jsonl", ROWS["text"]))
    assert (sorted(cache.rglob("*")) if cache.exists() else []) == before


# --- bad input --------------------------------------------------------------------------------------


def test_missing_and_unsupported(tmp_path: Path) -> None:
    assert "no such file" in data_error(tmp_path / "nope.jsonl")
    (tmp_path / "d.xlsx").write_bytes(b"x")
    assert ".jsonl" in data_error(tmp_path / "d.xlsx") and ".parquet" in data_error(tmp_path / "d.xlsx")
    (tmp_path / "plain").mkdir()
    assert "save_to_disk" in data_error(tmp_path / "plain")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.jsonl", ""),
        ("d.jsonl", "\n  \n"),
        ("d.json", "[]"),
        ("d.csv", ""),
        ("d.csv", "prompt,completion\n"),
        ("d.txt", ""),
        ("d.txt", "\n\n  \n\n"),
    ],
)
def test_empty(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    assert "empty" in data_error(tmp_path / name)


def test_empty_parquet_and_saved(tmp_path: Path) -> None:
    Dataset.from_dict({"text": []}).to_parquet(tmp_path / "d.parquet")
    assert "empty" in data_error(tmp_path / "d.parquet")
    DatasetDict({"valid": Dataset.from_list(ROWS["text"])}).save_to_disk(tmp_path / "dd")
    assert "'train'" in data_error(tmp_path / "dd") and "valid" in data_error(tmp_path / "dd")


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": b}\n', encoding="utf-8")
    assert "notes.jsonl line 4: invalid JSON" in data_error(path)
    path.write_text('{"text": "a"}\n[1, 2]\n', encoding="utf-8")
    assert "notes.jsonl line 2: expected a JSON object, got list" in data_error(path)
    path.write_text('[{"text": "a"},\n {"text": }]', encoding="utf-8")
    assert "notes.jsonl line 2: invalid JSON" in data_error(path)


def test_not_utf8_and_not_parquet(tmp_path: Path) -> None:
    for name in ("d.jsonl", "d.csv", "d.txt"):
        (tmp_path / name).write_bytes(b"\xff\xfe\x00text")
        assert "UTF-8" in data_error(tmp_path / name)
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    assert "Parquet" in data_error(tmp_path / "d.parquet")


def test_csv_structure(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\na,b\nc,d,e\n", encoding="utf-8")
    assert "d.csv row 2: expected 2 fields" in data_error(path)
    path.write_text("prompt,prompt\na,b\n", encoding="utf-8")
    assert "distinct column names" in data_error(path)
    path.write_text("prompt,answer\na,b\n", encoding="utf-8")
    msg = data_error(path)
    assert "'prompt', 'answer'" in msg and "completion_field" in msg and "text_field" in msg
    assert "prompt_field" in msg and "messages_field" in msg
    path.write_text("prompt,completion\na,\n", encoding="utf-8")
    assert "d.csv row 1: completion: expected non-empty text" in data_error(path)


def test_explicit_format_needs_its_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS["text"])
    msg = data_error(path, format="prompt_completion")
    assert "'prompt' and 'completion'" in msg and "found 'text'" in msg and "prompt_field" in msg
    assert "(one per paragraph)" in data_error(
        (tmp_path / "d.txt").write_text("a", encoding="utf-8") and tmp_path / "d.txt", format="messages"
    )


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"text": "  \n"}, "text: expected non-empty text"),
        ({"text": None}, "text: expected a string, got null"),
        ({"text": 5}, "text: expected a string, got int 5"),
        ({"prompt": "p", "completion": ""}, "completion: expected non-empty text"),
        ({"prompt": None, "completion": "c"}, "prompt: expected a string, got null"),
        ({"prompt": ["p"], "completion": "c"}, "prompt: expected a string, got list"),
    ],
)
def test_bad_rows(tmp_path: Path, row: dict, expected: str) -> None:
    good = {k: "ok" for k in row}
    path = write_jsonl(tmp_path / "notes.jsonl", [good, good, row])
    assert f"notes.jsonl line 3: {expected}" in data_error(path)


U, A, S = ({"role": r, "content": "x"} for r in ("user", "assistant", "system"))


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([U, U], "messages turn 2: expected 'assistant' after 'user', got 'user'"),
        ([A], "messages turn 1: expected 'user' first, got 'assistant'"),
        ([S, A], "messages turn 2: expected 'user' after 'system', got 'assistant'"),
        ([U, A, S], "messages turn 3: expected 'user' after 'assistant', got 'system' (a system turn may only"),
        ([U, {"role": "tool", "content": "x"}], "messages turn 2: role: expected one of 'system', 'user', 'assistant'"),
        ([U, {"role": "assistant", "content": None}], "messages turn 2: content: expected a string, got null"),
        ([U, {"role": "assistant", "content": " "}], "messages turn 2: assistant content: expected non-empty"),
        ([U, "hi"], "messages turn 2: expected a {'role', 'content'} object, got 'hi'"),
        ([S, U], "messages: expected at least one 'assistant' turn, got none"),
        ([], "messages: expected a non-empty list"),
        ("hello", "messages: expected a non-empty list"),
    ],
)
def test_bad_conversations(tmp_path: Path, messages, expected: str) -> None:
    path = write_jsonl(tmp_path / "notes.jsonl", [{"messages": [U, A]}] * 6 + [{"messages": messages}])
    assert f"notes.jsonl line 7: {expected}" in data_error(path)


def test_conversation_may_end_with_user(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [S, U, A, U]}])
    assert load_records(path).rows == [{"messages": [S, U, A, U]}]


def test_bad_rows_in_parquet_and_saved(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": None}]
    Dataset.from_list(rows).to_parquet(tmp_path / "d.parquet")
    assert "d.parquet row 2: completion: expected a string, got null" in data_error(tmp_path / "d.parquet")
    Dataset.from_list([{"messages": [U, A]}, {"messages": [U, U]}]).save_to_disk(tmp_path / "ds")
    assert "ds row 2: messages turn 2" in data_error(tmp_path / "ds")


# --- held-out split -----------------------------------------------------------------------------------


def test_split_eval(tmp_path: Path) -> None:
    rows = [{"text": f"note {i}"} for i in range(10)]
    records = load_records(write_jsonl(tmp_path / "d.jsonl", rows))
    train, held = split_eval(records, 0.3, seed=7)
    assert (len(train), len(held)) == (7, 3)
    assert sorted(r["text"] for r in train.rows + held.rows) == sorted(r["text"] for r in rows)
    assert train.rows == [r for r in rows if r not in held.rows]  # file order kept
    for side in (train, held):
        assert side.format == "text" and side.path == records.path
        assert all(side.where(i).endswith(f"line {int(r['text'].split()[1]) + 1}") for i, r in enumerate(side.rows))
    again = split_eval(records, 0.3, seed=7)
    assert again[1].rows == held.rows and split_eval(records, 0.3, seed=8)[1].rows != held.rows
    assert len(split_eval(records, 0.01, seed=0)[1]) == 1


def test_split_eval_errors() -> None:
    one = Records(Path("d.jsonl"), "text", [{"text": "a"}])
    two = Records(Path("d.jsonl"), "text", [{"text": "a"}, {"text": "b"}])
    for records, fraction in [(one, 0.5), (two, 0.9), (two, 0.0), (two, 1.0)]:
        with pytest.raises(DataError, match=r"^d\.jsonl: "):
            split_eval(records, fraction, seed=0)
