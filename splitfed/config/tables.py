"""From TOML tables to config objects, and dotted overrides of them.

`parse_table` builds a config class (see `splitfed.config.fields`) from the mapping `tomllib`
returns; `override` replaces dotted keys (``training.rounds``) of a built one.  Both refuse
unknown tables and keys with a suggestion, and re-key the errors of a class shared by
several tables (``lora.<part>.r`` becomes ``lora.trunk.r``).  Standard library only.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass
from typing import Any

from splitfed.config.fields import (
    ConfigError,
    describe,
    field_hints,
    item_table_type,
    join_key,
    key_error,
    keyed_fields,
    show,
    table_type,
    typename,
)

__all__ = ["override", "parse_table"]


def _rekey(err: ConfigError, old_prefix: str, new_prefix: str) -> ConfigError:
    """`err` with its key moved from under `old_prefix` to under `new_prefix`."""
    if err.key is None or err.detail is None or old_prefix == new_prefix:
        return err
    if err.key != old_prefix and not err.key.startswith(old_prefix + "."):
        return err
    return key_error(new_prefix + err.key[len(old_prefix) :], err.detail)


def _names(cls: type) -> list[str]:
    return list(keyed_fields(cls))


def _sub_table(cls: type, name: str) -> type | None:
    """The config class of the table `name` in `cls`, or ``None`` when `name` holds a value."""
    return table_type(field_hints(cls)[keyed_fields(cls)[name].name])


def _nested(cls: type, prefix: str, name: str) -> str | None:
    """``[prefix.table] key`` when `name` reads as ``table_key`` of a sub-table of `cls`, else ``None``."""
    for table in _names(cls):
        sub = _sub_table(cls, table)
        rest = name.removeprefix(table + "_")
        if sub is not None and rest != name and rest in _names(sub):
            return f"[{join_key(prefix, table)}] {rest}"
    return None


def _unknown(cls: type, prefix: str, name: str, value: Any) -> ConfigError:
    """Error for `name` not being a key of `cls` (the table at `prefix`), with a suggestion."""
    names = sorted(_names(cls))
    close = difflib.get_close_matches(name, names, n=1)
    key = join_key(prefix, name)
    if not all(_sub_table(cls, n) for n in names):
        msg = f"unknown key {key!r} (known keys{f' in [{prefix}]' if prefix else ''}: {', '.join(names)})"
        nested = _nested(cls, prefix, name)
        if nested or close:
            msg += f"; did you mean {nested or repr(close[0])}?"
        return ConfigError(msg, key=key)
    if not prefix:
        msg = f"unknown table [{name}] (known tables: {', '.join(names)})"
        if not isinstance(value, Mapping):
            owners = [f"[{n}] {name}" for n in _names(cls) if name in _names(_sub_table(cls, n))]  # declared order
            msg = f"unknown top-level key {name!r} (keys belong in tables: {', '.join(names)})"
            close = [" or ".join(owners)] if owners else close
        if close:
            msg += f"; did you mean {close[0] if close[0].startswith('[') else '[' + close[0] + ']'}?"
        return ConfigError(msg, key=name)
    msg = f"unknown {'table [' + key + ']' if isinstance(value, Mapping) else 'key ' + repr(key)}"
    msg += f" (known tables in [{prefix}]: {', '.join(names)})"
    owners = [f"[{join_key(prefix, n)}]" for n in names if name in _names(_sub_table(cls, n))]
    if owners and not isinstance(value, Mapping):
        msg += f"; set {name!r} in {', '.join(owners)}"
    elif close:
        msg += f"; did you mean [{join_key(prefix, close[0])}]?"
    return ConfigError(msg, key=key)


def parse_table(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build the config class `cls` for the table at `prefix` from its TOML mapping."""
    if not isinstance(raw, Mapping):
        where = f"a table [{prefix}]" if prefix else "a table of config sections"
        raise ConfigError(f"{prefix or 'config'}: expected {where}, got {show(raw)} ({typename(raw)})", key=prefix)
    keyed = keyed_fields(cls)
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in keyed:
            raise _unknown(cls, prefix, name, value)
        f, key = keyed[name], join_key(prefix, name)
        hint = field_hints(cls)[f.name]
        if table_type(hint) is not None:
            value = parse_table(hint, value, key)
        elif item_table_type(hint) is not None and isinstance(value, list):
            value = [parse_table(item_table_type(hint), item, f"{key}[{i}]") for i, item in enumerate(value)]
        kwargs[f.name] = value
    for name, f in keyed.items():
        if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            expected = describe(field_hints(cls)[f.name], f.metadata)
            raise key_error(join_key(prefix, name), f"required key missing; expected {expected}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise _rekey(err, cls._key, prefix) from None


@dataclass(frozen=True)
class _Leaf:
    value: Any


def _apply(obj: Any, tree: Mapping[str, Any], prefix: str) -> Any:
    cls = type(obj)
    keyed = keyed_fields(cls)
    kwargs: dict[str, Any] = {}
    for name, sub in tree.items():
        key = join_key(prefix, name)
        if name not in keyed:
            raise _unknown(cls, prefix, name, sub.value if isinstance(sub, _Leaf) else {})
        table = _sub_table(cls, name)
        if isinstance(sub, _Leaf):
            if table is not None:
                keys = ", ".join(sorted(_names(table)))
                raise ConfigError(f"{key!r} is a table, not a key: override one of its keys ({keys})", key=key)
            kwargs[keyed[name].name] = sub.value
        elif table is None:
            raise ConfigError(f"unknown key {key + '.' + next(iter(sub))!r} ({key!r} is not a table)", key=key)
        else:
            kwargs[keyed[name].name] = _apply(getattr(obj, keyed[name].name), sub, key)
    try:
        return dataclasses.replace(obj, **kwargs)
    except ConfigError as err:
        raise _rekey(err, cls._key, prefix) from None


def override(obj: Any, dotted: Mapping[str, Any]) -> Any:
    """A new, validated `obj` with dotted keys replaced, all at once (related keys may change together)."""
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = key.split(".")
        node = tree
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if isinstance(child, _Leaf):
                raise ConfigError(f"override {'.'.join(parts[: depth + 1])!r} given both as a value and a table")
            node = child
        if parts[-1] in node:
            raise ConfigError(f"override {key!r} given both as a value and a table")
        node[parts[-1]] = _Leaf(value)
    return _apply(obj, tree, "") if tree else obj
