"""Reading a client's data file into raw columns and rows with Hugging Face ``datasets``.

Offline and with a throw-away cache, so no copy of the private data stays behind; every
failure of a loader (or of ``pyarrow`` beneath it) becomes a one-line `DataError` naming the
file and, for a bad JSON line or a ragged CSV row, the line or row.  Validation of the rows
against a record format is `splitfed.data.records`.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from splitfed.data.records import DataError, describe

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".md")
_LOADER = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".md": "text"}
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


def read_file(path: Path) -> Read:
    """(columns, rows, unit, locations) of a data file or a ``save_to_disk`` directory that exists."""
    if path.is_dir():
        return _read_saved(path)
    suffix = path.suffix.lower()
    if suffix not in _LOADER:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; expected one of "
            f"{', '.join(SUFFIXES)} or a directory written by Dataset.save_to_disk"
        )
    reader = {"json": _read_json, "csv": _read_csv, "parquet": _read_parquet, "text": _read_text}
    try:
        return reader[_LOADER[suffix]](path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it: {exc.strerror or exc}") from None


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
                raise DataError(f"{path} row {i}: expected a JSON object, got {describe(item)}")
        return
    for _ in json_lines(path, text):
        pass


def json_lines(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines text; a `DataError` naming the
    line for one that is not a JSON object."""
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(item, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object, got {describe(item)}")
        yield lineno, item


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
