"""A party's vector store on disk: embeddings, document texts and metadata, written atomically.

Layout of an index directory::

    meta.json        {"embedder": ..., "dim": 384, "count": N}
    embeddings.npy   (N, dim) float32 unit vectors (loaded without pickle)
    docs.jsonl       one {"doc_id", "title", "text"} per line, same order
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from splitfed.atomic import atomic_dir
from splitfed.errors import SplitfedError
from splitfed.rag.corpus import Document

EMBEDDER = "all-MiniLM-L6-v2"


class StoreError(SplitfedError, FileNotFoundError):
    """An index directory is missing or inconsistent."""


@dataclass
class VectorStore:
    embeddings: np.ndarray  # (N, dim) float32
    docs: list[Document]

    def __post_init__(self):
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.docs):
            raise ValueError(f"{self.embeddings.shape} embeddings for {len(self.docs)} documents")

    def save(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        with atomic_dir(out) as tmp:
            np.save(tmp / "embeddings.npy", self.embeddings.astype(np.float32), allow_pickle=False)
            with open(tmp / "docs.jsonl", "w") as f:
                for d in self.docs:
                    f.write(json.dumps(asdict(d)) + "\n")
            meta = {"embedder": EMBEDDER, "dim": int(self.embeddings.shape[1]), "count": len(self.docs)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> VectorStore:
        d = Path(directory)
        if not (d / "meta.json").is_file():
            raise StoreError(f"{d}: no index here (meta.json missing); build one with `splitfed rag index`")
        meta = json.loads((d / "meta.json").read_text())
        emb = np.load(d / "embeddings.npy", allow_pickle=False)
        with open(d / "docs.jsonl") as f:
            docs = [Document(**json.loads(line)) for line in f if line.strip()]
        if emb.shape != (meta["count"], meta["dim"]) or len(docs) != meta["count"]:
            raise StoreError(f"{d}: inconsistent index ({emb.shape} embeddings, {len(docs)} docs, meta {meta})")
        return cls(emb.astype(np.float32), docs)


def build_store(docs: list[Document], embedder, *, progress=None) -> VectorStore:
    """Embed ``title. text`` of each document (the encoder truncates long texts)."""
    texts = [f"{d.title}. {d.text}" for d in docs]
    return VectorStore(embedder.embed(texts, progress=progress), list(docs))
