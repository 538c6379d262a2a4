"""The field engine: frozen dataclasses whose fields check themselves.

A config class derives from `Section` and declares each field with `opt` (with a default),
`req` (required) or `sub` (a nested table), giving its help text and its checks.  On
construction every field is checked against its type hint and checks and normalised (lists
become tuples, integers become floats where a float is expected), then `_check` runs the
rules that involve several fields.  Every failure is a `ConfigError` naming the dotted key,
the bad value and what was expected::

    data.partition: expected one of 'iid', 'dirichlet', got 'random'

Field types: ``bool``, ``int``, ``float``, ``str``, a ``Literal`` of strings, ``tuple[X, ...]``
or ``tuple[X, Y]`` of those, another config class (a TOML table), ``tuple[Config, ...]`` (an
array of tables) and ``X | None``.  Checks (field metadata): ``ge``, ``gt``, ``le``, ``lt``
(numbers), ``nonempty`` and ``path`` (strings; ``path`` also takes an ``os.PathLike``, kept
as ``str``), ``check`` (a predicate) with ``expected`` (its words in messages), ``none``
(what ``None`` is stored as) and ``toml`` (the key's TOML name where it is not the field's).

Each kind of field type is checked by one small function (`_BY_TYPE`, `_BY_ORIGIN`).

The public names (`__all__`) are what other modules build on: `Section`, `opt`, `req`, `sub`
to declare a class; `key_error` for the checks of `Section._check`; `plain` for the value as
plain TOML data; and the introspection `splitfed.config.tables` and `splitfed.config.toml`
use (`field_hints`, `keyed_fields`, `toml_key`, `table_type`, `item_table_type`, `describe`,
`show`, `typename`, `join_key`).  Reading mappings into these classes and dotted overrides
are in `splitfed.config.tables`.  Only the standard library (and `splitfed.checks`) is imported.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any, ClassVar, Literal

from splitfed.checks import is_int, is_number
from splitfed.errors import SplitfedError

__all__ = [
    "ConfigError",
    "Section",
    "describe",
    "field_hints",
    "item_table_type",
    "join_key",
    "key_error",
    "keyed_fields",
    "opt",
    "plain",
    "req",
    "show",
    "sub",
    "table_type",
    "toml_key",
    "typename",
]


class ConfigError(SplitfedError, ValueError):
    """An unusable configuration.

    The message names the dotted key, the bad value and what was expected.  `key` is that
    dotted key (``None`` for file-level errors), `path` the config file when one was read.
    """

    def __init__(self, message: str, *, key: str | None = None, detail: str | None = None, path: str | None = None):
        super().__init__(message)
        self.key = key
        self.detail = detail
        self.path = path


def key_error(key: str, detail: str) -> ConfigError:
    """``ConfigError("<key>: <detail>")`` with `key` and `detail` kept for re-keying."""
    return ConfigError(f"{key}: {detail}", key=key, detail=detail)


def join_key(prefix: str, name: str) -> str:
    """``prefix.name`` (just ``name`` at the top level)."""
    return f"{prefix}.{name}" if prefix else name


# ----------------------------------------------------------------------------- values


def show(value: Any) -> str:
    """A value as the user wrote it (TOML-like: ``true``, ``[5, 3]``, ``'random'``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "a table"
    return repr(value)


def typename(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "table"
    return type(value).__name__


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


# ----------------------------------------------------------------------------- types


def _optional(hint: Any) -> tuple[Any, bool]:
    """``(X, True)`` for the hint ``X | None``, else ``(hint, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def table_type(hint: Any) -> type | None:
    """The config class `hint` names (a TOML table), or ``None``."""
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def item_table_type(hint: Any) -> type | None:
    """The config class of ``tuple[Config, ...]`` (a TOML array of tables), or ``None``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return table_type(args[0])
    return None


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def toml_key(f: dataclasses.Field) -> str:
    """A field's key in TOML."""
    return f.metadata.get("toml", f.name)


@functools.cache
def keyed_fields(cls: type) -> dict[str, dataclasses.Field]:
    """TOML key -> field of the config class `cls`, in declaration order."""
    return {toml_key(f): f for f in dataclasses.fields(cls)}


_BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def describe(hint: Any, meta: Mapping[str, Any]) -> str:
    """What a field expects, in words (``an integer >= 1``)."""
    if "expected" in meta:
        return meta["expected"]
    hint, _ = _optional(hint)
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    if hint is bool:
        return "a boolean (true or false)"
    if hint is str:
        return "a non-empty string" if meta.get("nonempty") else "a string"
    if typing.get_origin(hint) is tuple:
        item = item_table_type(hint)
        return f"a list of {item.__name__} tables" if item else "a list of non-empty strings"
    base = "an integer" if hint is int else "a number"
    if "ge" in meta and "lt" in meta:
        return f"{base} in [{_num(meta['ge'])}, {_num(meta['lt'])})"
    if "ge" in meta and "le" in meta:
        return f"{base} in [{_num(meta['ge'])}, {_num(meta['le'])}]"
    for op, (sym, _) in _BOUNDS.items():
        if op in meta:
            base += f" {sym} {_num(meta[op])}"
    return base


class _Mismatch(Exception):
    """A value that does not fit its field; `wrong_type` adds the given value's type to the message."""

    def __init__(self, wrong_type: bool = False):
        self.wrong_type = wrong_type


def _literal(value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    if not isinstance(value, str):
        raise _Mismatch(True)
    if value not in typing.get_args(hint):
        raise _Mismatch()
    return value


def _bool(value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    if not isinstance(value, bool):
        raise _Mismatch(True)
    return value


def _int(value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    if not is_int(value):
        raise _Mismatch(True)
    return value


def _float(value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    if not is_number(value):
        raise _Mismatch(True)
    if not math.isfinite(value):
        raise _Mismatch()
    return float(value)


def _str(value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    if meta.get("path") and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise _Mismatch(True)
    if meta.get("nonempty") and not value:
        raise _Mismatch()
    return value


def _item_ok(item: Any, hint: Any) -> bool:
    if hint is int:
        return is_int(item)
    if hint is str:
        return isinstance(item, str) and bool(item)
    return table_type(hint) is None or isinstance(item, hint)


def _tuple(value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    if not isinstance(value, list | tuple):
        raise _Mismatch(True)
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        item_hints = [args[0]] * len(value)
    elif len(value) != len(args):
        raise _Mismatch()
    else:
        item_hints = list(args)
    if not all(_item_ok(item, h) for item, h in zip(value, item_hints, strict=True)):
        raise _Mismatch()
    return tuple(value)


#: How a value of each kind of field type is checked and normalised: by the type itself,
#: else by its origin (``Literal[...]``, ``tuple[...]``).
_BY_TYPE = {bool: _bool, int: _int, float: _float, str: _str}
_BY_ORIGIN = {Literal: _literal, tuple: _tuple}


def _coerce(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    """Check `value` against a field's type and checks; return it normalised."""
    if value is None and "none" in meta:
        return meta["none"]
    hint, optional = _optional(hint)
    if value is None and optional:
        return None
    table = table_type(hint)
    if table is not None:
        if not isinstance(value, table):
            raise key_error(key, f"expected a {table.__name__}, got {value!r}")
        return value
    kind = _BY_TYPE.get(hint) or _BY_ORIGIN.get(typing.get_origin(hint))
    if kind is None:  # pragma: no cover - a field type this module does not handle
        raise TypeError(f"{key}: unsupported field type {hint!r}")
    try:
        checked = kind(value, hint, meta)
        if hint in (int, float) and not all(ok(checked, meta[op]) for op, (_, ok) in _BOUNDS.items() if op in meta):
            raise _Mismatch()
        if meta.get("check") is not None and not meta["check"](checked):
            raise _Mismatch()
    except _Mismatch as bad:
        suffix = f" ({typename(value)})" if bad.wrong_type and not isinstance(value, Mapping) else ""
        raise key_error(key, f"expected {describe(hint, meta)}, got {show(value)}{suffix}") from None
    return checked


# ----------------------------------------------------------------------------- declaring


def opt(default: Any, help: str, **checks: Any) -> Any:
    """A field with a default, its help text and its checks (``ge``, ``gt``, ``lt``, ``check``...)."""
    return field(default=default, metadata={"help": help, **checks})


def req(help: str, **checks: Any) -> Any:
    """A required field (no default), its help text and its checks."""
    return field(metadata={"help": help, **checks})


def sub(cls: type, help: str) -> Any:
    """A nested table: a config class, by default with all its defaults."""
    return field(default_factory=cls, metadata={"help": help})


class Section:
    """Validation shared by every config dataclass: field types, checks, then `_check`.

    `_key` is the class's dotted TOML key (what errors name).  `_rules` may give a field's
    rule as a sentence (``"LoRA rank r must be a positive integer"``) for classes that are
    built in code rather than read from a TOML table; the message is then that rule and the
    bad value.
    """

    _key: ClassVar[str] = ""
    _rules: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        hints = field_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            try:
                checked = _coerce(join_key(self._key, toml_key(f)), value, hints[f.name], f.metadata)
            except ConfigError as err:
                if f.name not in self._rules:
                    raise
                rule = f"{self._rules[f.name]}, got {show(value)}"
                raise ConfigError(rule, key=err.key, detail=err.detail) from None
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        self._check()

    def _check(self) -> None:
        """Checks that involve more than one field."""


def plain(value: Any) -> Any:
    """Plain TOML-compatible values (nested dicts by TOML key, lists, str, int, float, bool)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((toml_key(f), getattr(value, f.name)) for f in dataclasses.fields(value))
        return {k: plain(v) for k, v in items if v is not None}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
