"""A party's own documents, read from its files for `splitfed rag index`.

A source is a folder or a file:

- a folder is searched recursively (hidden files and folders skipped, files in name order):
  ``.txt`` / ``.md`` hold one document per file (title: the first line when the file has
  more than one, else the file name), ``.jsonl`` one document per line, and ``.json`` /
  ``.csv`` / ``.parquet`` one per row; any other file type is an error naming the file;
- a ``datasets`` ``save_to_disk`` folder, or one file of the types above.

Rows (JSON lines, CSV / Parquet rows, saved data sets) take the document text from
``text_field`` (required), the title from ``title_field`` and the id from ``id_field``
(both optional: the title falls back to the text's first line, the id to ``FILE:LINE``).
Every problem is a `DataError` naming the file and, for a row, its line or row number.
Nothing is printed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from splitfed.data.readers import json_lines
from splitfed.data.records import DataError, describe
from splitfed.rag.corpus import Document

TEXT_SUFFIXES = (".txt", ".md")
ROW_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TITLE_CHARS = 200  # a longer first line is body text, not a title


@dataclass(frozen=True)
class Fields:
    """Which fields of a row hold the document's text, title and id."""

    text: str = "text"
    title: str = "title"
    id: str = "id"


@dataclass(frozen=True)
class ReadDocuments:
    """The documents read, in order, and the files skipped because they hold no text."""

    docs: list[Document]
    empty: tuple[Path, ...] = ()


def read_documents(sources: Sequence[str | os.PathLike], *, fields: Fields = Fields()) -> ReadDocuments:
    """Every document of `sources` (folders or files); refuses duplicate ids and no documents at all."""
    if not sources:
        raise DataError("no documents given: name a folder or a file of documents")
    docs: list[Document] = []
    empty: list[Path] = []
    for source in map(Path, sources):
        for path, root in _files(source):
            found = _read_one(path, root, fields)
            if not found:
                empty.append(path)
            docs += found
    if not docs:
        where = ", ".join(str(s) for s in sources)
        raise DataError(
            f"{where}: no documents found; expected {', '.join(TEXT_SUFFIXES + ROW_SUFFIXES)} files with text"
        )
    seen: dict[str, int] = {}
    for i, d in enumerate(docs):
        if d.doc_id in seen:
            raise DataError(f"document id {d.doc_id!r} appears twice (documents {seen[d.doc_id] + 1} and {i + 1})")
        seen[d.doc_id] = i
    return ReadDocuments(docs, tuple(empty))


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _files(source: Path) -> Iterable[tuple[Path, Path]]:
    """(file, folder ids are relative to) for every document file of `source`."""
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    if source.is_file() or _is_saved_dataset(source):
        _check_suffix(source)
        return [(source, source.parent)]
    out = []
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        saved = sorted(d for d in dirnames if not d.startswith(".") and _is_saved_dataset(here / d))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in saved)
        for name in sorted(filenames):
            if not name.startswith("."):
                _check_suffix(here / name)
                out.append((here / name, source))
        out += [(here / d, source) for d in saved]
    out.sort(key=lambda pr: str(pr[0]))
    return out


def _check_suffix(path: Path) -> None:
    if path.is_dir():
        return  # a saved data set
    if path.suffix.lower() not in TEXT_SUFFIXES + ROW_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; expected one of "
            f"{', '.join(TEXT_SUFFIXES + ROW_SUFFIXES)} or a folder written by Dataset.save_to_disk "
            "(move other files out of the documents folder)"
        )


def _read_one(path: Path, root: Path, fields: Fields) -> list[Document]:
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
    suffix = path.suffix.lower() if path.is_file() else ""
    if suffix in TEXT_SUFFIXES:
        doc = _text_file(path, rel)
        return [doc] if doc else []
    if suffix == ".jsonl":
        return list(_jsonl(path, rel, fields))
    from splitfed.data.readers import read_file

    _, rows, unit, locations = read_file(path)
    return [
        _row_document(row, path, rel, unit, locations[i] if locations else i + 1, fields) for i, row in enumerate(rows)
    ]


def _text_file(path: Path, rel: str) -> Document | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise DataError(f"{path}: expected UTF-8 text, got bytes that are not UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if not text:
        return None
    first, _, rest = text.partition("\n")
    title = first.lstrip("#").strip() if path.suffix.lower() == ".md" else first.strip()
    if rest.strip() and title and len(title) <= TITLE_CHARS:
        return Document(doc_id=rel, title=title, text=rest.strip())
    return Document(doc_id=rel, title=path.stem, text=text)


def _jsonl(path: Path, rel: str, fields: Fields) -> Iterable[Document]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: expected UTF-8 text, got bytes that are not UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    for lineno, row in json_lines(path, raw):
        yield _row_document(row, path, rel, "line", lineno, fields)


def _row_document(row: dict, path: Path, rel: str, unit: str, number: int, fields: Fields) -> Document:
    where = f"{path} {unit} {number}"
    text = row.get(fields.text)
    if fields.text not in row:
        raise DataError(
            f"{where}: no {fields.text!r} field (the document text); fields found: {sorted(row)} "
            "(--text-field names another)"
        )
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: {fields.text!r}: expected non-empty text, got {describe(text)}")
    title = row.get(fields.title)
    if title is not None and not isinstance(title, str):
        raise DataError(f"{where}: {fields.title!r}: expected a string, got {describe(title)}")
    if not title or not title.strip():
        title = text.strip().split("\n", 1)[0][:80]
    doc_id = row.get(fields.id)
    if doc_id is None or doc_id == "":
        doc_id = f"{rel}:{number}"
    elif isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
        raise DataError(f"{where}: {fields.id!r}: expected a string or an integer, got {describe(doc_id)}")
    return Document(doc_id=str(doc_id), title=" ".join(title.split()), text=text.strip())
