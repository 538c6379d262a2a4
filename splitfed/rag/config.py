"""TOML configuration of a RAG party and of the querier's list of parties.

party.toml::

    name = "party-0"
    index = "rag/party-0"          # built by `splitfed rag index`
    endpoint = "tcp://127.0.0.1:6000"
    keys_dir = "rag/keys/party-0"  # CURVE: server.key* is the party's pair, allowed/ the queriers
    noise_std = 0.0                # Gaussian noise added to the encrypted scores (mitigation)
    k_max = 10                     # most documents one fetch may ask for

parties.toml (querier)::

    timeout_s = 30.0
    [[party]]
    name = "party-0"
    endpoint = "tcp://127.0.0.1:6000"
    keys_dir = "rag/keys/party-0"  # the party's public key + this querier's pair (client-0)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from splitfed.config import ConfigError


@dataclass(frozen=True)
class PartyConfig:
    name: str
    index: str
    endpoint: str
    keys_dir: str = ""
    noise_std: float = 0.0
    k_max: int = 10


@dataclass(frozen=True)
class PartyAddress:
    """Where the querier reaches one party."""

    name: str
    endpoint: str
    keys_dir: str | os.PathLike | None = None  # the party's public key (server.key) + the querier's pair (client-0)


@dataclass(frozen=True)
class QuerierConfig:
    parties: tuple[PartyAddress, ...]
    timeout_s: float = 30.0


def _read(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None


def _build(cls, raw: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} (known: {', '.join(known)})")
    values = {}
    for name, f in known.items():
        if name not in raw:
            if not hasattr(cls, name):
                raise ConfigError(f"{where}.{name}: required key missing")
            continue
        v = raw[name]
        kind = str(f.type).split(" ", 1)[0]  # "str | os.PathLike | None" is given as a string in TOML
        want = {"str": str, "float": (int, float), "int": int}.get(kind)
        if want is not None and (not isinstance(v, want) or isinstance(v, bool)):
            raise ConfigError(f"{where}.{name}: expected {f.type}, got {v!r}")
        values[name] = float(v) if f.type == "float" else v
    return cls(**values)


def load_party_config(path: str | os.PathLike) -> PartyConfig:
    cfg = _build(PartyConfig, _read(path), "party")
    if not cfg.endpoint.startswith(("tcp://", "ipc://")):
        raise ConfigError(f"party.endpoint: expected tcp://host:port or ipc://path, got {cfg.endpoint!r}")
    if cfg.noise_std < 0 or cfg.k_max < 1:
        raise ConfigError(f"party: noise_std must be >= 0 and k_max >= 1, got {cfg.noise_std}, {cfg.k_max}")
    return cfg


def load_querier_config(path: str | os.PathLike) -> QuerierConfig:
    raw = _read(path)
    entries = raw.pop("party", None)
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected at least one [[party]] table")
    timeout = raw.pop("timeout_s", 30.0)
    if raw:
        raise ConfigError(f"{path}: unknown key(s) {sorted(raw)} (known: timeout_s, [[party]])")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise ConfigError(f"timeout_s: expected a number > 0, got {timeout!r}")
    parties = tuple(_build(PartyAddress, e, f"party[{i}]") for i, e in enumerate(entries))
    if len({p.name for p in parties}) != len(parties):
        raise ConfigError(f"{path}: party names must be distinct")
    return QuerierConfig(parties, float(timeout))
