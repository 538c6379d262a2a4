"""A client's own data files, read into validated records in TRL's dataset formats.

Three record formats, as in TRL's ``SFTTrainer``: ``text`` (``{"text"}``, loss on every token),
``prompt_completion`` (``{"prompt", "completion"}``, loss on the completion) and ``messages``
(``{"messages": [{"role", "content"}, ...]}``, loss on the assistant turns). The user's field names
are mapped by a `FieldMap`; rows come back under the canonical keys with other fields dropped.

Files are read with Hugging Face ``datasets`` (``.jsonl``/``.json``, ``.csv``, ``.parquet``,
``.txt``/``.md`` one record per blank-line-separated paragraph, or a ``Dataset.save_to_disk``
directory), offline and with a throw-away cache so no copy of the private data stays behind.
Every user mistake is a one-line `DataError` naming the file and, where it applies, the row:
the JSONL line (1-based), the CSV data row (1-based, header not counted), the paragraph of a text
file, or the row of a Parquet file or saved data set.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Format = Literal["text", "prompt_completion", "messages"]
FORMATS: tuple[Format, ...] = ("text", "prompt_completion", "messages")
REQUIRED: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
}
ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".md")
_LOADER = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".md": "text"}
_CONFIG_KEY = {k: f"{k}_field" for k in ("text", "prompt", "completion", "messages")}
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


class DataError(ValueError):
    """A data file is missing, unreadable, or holds records that do not fit the expected format."""


@dataclass(frozen=True)
class FieldMap:
    """Names of the fields in the user's files (the ``[data] *_field`` keys of the config)."""

    text: str = "text"
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"

    def __post_init__(self) -> None:
        for key in ("text", "prompt", "completion", "messages"):
            name = getattr(self, key)
            if not isinstance(name, str) or not name:
                raise ValueError(f"FieldMap.{key}: expected a non-empty field name, got {name!r}")


@dataclass(frozen=True)
class Records:
    """Validated rows of one file under the canonical keys of `format`.

    ``locations[i]`` is where row ``i`` came from, counted in ``unit`` ("line", "row" or "paragraph").
    """

    path: Path
    format: Format
    rows: list[dict]
    unit: str = "row"
    locations: Sequence[int] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.locations:
            object.__setattr__(self, "locations", range(1, len(self.rows) + 1))

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        """``notes.jsonl line 7``: the file and place of row ``i`` (0-based), for error messages."""
        return f"{self.path} {self.unit} {self.locations[i]}"


def load_records(
    path: str | os.PathLike, *, fields: FieldMap = FieldMap(), format: Format | Literal["auto"] = "auto"
) -> Records:
    """Read and validate the records of one file or ``save_to_disk`` directory.

    ``format="auto"`` picks ``messages`` if that field is present, else ``prompt_completion`` if
    both its fields are, else ``text``. Raises `DataError` for every problem with the data.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        columns, raw, unit, locations = _read_saved(path)
    else:
        suffix = path.suffix.lower()
        if suffix not in _LOADER:
            raise DataError(
                f"{path}: unsupported file type {suffix or '(no extension)'!r}; expected one of "
                f"{', '.join(SUFFIXES)} or a directory written by Dataset.save_to_disk"
            )
        reader = {"json": _read_json, "csv": _read_csv, "parquet": _read_parquet, "text": _read_text}
        try:
            columns, raw, unit, locations = reader[_LOADER[suffix]](path)
        except OSError as exc:
            raise DataError(f"{path}: cannot read it: {exc.strerror or exc}") from None
        if _LOADER[suffix] == "text":
            if format not in ("auto", "text"):
                raise DataError(f"{path}: {suffix} files hold text records (one per paragraph), not {format}")
            fields = FieldMap(text="text")
    if not raw:
        raise DataError(f"{path}: no records (the data set is empty)")
    fmt = _detect(path, columns, fields, format)
    records = Records(path, fmt, raw, unit, locations)
    for i, row in enumerate(raw):
        try:
            raw[i] = _normalise(fmt, row, fields)
        except _RowError as exc:
            raise DataError(f"{records.where(i)}: {exc}") from None
    return records


def split_eval(records: Records, fraction: float, *, seed: int) -> tuple[Records, Records]:
    """(train, held-out): a seeded random ``fraction`` of the rows held out, file order kept on both sides.

    The held-out side has ``ceil(fraction * n)`` rows (as ``datasets``' ``train_test_split``); a
    side that would be empty is a `DataError`.
    """
    n = len(records.rows)
    if not 0 < fraction < 1:
        raise DataError(f"{records.path}: eval fraction must be in (0, 1), got {fraction!r}")
    n_eval = math.ceil(n * fraction - 1e-9)
    if n_eval >= n:
        raise DataError(
            f"{records.path}: holding out {fraction:g} of {n} records leaves no training records; "
            "add records or lower the fraction"
        )
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:n_eval]] = True

    def side(keep: bool) -> Records:
        idx = [i for i in range(n) if held[i] == keep]
        rows = [records.rows[i] for i in idx]
        return Records(records.path, records.format, rows, records.unit, [records.locations[i] for i in idx])

    return side(False), side(True)


# --------------------------------------------------------------------------- formats and validation


class _RowError(Exception):
    """What is wrong with one row (the caller adds the file and row)."""


def _detect(path: Path, columns: list[str], fields: FieldMap, format: str) -> Format:
    have = set(columns)
    found = ", ".join(repr(c) for c in columns[:12]) + (", ..." if len(columns) > 12 else "") or "none"
    if format == "auto":
        for fmt in FORMATS[::-1]:  # messages, prompt_completion, text
            if all(getattr(fields, k) in have for k in REQUIRED[fmt]):
                return fmt
        raise DataError(
            f"{path}: cannot tell the record format: expected a {fields.messages!r} field (messages), "
            f"{fields.prompt!r} and {fields.completion!r} (prompt_completion) or {fields.text!r} (text), "
            f"found {found}; map other names with [data] messages_field, prompt_field, completion_field or "
            "text_field"
        )
    missing = [k for k in REQUIRED[format] if getattr(fields, k) not in have]
    if missing:
        need = " and ".join(repr(getattr(fields, k)) for k in REQUIRED[format])
        keys = " and ".join(_CONFIG_KEY[k] for k in missing)
        raise DataError(
            f"{path}: format {format!r} needs field {need}, found {found}; map other names with [data] {keys}"
        )
    return format  # type: ignore[return-value]


def _normalise(fmt: Format, row: dict, fields: FieldMap) -> dict:
    if fmt == "text":
        return {"text": _text(row, fields.text, nonblank=True)}
    if fmt == "prompt_completion":
        return {
            "prompt": _text(row, fields.prompt, nonblank=False),
            "completion": _text(row, fields.completion, nonblank=True),
        }
    return {"messages": _messages(row.get(fields.messages), fields.messages)}


def _got(value: Any) -> str:
    if value is None:
        return "null (missing)"
    if isinstance(value, str):
        return repr(value[:40] + "..." if len(value) > 40 else value)
    if isinstance(value, bool | int | float):
        return f"{type(value).__name__} {value!r}"
    return type(value).__name__


def _text(row: dict, name: str, *, nonblank: bool) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise _RowError(f"{name}: expected a string, got {_got(value)}")
    if nonblank and not value.strip():
        raise _RowError(f"{name}: expected non-empty text, got {_got(value)}")
    return value


def _messages(value: Any, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _RowError(f"{name}: expected a non-empty list of {{'role', 'content'}} messages, got {_got(value)}")
    out: list[dict] = []
    previous = None
    for turn, msg in enumerate(value, 1):
        where = f"{name} turn {turn}"
        if not isinstance(msg, dict):
            raise _RowError(f"{where}: expected a {{'role', 'content'}} object, got {_got(msg)}")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise _RowError(f"{where}: role: expected one of {', '.join(map(repr, ROLES))}, got {_got(role)}")
        if not isinstance(content, str):
            raise _RowError(f"{where}: content: expected a string, got {_got(content)}")
        expected = "assistant" if previous == "user" else "user"
        if role != expected and not (role == "system" and turn == 1):
            after = f"after {previous!r}" if previous else "first"
            hint = " (a system turn may only come first)" if role == "system" else ""
            raise _RowError(f"{where}: expected {expected!r} {after}, got {role!r}{hint}")
        if role == "assistant" and not content.strip():
            raise _RowError(f"{where}: assistant content: expected non-empty text, got {_got(content)}")
        extra = {k: v for k, v in msg.items() if v is not None and k not in ("role", "content")}
        out.append({"role": role, "content": content, **extra})
        previous = role
    if not any(m["role"] == "assistant" for m in out):
        raise _RowError(f"{name}: expected at least one 'assistant' turn, got none")
    return out


# --------------------------------------------------------------------------- readers

Read = tuple[list[str], list[dict], str, Sequence[int]]  # columns, rows, unit, locations


def _datasets():
    """``datasets``, imported offline (~1 s, once) so that the CLI starts fast without data files."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    return datasets


@contextmanager
def _quiet(ds) -> Iterator[None]:
    """No progress bars or loader error logs (a failure becomes a `DataError` instead)."""
    bars, level = ds.is_progress_bar_enabled(), ds.logging.get_verbosity()
    ds.disable_progress_bars()
    ds.logging.set_verbosity(ds.logging.CRITICAL)
    try:
        yield
    finally:
        ds.logging.set_verbosity(level)
        if bars:
            ds.enable_progress_bars()


def _cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (datasets wraps the informative one)."""
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    return exc


def _chain_has(exc: BaseException, kind: type) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _failure(path: Path, what: str, exc: BaseException) -> DataError:
    if _chain_has(exc, UnicodeDecodeError):
        return DataError(f"{path}: expected UTF-8 text, got bytes that are not UTF-8")
    inner = _cause(exc)
    msg = (str(inner).strip().splitlines() or [type(inner).__name__])[0][:200]
    return DataError(f"{path}: could not read it as {what}: {msg}")


def _load(path: Path, kind: str, **options: Any) -> tuple[list[str], list[dict]]:
    """Columns and rows of one file read by a ``datasets`` loader, in memory, cache deleted after."""
    ds = _datasets()
    with tempfile.TemporaryDirectory(prefix="splitfed-data-") as cache, _quiet(ds):
        data = ds.load_dataset(
            kind,
            data_files=glob.escape(str(path.resolve())),  # a literal path, not a pattern
            split="train",
            cache_dir=cache,
            keep_in_memory=True,
            **options,
        )
        return list(data.column_names), data.to_list()


def _read_json(path: Path) -> Read:
    raw = path.read_bytes()
    body = raw.lstrip()
    if not body:
        return [], [], "line", ()
    array = body[:1] == b"["
    try:
        columns, rows = _load(path, "json")
    except Exception as exc:  # any loader failure becomes a DataError
        _find_bad_json(path, raw, array)
        raise _failure(path, "JSON", exc) from None
    if array:
        return columns, rows, "row", ()
    lines = raw.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    if len(lines) == len(rows):  # no blank lines: row i is line i + 1
        return columns, rows, "line", ()
    numbers = [i for i, line in enumerate(lines, 1) if line.strip()]
    if len(numbers) != len(rows):  # not one object per line after all: number the rows
        return columns, rows, "row", ()
    return columns, rows, "line", numbers


def _find_bad_json(path: Path, raw: bytes, array: bool) -> None:
    """Raise a `DataError` naming the first line that is not a JSON object (``json`` finds it, pyarrow
    only says "JSON parse error"); return if every line is fine."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: expected UTF-8 text, got bytes that are not UTF-8") from None
    if array:
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        for i, item in enumerate(items if isinstance(items, list) else [], 1):
            if not isinstance(item, dict):
                raise DataError(f"{path} row {i}: expected a JSON object, got {_got(item)}")
        return
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(item, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object, got {_got(item)}")


def _read_csv(path: Path) -> Read:
    """Every cell is read as a string (pandas would turn ``5`` into a number and ``NA`` or an empty
    cell into null); a record whose field count differs from the header's is refused, not shifted."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            n = 0
            for record in reader:
                if not record:
                    continue  # a blank line, skipped by the loader too
                n += 1
                if header is not None and len(record) != len(header):
                    raise DataError(
                        f"{path} row {n}: expected {len(header)} fields as in the header, got {len(record)}"
                    )
    except UnicodeDecodeError:
        raise DataError(f"{path}: expected UTF-8 text, got bytes that are not UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path}: could not read it as CSV: {exc}") from None
    if not header or n == 0:
        return header or [], [], "row", ()
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: expected distinct column names in the header, got {dupes} more than once")
    ds = _datasets()
    features = ds.Features({name: ds.Value("string") for name in header})
    try:
        columns, rows = _load(
            path, "csv", column_names=header, header=0, features=features, keep_default_na=False, na_filter=False
        )
    except Exception as exc:
        raise _failure(path, "CSV", exc) from None
    return columns, rows, "row", ()


def _read_parquet(path: Path) -> Read:
    try:
        columns, rows = _load(path, "parquet")
    except Exception as exc:
        raise _failure(path, "Parquet", exc) from None
    return columns, rows, "row", ()


def _read_text(path: Path) -> Read:
    """One record per paragraph; blank lines around a paragraph and trailing whitespace are dropped."""
    try:
        if not path.read_text(encoding="utf-8").strip():
            return ["text"], [], "paragraph", ()
        _, rows = _load(path, "text", sample_by="paragraph")
    except UnicodeDecodeError:
        raise DataError(f"{path}: expected UTF-8 text, got bytes that are not UTF-8") from None
    except Exception as exc:
        raise _failure(path, "text", exc) from None
    texts = (_LEADING_BLANK_LINES.sub("", row["text"] or "").rstrip() for row in rows)
    return ["text"], [{"text": t} for t in texts if t], "paragraph", ()


def _read_saved(path: Path) -> Read:
    """A ``save_to_disk`` directory: a ``Dataset``, or a ``DatasetDict``'s "train" split."""
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DataError(
            f"{path}: expected a file or a directory written by Dataset.save_to_disk "
            "(with state.json or dataset_dict.json), got a directory without either"
        )
    ds = _datasets()
    try:
        with _quiet(ds):
            data = ds.load_from_disk(str(path), keep_in_memory=True)
    except Exception as exc:
        raise _failure(path, "a saved data set", exc) from None
    if isinstance(data, ds.DatasetDict):
        if "train" not in data:
            raise DataError(f"{path}: expected a 'train' split in the saved data set, got {sorted(data)}")
        data = data["train"]
    return list(data.column_names), data.to_list(), "row", ()
