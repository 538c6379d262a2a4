"""CURVE key pairs for the server and each client, as files with restrictive permissions.

Layout of a keys directory::

    server.key  server.key_secret          the server's pair
    client-K.key  client-K.key_secret      client K's pair (give it only to client K)
    allowed/client-K.key                   public keys the server accepts (its allow-list)
    client-K.sign_secret                   client K's Ed25519 identity key (secure aggregation)
    roster.toml                            every client's Ed25519 public key (all parties get it)

The per-party functions (`create_party_keys`, `install_public_keys`) make the same files one
party at a time, on each party's own machine; `generate_keys` is the one-directory demo.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from splitfed.atomic import atomic_write_text
from splitfed.errors import AlreadyExistsError, SplitfedError, UsageError

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_ZPL_VALUE = re.compile(r'^\s+([a-z-]+)\s*=\s*"?([^"]*)"?\s*$')


class KeyFileError(SplitfedError, FileNotFoundError):
    """A key file is missing or unreadable."""


def client_name(client_id: int) -> str:
    return f"client-{client_id}"


def generate_keys(keys_dir: str | os.PathLike, n_clients: int, *, overwrite: bool = False) -> Path:
    """The local demo: every party's keys in one directory (whoever holds it holds every secret).

    Writes the server pair, `n_clients` client pairs with signing keys, the allow-list and the
    secure-aggregation roster; organisations instead run `create_party_keys` each on their own.
    """
    from splitfed.transport.roster import ROSTER_FILE, roster_from_key_files, write_roster

    if n_clients < 1:
        raise UsageError(f"n_clients must be >= 1, got {n_clients}")
    root = Path(keys_dir)
    if (root / "server.key_secret").exists() and not overwrite:
        raise AlreadyExistsError(f"{root} already holds keys; pass overwrite=True (--force) to replace them")
    allowed = root / "allowed"
    if allowed.exists():
        shutil.rmtree(allowed)
    shutil.rmtree(root / "identity", ignore_errors=True)  # the layout before the roster
    create_party_keys(root, "server", sign=False, overwrite=True)
    clients = [create_party_keys(root, client_name(k), overwrite=True).path for k in range(n_clients)]
    install_public_keys(allowed, clients)
    write_roster(root / ROSTER_FILE, roster_from_key_files(clients))
    return root


def load_signing_key(keys_dir: str | os.PathLike, name: str) -> bytes:
    """Client `name`'s Ed25519 private key."""
    path = Path(keys_dir) / f"{name}.sign_secret"
    if not path.is_file():
        raise KeyFileError(f"no identity key at {path}; run `splitfed keys generate --dir {keys_dir} --force`")
    return bytes.fromhex(path.read_text().strip())


def identity_keys(keys_dir: str | os.PathLike, roster: str | os.PathLike | None = None) -> dict[int, bytes]:
    """client id -> Ed25519 public key, from `roster` (default: ``roster.toml`` in `keys_dir`)."""
    from splitfed.transport.roster import ROSTER_FILE, load_roster

    return load_roster(roster or Path(keys_dir) / ROSTER_FILE).identity_keys


def load_keypair(keys_dir: str | os.PathLike, name: str) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys of `name` ("server" or "client-K")."""
    import zmq.auth

    path = Path(keys_dir) / f"{name}.key_secret"
    if not path.is_file():
        raise KeyFileError(f"no secret key for {name} at {path}; run `splitfed keys generate --dir {keys_dir}` first")
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key")
    return public, secret


def load_public(keys_dir: str | os.PathLike, name: str) -> bytes:
    import zmq.auth

    path = Path(keys_dir) / f"{name}.key"
    if not path.is_file():
        raise KeyFileError(f"no public key for {name} at {path}; run `splitfed keys generate --dir {keys_dir}` first")
    return zmq.auth.load_certificate(path)[0]


def allowed_clients(keys_dir: str | os.PathLike) -> dict[str, str]:
    """z85 public key (str) -> client name, from ``allowed/``."""
    import zmq.auth

    allowed = Path(keys_dir) / "allowed"
    if not allowed.is_dir():
        raise KeyFileError(f"no allow-list at {allowed}; run `splitfed keys generate --dir {keys_dir}` first")
    return {zmq.auth.load_certificate(p)[0].decode(): p.stem for p in sorted(allowed.glob("*.key"))}


# ----------------------------------------------------------------------------- per-party keys
#
# Each organisation runs `splitfed keys init NAME` on its own machine: its secret files never
# leave it, and the one public file (NAME.key) is what it sends to the others.  The public file
# is a ZeroMQ certificate (so an allow-list directory of them works as-is) whose metadata also
# carries the party's Ed25519 signing key for secure aggregation.

SIGN_META = "sign-key"


@dataclass(frozen=True)
class PublicKeyFile:
    """One party's public keys, as read from its ``NAME.key`` file."""

    name: str
    curve: str  # z85 CURVE public key
    sign: bytes | None  # Ed25519 public key (secure aggregation); None for a file without one
    path: Path | None = None

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.curve)


def key_fingerprint(public: str | bytes) -> str:
    """A short, speakable fingerprint of a public key (z85 CURVE key or raw bytes): 4 groups of 4 hex."""
    raw = public.encode() if isinstance(public, str) else bytes(public)
    if len(raw) == 40:  # z85 text of a 32-byte CURVE key: fingerprint the key, not its spelling
        from zmq.utils import z85

        raw = z85.decode(raw)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return " ".join(digest[i : i + 4] for i in range(0, 16, 4))


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == "allowed":
        raise UsageError(f"a party name is 1-64 letters, digits, '-', '_' or '.' (not starting with '.'), got {name!r}")
    return name


def _public_text(name: str, curve: str, sign: bytes | None) -> str:
    lines = [
        f"#   splitfed public keys of {name}: safe to share, send this file to the other parties",
        f"#   fingerprint {key_fingerprint(curve)} (compare it with its owner by phone)",
        "",
        "metadata",
        f'    name = "{name}"',
    ]
    if sign is not None:
        lines.append(f'    {SIGN_META} = "{sign.hex()}"')
    lines += ["curve", f'    public-key = "{curve}"', ""]
    return "\n".join(lines)


def _write_private(path: Path, text: str) -> None:
    atomic_write_text(path, text, mode=0o600)  # 0600 from creation on: never readable by others


def create_party_keys(
    keys_dir: str | os.PathLike, name: str, *, sign: bool = True, overwrite: bool = False
) -> PublicKeyFile:
    """Write party `name`'s CURVE pair (``NAME.key``, ``NAME.key_secret``) and, with `sign`, its
    Ed25519 signing key (``NAME.sign_secret``, public half in ``NAME.key``); returns the public file."""
    import zmq

    from crypto.sign import generate_signing_key_pair

    _check_name(name)
    root = Path(keys_dir)
    secret_path = root / f"{name}.key_secret"
    if secret_path.exists() and not overwrite:
        raise AlreadyExistsError(f"{secret_path} exists: {name} already has keys here (pass --force to replace them)")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    public, secret = (k.decode() for k in zmq.curve_keypair())
    pair = generate_signing_key_pair() if sign else None
    signing = pair.public if pair else None
    _write_private(
        secret_path,
        f"#   splitfed SECRET keys of {name}: never copy this file off this machine\n\nmetadata\n"
        f'    name = "{name}"\ncurve\n    public-key = "{public}"\n    secret-key = "{secret}"\n',
    )
    if pair is not None:
        _write_private(root / f"{name}.sign_secret", pair.private.hex() + "\n")
    else:
        (root / f"{name}.sign_secret").unlink(missing_ok=True)
    path = root / f"{name}.key"
    atomic_write_text(path, _public_text(name, public, signing), mode=0o644)
    return PublicKeyFile(name, public, signing, path)


def read_public_key_file(path: str | os.PathLike) -> PublicKeyFile:
    """Read and check a party's public key file; errors name the file and what is wrong with it."""
    from zmq.utils import z85

    p = Path(path)
    if not p.is_file():
        raise KeyFileError(f"no public key file at {p}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read public key file {p}: {exc}") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        m = _ZPL_VALUE.match(line)
        if m:
            values[m.group(1)] = m.group(2)
    if "secret-key" in values:
        raise KeyFileError(f"{p} holds a SECRET key: send and install only the public file (NAME.key)")
    curve = values.get("public-key")
    if curve is None:
        raise KeyFileError(f"{p} is not a key file: expected a 'public-key = \"...\"' line")
    try:
        if len(curve) != 40 or len(z85.decode(curve.encode())) != 32:
            raise ValueError
    except ValueError:
        raise KeyFileError(f"{p}: public-key must be 40 z85 characters (a 32-byte CURVE key), got {curve!r}") from None
    sign = None
    if SIGN_META in values:
        try:
            sign = bytes.fromhex(values[SIGN_META])
        except ValueError:
            sign = b""
        if len(sign) != 32:
            raise KeyFileError(f"{p}: {SIGN_META} must be 64 hex digits (an Ed25519 public key)")
    name = values.get("name") or p.stem
    try:
        _check_name(name)
    except ValueError as exc:
        raise KeyFileError(f"{p}: {exc}") from None
    return PublicKeyFile(name, curve, sign, p)


def install_public_keys(
    dest: str | os.PathLike, files: list[str | os.PathLike], *, overwrite: bool = False
) -> list[PublicKeyFile]:
    """Copy checked public key files into `dest` as ``NAME.key`` (an allow-list directory, or the
    server's key a client installs); refuses one key under two names or two keys under one name."""
    root = Path(dest)
    keys = [read_public_key_file(f) for f in files]
    seen: dict[str, str] = {}
    for k in keys:
        if k.curve in seen and seen[k.curve] != k.name:
            raise KeyFileError(f"{k.path} holds the same key as {seen[k.curve]}'s file: each party needs its own")
        seen[k.curve] = k.name
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise KeyFileError(f"two files name the same party: {sorted(n for n in names if names.count(n) > 1)}")
    root.mkdir(parents=True, exist_ok=True)
    for k in keys:
        target = root / f"{k.name}.key"
        if target.exists() and not overwrite:
            old = read_public_key_file(target)
            if old.curve != k.curve:
                raise AlreadyExistsError(
                    f"{target} already holds another key for {k.name} (fingerprint {old.fingerprint}, new "
                    f"{k.fingerprint}); pass --force to replace it"
                )
        atomic_write_text(target, _public_text(k.name, k.curve, k.sign), mode=0o644)
    return keys
