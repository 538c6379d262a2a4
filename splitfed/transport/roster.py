"""The secure-aggregation roster: every client's public signing key, in one file all parties check.

SecAgg+ clients sign their key advertisements and verify each other's signatures with these
keys, so every party must hold the same roster.  It is built from the clients' public key
files (``splitfed keys roster``) and has a fingerprint over its content (not its comments or
layout) that the server compares with each client's at HELLO and that a config can pin
(``aggregation.roster_fingerprint``).

roster.toml::

    # fingerprint 1a2b 3c4d 5e6f 7a8b
    [[client]]
    id = 0
    name = "client-0"
    sign = "<64 hex digits: Ed25519 public key>"
    curve = "<40 z85 characters: CURVE public key>"
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from splitfed.atomic import atomic_write_text
from splitfed.checks import is_int
from splitfed.transport.keys import KeyFileError, key_fingerprint, read_public_key_file

ROSTER_FILE = "roster.toml"
_CLIENT = re.compile(r"client-(0|[1-9][0-9]{0,5})")


@dataclass(frozen=True)
class RosterEntry:
    client_id: int
    name: str
    sign: bytes  # Ed25519 public key
    curve: str  # z85 CURVE public key


@dataclass(frozen=True)
class Roster:
    entries: tuple[RosterEntry, ...]
    path: Path | None = None

    @property
    def identity_keys(self) -> dict[int, bytes]:
        """client id -> Ed25519 public key, as secure aggregation wants them."""
        return {e.client_id: e.sign for e in self.entries}

    @property
    def fingerprint(self) -> str:
        """Short fingerprint of the content: 4 groups of 4 hex digits."""
        return format_fingerprint(self.digest)

    @property
    def digest(self) -> str:
        canon = [[e.client_id, e.name, e.sign.hex(), e.curve] for e in self.entries]
        return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()

    def require(self, n_clients: int) -> Roster:
        """Check the roster lists exactly clients 0..n_clients-1; returns itself."""
        ids = [e.client_id for e in self.entries]
        missing = sorted(set(range(n_clients)) - set(ids))
        extra = sorted(set(ids) - set(range(n_clients)))
        where = f"roster {self.path}" if self.path else "roster"
        if missing or extra:
            raise KeyFileError(
                f"{where} must list client-0 .. client-{n_clients - 1} (data.clients = {n_clients}); "
                + "; ".join(
                    ([f"missing {', '.join(f'client-{i}' for i in missing)}"] if missing else [])
                    + ([f"not in the run: {', '.join(f'client-{i}' for i in extra)}"] if extra else [])
                )
            )
        return self

    def matches(self, pinned: str) -> bool:
        """Whether `pinned` (the short fingerprint, spaces optional, or the full sha256) is this roster's."""
        p = pinned.replace(" ", "").lower()
        return bool(p) and (p == self.digest or p == self.digest[:16])


def format_fingerprint(hexdigest: str) -> str:
    d = hexdigest[:16]
    return " ".join(d[i : i + 4] for i in range(0, 16, 4))


def roster_from_key_files(files: Sequence[str | os.PathLike]) -> Roster:
    """A roster of the clients whose public key files are given (named client-K, each with a signing key)."""
    entries = []
    for f in files:
        k = read_public_key_file(f)
        m = _CLIENT.fullmatch(k.name)
        if m is None:
            raise KeyFileError(f"{f}: a roster lists clients named client-K, got {k.name!r}")
        if k.sign is None:
            raise KeyFileError(f"{f}: {k.name}'s key file has no signing key (create it with `splitfed keys init`)")
        entries.append(RosterEntry(int(m.group(1)), k.name, k.sign, k.curve))
    return _checked(entries, "the key files")


def _checked(entries: list[RosterEntry], where: str) -> Roster:
    entries.sort(key=lambda e: e.client_id)
    ids = [e.client_id for e in entries]
    if len(set(ids)) != len(ids):
        raise KeyFileError(f"{where} name a client twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    for attr in ("sign", "curve"):
        values = [getattr(e, attr) for e in entries]
        if len(set(values)) != len(values):
            raise KeyFileError(f"{where}: two clients share one {attr} key; each client needs its own")
    if not entries:
        raise KeyFileError(f"{where}: a roster needs at least one client")
    return Roster(tuple(entries))


def write_roster(path: str | os.PathLike, roster: Roster) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# splitfed secure-aggregation roster: every client's public signing key; every party needs this exact file",
        f"# fingerprint {roster.fingerprint} (`splitfed keys show {p.name}` prints it; compare by phone)",
    ]
    for e in roster.entries:
        lines += ["", "[[client]]", f"id = {e.client_id}", f'name = "{e.name}"', f'sign = "{e.sign.hex()}"']
        lines.append(f'curve = "{e.curve}"')
    atomic_write_text(p, "\n".join(lines) + "\n")
    return p


def load_roster(path: str | os.PathLike) -> Roster:
    """Read and check a roster file; errors name the file and the entry."""
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(f"no secure-aggregation roster at {p} (build one with `splitfed keys roster`)")
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeyFileError(f"cannot read roster {p}: {exc}") from None
    rows = data.get("client")
    if not isinstance(rows, list) or set(data) != {"client"}:
        raise KeyFileError(f"roster {p}: expected only [[client]] tables, got keys {sorted(data)}")
    entries = []
    for i, row in enumerate(rows):
        where = f"roster {p}, [[client]] #{i + 1}"
        if not isinstance(row, dict) or set(row) != {"id", "name", "sign", "curve"}:
            raise KeyFileError(f"{where}: expected keys id, name, sign, curve, got {sorted(row)}")
        cid, name, sign, curve = row["id"], row["name"], row["sign"], row["curve"]
        if not is_int(cid) or name != f"client-{cid}":
            raise KeyFileError(f'{where}: expected id = K and name = "client-K", got id {cid!r}, name {name!r}')
        try:
            raw = bytes.fromhex(sign) if isinstance(sign, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise KeyFileError(f"{where}: sign must be 64 hex digits (an Ed25519 public key)")
        if not isinstance(curve, str) or len(curve) != 40:
            raise KeyFileError(f"{where}: curve must be 40 z85 characters")
        try:
            key_fingerprint(curve)
        except ValueError:
            raise KeyFileError(f"{where}: curve is not z85 text") from None
        entries.append(RosterEntry(cid, name, raw, curve))
    roster = _checked(entries, f"roster {p}")
    return Roster(roster.entries, p)
