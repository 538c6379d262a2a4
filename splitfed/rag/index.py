"""Build the RAG parties' indexes: one vector store, key pair and config per party.

``build_index(out_dir, parties=3, docs=docs, base_port=6000)`` deals the documents to the
parties in turn and writes, under `out_dir`::

    party-K/            party K's vector store
    keys/party-K/       CURVE keys: server pair = party K, client-0 = the querier (kept if there)
    party-K.toml        `PartyConfig` of party K (``splitfed rag party --config``)
    parties.toml        `QuerierConfig` listing every party (``splitfed rag query --parties``)

Party K listens on ``tcp://127.0.0.1:<base_port + K>``.  Nothing is printed: the result
says what was written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from splitfed.config.toml import dump_toml
from splitfed.rag.config import PartyAddress, PartyConfig, QuerierConfig
from splitfed.rag.corpus import Document, split_round_robin
from splitfed.rag.embedder import Embedder
from splitfed.rag.store import build_store
from splitfed.transport import generate_keys


@dataclass(frozen=True)
class IndexedParty:
    """One party as written: its config, the config's file and how many documents it holds."""

    config: PartyConfig
    config_path: Path
    documents: int


@dataclass(frozen=True)
class IndexResult:
    """What `build_index` wrote: every party and the querier's config."""

    parties: tuple[IndexedParty, ...]
    querier: QuerierConfig
    querier_path: Path


def build_index(
    out_dir: str | os.PathLike,
    *,
    parties: int,
    docs: Sequence[Document],
    base_port: int,
    embedder=None,
    progress: Callable[[int], None] | None = None,
) -> IndexResult:
    """Embed `docs` into one vector store per party and write each party's keys and config.

    `embedder` defaults to the bundled sentence encoder (`splitfed.rag.embedder.Embedder`);
    `progress(n)` is called as documents are embedded.  Existing keys are kept.
    """
    embedder = Embedder() if embedder is None else embedder
    out = Path(out_dir)
    written = []
    for k, part in enumerate(split_round_robin(list(docs), parties)):
        index = build_store(part, embedder, progress=progress).save(out / f"party-{k}")
        keys = out / "keys" / f"party-{k}"
        if not (keys / "server.key_secret").exists():
            generate_keys(keys, 1)  # server pair = the party; client-0 = the querier
        config = PartyConfig(name=f"party-{k}", index=index, endpoint=f"tcp://127.0.0.1:{base_port + k}", keys_dir=keys)
        path = out / f"party-{k}.toml"
        path.write_text(dump_toml(config))
        written.append(IndexedParty(config, path, len(part)))
    addresses = tuple(PartyAddress(p.config.name, p.config.endpoint, p.config.keys_dir) for p in written)
    querier = QuerierConfig(addresses)
    querier_path = out / "parties.toml"
    querier_path.write_text(dump_toml(querier))
    return IndexResult(tuple(written), querier, querier_path)
