"""Build a RAG party's index on its own machine, and the bundled-news demo out of the same steps.

``index_party(docs, out_dir, name=...)`` embeds one party's own documents and writes::

    out_dir/index/       the party's vector store
    out_dir/party.toml   its `PartyConfig` (``splitfed rag party --config``); other settings
                         of an existing file (noise_std, k_max, ...) are kept
    keys_dir/            default out_dir/keys: NAME.key (public, send it to the queriers),
                         NAME.key_secret (0600, never leaves), allowed/ (the queriers' public
                         keys); the pair is created only if absent

``build_news_demo(out_dir, parties=3, docs=...)`` is the local demo: it deals the bundled
news articles to ``party-K`` (``index_party`` into ``out_dir/party-K``, listening on
``127.0.0.1:<base_port + K>``), creates a querier pair in ``out_dir/querier``, installs
only public key files each way, and writes the querier's ``out_dir/parties.toml``.
Nothing is printed: the results say what was written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from splitfed.config.toml import dump_toml
from splitfed.data.records import DataError
from splitfed.rag.config import PartyAddress, PartyConfig, QuerierConfig, load_party_config
from splitfed.rag.corpus import Document, split_round_robin
from splitfed.rag.embedder import Embedder
from splitfed.rag.parties import PARTY_KEYS, own_keys
from splitfed.rag.store import build_store
from splitfed.transport.keys import PublicKeyFile, install_public_keys

DEFAULT_ENDPOINT = "tcp://0.0.0.0:6000"
ALLOWED = "allowed"  # the queriers' public keys, under the party's keys_dir


@dataclass(frozen=True)
class IndexedParty:
    """One party as written: its config and file, its document count, its public key."""

    config: PartyConfig
    config_path: Path
    documents: int
    public_key: PublicKeyFile
    new_keys: bool  # the pair was created now

    @property
    def allowed_dir(self) -> Path:
        return Path(self.config.keys_dir) / ALLOWED


def index_party(
    docs: Sequence[Document],
    out_dir: str | os.PathLike,
    *,
    name: str,
    endpoint: str | None = None,
    keys_dir: str | os.PathLike | None = None,
    embedder=None,
    progress: Callable[[int], None] | None = None,
) -> IndexedParty:
    """Embed this party's `docs`, write its store and config, and create its key pair if absent.

    `endpoint` defaults to the existing config's, else ``tcp://0.0.0.0:6000``; `embedder` to
    the bundled MiniLM encoder; `progress(n)` is called as documents are embedded.
    """
    if not docs:
        raise DataError(f"{name}: no documents to index")
    out = Path(out_dir)
    keys = Path(keys_dir) if keys_dir is not None else out / "keys"
    public, created = own_keys(keys, name)  # first: a bad name fails before the embedding work
    (keys / ALLOWED).mkdir(parents=True, exist_ok=True)
    embedder = Embedder() if embedder is None else embedder
    index = build_store(list(docs), embedder, progress=progress).save(out / "index")
    path = out / "party.toml"
    where = {"name": name, "index": index, "keys_dir": keys}
    if path.exists():
        old = load_party_config(path)
        config = replace(old, endpoint=endpoint or old.endpoint, **where)
    else:
        config = PartyConfig(endpoint=endpoint or DEFAULT_ENDPOINT, **where)
    path.write_text(dump_toml(config))
    return IndexedParty(config, path, len(docs), public, created)


@dataclass(frozen=True)
class DemoIndex:
    """What `build_news_demo` wrote: every party, the querier's key and its parties file."""

    parties: tuple[IndexedParty, ...]
    querier: QuerierConfig
    querier_path: Path
    querier_key: PublicKeyFile


def build_news_demo(
    out_dir: str | os.PathLike,
    *,
    parties: int,
    docs: Sequence[Document],
    base_port: int,
    embedder=None,
    progress: Callable[[int], None] | None = None,
) -> DemoIndex:
    """The local demo: `docs` dealt to `parties` parties, each indexed as on its own machine."""
    out = Path(out_dir)
    embedder = Embedder() if embedder is None else embedder
    written = [
        index_party(
            part,
            out / f"party-{k}",
            name=f"party-{k}",
            endpoint=f"tcp://127.0.0.1:{base_port + k}",
            embedder=embedder,
            progress=progress,
        )
        for k, part in enumerate(split_round_robin(list(docs), parties))
    ]
    qkeys = out / "querier"
    querier_key, _ = own_keys(qkeys, "querier")
    for p in written:  # what `splitfed keys allow` does on each party's machine
        install_public_keys(p.allowed_dir, [querier_key.path], overwrite=True)
    install_public_keys(qkeys / PARTY_KEYS, [p.public_key.path for p in written], overwrite=True)
    addresses = tuple(
        PartyAddress(p.config.name, p.config.endpoint, qkeys / PARTY_KEYS / f"{p.config.name}.key") for p in written
    )
    querier = QuerierConfig(addresses, keys_dir=qkeys, name="querier")
    querier_path = out / "parties.toml"
    querier_path.write_text(dump_toml(querier))
    return DemoIndex(tuple(written), querier, querier_path, querier_key)
