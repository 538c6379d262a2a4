"""TOML in and out: read a config file into a config class, write one back.

``load_toml(cls, path)`` reads any config class (see `splitfed.config.fields`) and
``dump_toml(config)`` writes one so that reading the text gives the same object back;
`load_config` and `parse_config` are the `RunConfig` cases.  Standard library only.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from splitfed.config.fields import (
    ConfigError,
    describe,
    field_hints,
    item_table_type,
    join_key,
    plain,
    table_type,
    toml_key,
)
from splitfed.config.schema import RunConfig
from splitfed.config.tables import parse_table

T = TypeVar("T")

# ----------------------------------------------------------------------------- reading


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping of a TOML file; every problem is a `ConfigError` naming the file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}", path=str(p)) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {p}: {err.strerror or err}", path=str(p)) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: invalid TOML: {err}", path=str(p)) from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: invalid TOML: not UTF-8 text ({err.reason})", path=str(p)) from None


def load_toml(cls: type[T], path: str | os.PathLike[str]) -> T:
    """Read and validate a TOML file as the config class `cls`; errors name the file and the key."""
    data = read_toml(path)
    try:
        return parse_table(cls, data, "")
    except ConfigError as err:
        raise ConfigError(f"{Path(path)}: {err}", key=err.key, detail=err.detail, path=str(Path(path))) from None


def parse_config(mapping: Mapping[str, Any]) -> RunConfig:
    """A validated `RunConfig` from a TOML-like mapping (as `tomllib.loads` returns)."""
    return parse_table(RunConfig, mapping, "")


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a TOML config file; every problem is a `ConfigError` naming the file."""
    return load_toml(RunConfig, path)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["training.rounds=1", "model.name=tiny-gpt2"]`` -> ``{"training.rounds": 1, ...}``.

    Values are read as TOML values (``1``, ``1e-4``, ``true``, ``[2, 10]``, ``"x"``); one that
    is not valid TOML is taken as a bare string.  For `RunConfig.with_overrides` (CLI ``--set``).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. training.rounds=1")
        text = text.strip()
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key] = value
    return out


# ----------------------------------------------------------------------------- writing


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write non-finite float {value!r}")
        return repr(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in _ESCAPES:
                out.append(_ESCAPES[ch])
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def _emit_header(obj: Any, prefix: str, lines: list[str], title: str | None, header: str) -> None:
    """Append a table's header line, after a blank line and (with `title` not None) its title."""
    if lines:
        lines.append("")
    if title is not None:
        # A class used for one table describes it; one shared by several (LoraPart) does not.
        doc = (type(obj).__doc__ or "").strip().splitlines()
        title = doc[0] if type(obj)._key == prefix and doc else title
        if title:
            lines.append(f"# {title}")
    lines.append(header)


def _emit(obj: Any, prefix: str, lines: list[str], comments: bool, title: str = "", header: str = "") -> None:
    """Append `obj` at `prefix`: its values (under `header`, or ``[prefix]``), then its tables."""
    hints = field_hints(type(obj))
    fields = dataclasses.fields(obj)
    values = [
        f
        for f in fields
        if table_type(hints[f.name]) is None
        and item_table_type(hints[f.name]) is None
        and getattr(obj, f.name) is not None
    ]
    header = header or (f"[{prefix}]" if values and prefix else "")
    if header:
        _emit_header(obj, prefix, lines, title if comments else None, header)
    for f in values:
        if comments and f.metadata.get("help"):
            lines.append(f"# {f.metadata['help']}")
        lines.append(f"{toml_key(f)} = {_toml_value(plain(getattr(obj, f.name)))}")
    if comments and header:  # a key left unset (None) has no TOML value: its help and what it takes, commented out
        for f in fields:
            if getattr(obj, f.name) is None and table_type(hints[f.name]) is None:
                if f.metadata.get("help"):
                    lines.append(f"# {f.metadata['help']}")
                lines.append(f"# {toml_key(f)}: unset; {describe(hints[f.name], f.metadata)}")
    for f in fields:
        key, help = join_key(prefix, toml_key(f)), f.metadata.get("help", "")
        if table_type(hints[f.name]) is not None:
            _emit(getattr(obj, f.name), key, lines, comments, help)
        elif item_table_type(hints[f.name]) is not None:
            for item in getattr(obj, f.name):
                _emit(item, key, lines, comments, help, header=f"[[{key}]]")


def dump_toml(config: Any, *, comments: bool = False) -> str:
    """A config object as TOML text, every key written; reading the text gives `config` back.

    ``parse_config(tomllib.loads(dump_toml(cfg))) == cfg`` for a `RunConfig`, and likewise
    ``load_toml(type(obj), path)`` for any config class.  `comments` adds each table's and
    key's help text as TOML comments.
    """
    lines: list[str] = []
    _emit(config, "", lines, comments)
    return "\n".join(lines) + "\n"
