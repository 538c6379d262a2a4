"""CURVE key pairs for the server and each client, as files with restrictive permissions.

Layout of a keys directory::

    server.key  server.key_secret          the server's pair
    client-K.key  client-K.key_secret      client K's pair (give it only to client K)
    allowed/client-K.key                   public keys the server accepts (its allow-list)
    client-K.sign_secret                   client K's Ed25519 identity key (secure aggregation)
    identity/client-K.pub                  every client's Ed25519 public key (all parties get these)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class KeyFileError(FileNotFoundError):
    """A key file is missing or unreadable."""


def client_name(client_id: int) -> str:
    return f"client-{client_id}"


def generate_keys(keys_dir: str | os.PathLike, n_clients: int, *, overwrite: bool = False) -> Path:
    """Write a server pair and `n_clients` client pairs; returns the directory."""
    import zmq.auth

    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    root = Path(keys_dir)
    if (root / "server.key_secret").exists() and not overwrite:
        raise FileExistsError(f"{root} already holds keys; pass overwrite=True (--force) to replace them")
    allowed = root / "allowed"
    if allowed.exists():
        shutil.rmtree(allowed)
    allowed.mkdir(parents=True)
    os.chmod(root, 0o700)
    names = ["server"] + [client_name(k) for k in range(n_clients)]
    for name in names:
        public, secret = zmq.auth.create_certificates(root, name)
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
        if name != "server":
            shutil.copy(public, allowed / Path(public).name)
    _generate_identities(root, n_clients)
    return root


def _generate_identities(root: Path, n_clients: int) -> None:
    """Ed25519 identity keys that sign secure-aggregation key advertisements."""
    from crypto.sign import generate_signing_key_pair

    identity = root / "identity"
    if identity.exists():
        shutil.rmtree(identity)
    identity.mkdir()
    for k in range(n_clients):
        pair = generate_signing_key_pair()
        secret = root / f"{client_name(k)}.sign_secret"
        secret.write_text(pair.private.hex() + "\n")
        os.chmod(secret, 0o600)
        (identity / f"{client_name(k)}.pub").write_text(pair.public.hex() + "\n")


def load_signing_key(keys_dir: str | os.PathLike, name: str) -> bytes:
    """Client `name`'s Ed25519 private key."""
    path = Path(keys_dir) / f"{name}.sign_secret"
    if not path.is_file():
        raise KeyFileError(f"no identity key at {path}; run `splitfed keys generate --dir {keys_dir} --force`")
    return bytes.fromhex(path.read_text().strip())


def identity_keys(keys_dir: str | os.PathLike) -> dict[int, bytes]:
    """client id -> Ed25519 public key, for every client in ``identity/``."""
    folder = Path(keys_dir) / "identity"
    if not folder.is_dir():
        raise KeyFileError(f"no identity keys in {folder}; run `splitfed keys generate --dir {keys_dir} --force`")
    return {int(p.stem.split("-", 1)[1]): bytes.fromhex(p.read_text().strip()) for p in sorted(folder.glob("*.pub"))}


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
