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

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from splitfed.errors import SplitfedError

Format = Literal["text", "prompt_completion", "messages"]
FORMATS: tuple[Format, ...] = ("text", "prompt_completion", "messages")
REQUIRED: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
}
ROLES = ("system", "user", "assistant")
_CONFIG_KEY = {k: f"{k}_field" for k in ("text", "prompt", "completion", "messages")}


class DataError(SplitfedError, ValueError):
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
                raise DataError(f"FieldMap.{key}: expected a non-empty field name, got {name!r}")


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
        raise DataError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    from splitfed.data.readers import read_file

    columns, raw, unit, locations = read_file(path)
    if unit == "paragraph":  # .txt / .md: one text record per paragraph
        if format not in ("auto", "text"):
            raise DataError(f"{path}: {path.suffix} files hold text records (one per paragraph), not {format}")
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


def describe(value: Any) -> str:
    """A value as an error message shows it: its type, and the value when short."""
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
        raise _RowError(f"{name}: expected a string, got {describe(value)}")
    if nonblank and not value.strip():
        raise _RowError(f"{name}: expected non-empty text, got {describe(value)}")
    return value


def _messages(value: Any, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _RowError(f"{name}: expected a non-empty list of {{'role', 'content'}} messages, got {describe(value)}")
    out: list[dict] = []
    previous = None
    for turn, msg in enumerate(value, 1):
        where = f"{name} turn {turn}"
        if not isinstance(msg, dict):
            raise _RowError(f"{where}: expected a {{'role', 'content'}} object, got {describe(msg)}")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise _RowError(f"{where}: role: expected one of {', '.join(map(repr, ROLES))}, got {describe(role)}")
        if not isinstance(content, str):
            raise _RowError(f"{where}: content: expected a string, got {describe(content)}")
        expected = "assistant" if previous == "user" else "user"
        if role != expected and not (role == "system" and turn == 1):
            after = f"after {previous!r}" if previous else "first"
            hint = " (a system turn may only come first)" if role == "system" else ""
            raise _RowError(f"{where}: expected {expected!r} {after}, got {role!r}{hint}")
        if role == "assistant" and not content.strip():
            raise _RowError(f"{where}: assistant content: expected non-empty text, got {describe(content)}")
        extra = {k: v for k, v in msg.items() if v is not None and k not in ("role", "content")}
        out.append({"role": role, "content": content, **extra})
        previous = role
    if not any(m["role"] == "assistant" for m in out):
        raise _RowError(f"{name}: expected at least one 'assistant' turn, got none")
    return out
