"""Key pairs and the querier's parties file, as each side sets them up on its own machine.

Only public key files (``NAME.key``) move between machines: a party sends its file to the
queriers, a querier sends its file to the parties (who install it in their allow-list).

- `own_keys(keys_dir, name)`: this machine's CURVE pair, created if absent (the secret file
  never leaves the machine);
- `add_party(parties_file, ...)`: the querier adds one party (name, endpoint, public key
  file) to its `QuerierConfig` file, creating the file and the querier's pair on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from splitfed.atomic import atomic_write_text
from splitfed.config.toml import dump_toml
from splitfed.errors import AlreadyExistsError, UsageError
from splitfed.rag.config import PartyAddress, QuerierConfig, load_querier_config
from splitfed.transport.keys import PublicKeyFile, create_party_keys, install_public_keys, read_public_key_file

PARTY_KEYS = "parties"  # the parties' public key files, under the querier's keys_dir


def own_keys(keys_dir: str | os.PathLike, name: str) -> tuple[PublicKeyFile, bool]:
    """(public key file, created now) of `name`'s CURVE pair in `keys_dir`; creates it if absent."""
    root = Path(keys_dir)
    if (root / f"{name}.key_secret").exists():
        return read_public_key_file(root / f"{name}.key"), False
    return create_party_keys(root, name, sign=False), True


@dataclass(frozen=True)
class AddedParty:
    """What `add_party` did: the file written, the config in it, the party's key, the querier's key."""

    path: Path
    config: QuerierConfig
    party_key: PublicKeyFile
    querier_key: PublicKeyFile
    new_querier_keys: bool
    new_file: bool


def add_party(
    parties_file: str | os.PathLike,
    *,
    endpoint: str,
    public_key: str | os.PathLike,
    name: str | None = None,
    keys_dir: str | os.PathLike = "querier-keys",
    querier_name: str = "querier",
    replace_existing: bool = False,
) -> AddedParty:
    """Add party `name` (default: the name in its key file) to the querier's parties file.

    The party's key file is checked and copied to ``<keys_dir>/parties/NAME.key``, which the
    entry points at.  A new parties file takes `keys_dir` and `querier_name` as the querier's
    identity; an existing one keeps its own.  The querier's pair is created if absent.
    """
    path = Path(parties_file)
    key = read_public_key_file(public_key)
    name = key.name if name is None else name
    if key.name != name:
        raise UsageError(f"{public_key} is the public key of {key.name!r}, not of {name!r}: is it the right file?")
    new_file = not path.exists()
    if new_file:
        cfg = None
        keys_root, me = Path(keys_dir), querier_name
    else:
        cfg = load_querier_config(path)
        if not cfg.keys_dir:
            raise UsageError(f"{path}: keys_dir is empty; set it to the querier's keys directory first")
        keys_root, me = Path(cfg.keys_dir), cfg.name
    old = {p.name: p for p in cfg.parties} if cfg else {}
    if name in old and not replace_existing:
        raise AlreadyExistsError(
            f"{path} already lists {name} (endpoint {old[name].endpoint}); pass --replace to replace it"
        )
    querier_key, created = own_keys(keys_root, me)
    if key.curve == querier_key.curve:
        raise UsageError(f"{public_key} is the querier's own public key, not a party's")
    installed = install_public_keys(keys_root / PARTY_KEYS, [key.path], overwrite=replace_existing)[0]
    address = PartyAddress(name, endpoint, keys_root / PARTY_KEYS / f"{installed.name}.key")
    parties = [address if p.name == name else p for p in cfg.parties] if cfg else []
    if name not in old:
        parties.append(address)
    new = (
        QuerierConfig(tuple(parties), keys_dir=keys_root, name=me)
        if cfg is None
        else replace(cfg, parties=tuple(parties))
    )
    _write(path, dump_toml(new))
    return AddedParty(path, new, replace(key, path=address.public_key), querier_key, created, new_file)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
