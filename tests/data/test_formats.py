"""Tests for tokenizing records into examples with loss masks (real tokenizer, hand-computed masks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from splitfed_testing import tiny_tokenizer

from splitfed.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    Records,
    Review,
    chat_labels,
    format_prompt,
    format_target,
    tokenize_examples,
    tokenize_records,
)
from splitfed.data.formats import leading_special_ids
from splitfed.models.pretrained import ByteTokenizer

X = IGNORE_INDEX
PATH = Path("notes.jsonl")
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the dose?"},
    {"role": "assistant", "content": "20 mg twice a day."},
    {"role": "user", "content": "With food?"},
    {"role": "assistant", "content": "Yes, with food."},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def records(fmt: str, rows: list[dict]) -> Records:
    return Records(PATH, fmt, rows)  # type: ignore[arg-type]


# --- masks --------------------------------------------------------------------------------------------


def test_text(tok) -> None:
    (ex,), stats = tokenize_records(records("text", [{"text": "Hello! How are you?"}]), tok, max_length=512)
    expected = [*ids(tok, "Hello! How are you?"), tok.eos_token_id]
    assert ex == Example(expected, expected)
    assert (stats.examples, stats.truncated, stats.tokens, stats.target_tokens) == (1, 0, len(expected), len(expected))
    assert stats.dropped == 0 and stats.packed_from is None


def test_prompt_completion(tok) -> None:
    rows = [{"prompt": "Question: what is the dose?", "completion": " Answer: 20 mg."}]
    (ex,), stats = tokenize_records(records("prompt_completion", rows), tok, max_length=512)
    prompt, target = ids(tok, rows[0]["prompt"]), [*ids(tok, rows[0]["completion"]), tok.eos_token_id]
    assert ex.input_ids == prompt + target
    assert ex.labels == [X] * len(prompt) + target
    assert stats.target_tokens == len(target) and stats.tokens == len(prompt) + len(target)


def test_chat_ids_are_the_template(tok) -> None:
    (ex,), _ = tokenize_records(records("messages", [{"messages": CHAT}]), tok, max_length=512)
    assert ex.input_ids == tok.apply_chat_template(CHAT, tokenize=True)["input_ids"]
    assert chat_labels(tok, CHAT) == (ex.input_ids, ex.labels)


def test_chat_labels_by_hand(tok) -> None:
    """Only the assistant turns as the ChatML template renders them (content, <|im_end|>, newline)."""
    masked_1 = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the dose?<|im_end|>\n"
    masked_1 += "<|im_start|>assistant\n"
    target_1 = "20 mg twice a day.<|im_end|>\n"
    masked_2 = "<|im_start|>user\nWith food?<|im_end|>\n<|im_start|>assistant\n"
    target_2 = "Yes, with food.<|im_end|>\n"
    pieces = [(masked_1, False), (target_1, True), (masked_2, False), (target_2, True)]
    expected_ids = [i for text, _ in pieces for i in ids(tok, text)]
    expected_labels = [i if learn else X for text, learn in pieces for i in ids(tok, text)]
    got_ids, got_labels = chat_labels(tok, CHAT)
    assert got_ids == expected_ids and got_labels == expected_labels
    assert tok.decode([i for i in got_labels if i != X]) == target_1 + target_2


def test_chat_ending_with_user_turn(tok) -> None:
    ids_, labels = chat_labels(tok, CHAT[:4])
    n = len(ids(tok, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the dose?<|im_end|>\n"))
    n += len(ids(tok, "<|im_start|>assistant\n"))
    span = ids(tok, "20 mg twice a day.<|im_end|>\n")
    assert labels == [X] * n + span + [X] * (len(ids_) - n - len(span))


# --- the built-in data and data files share the code ---------------------------------------------------


@pytest.mark.parametrize("max_length", [512, 24, 10, 2])
def test_drug_reviews_path_equals_file_path(tok, max_length: int) -> None:
    reviews = [
        Review(drug="Aspirin", condition="Pain", text="Works well for my headache.", rating="positive"),
        Review(drug="Ibuprofen", condition="Fever", text="Made me dizzy.", rating="negative"),
    ]
    rows = [{"prompt": format_prompt(r), "completion": format_target(r)} for r in reviews]
    examples, stats = tokenize_records(records("prompt_completion", rows), tok, max_length=max_length)
    assert examples == tokenize_examples(reviews, tok, max_length=max_length)
    assert stats.dropped == 0 and stats.truncated == (0 if max_length == 512 else 2)


# --- truncation and dropping ---------------------------------------------------------------------------


def test_truncation(tok) -> None:
    text = "The patient reports mild headache and nausea after the first dose."
    (ex,), stats = tokenize_records(records("text", [{"text": text}]), tok, max_length=5)
    assert ex.input_ids == ids(tok, text)[:5] == ex.labels and stats.truncated == 1
    rows = [{"prompt": text, "completion": " Stable."}]
    (ex,), stats = tokenize_records(records("prompt_completion", rows), tok, max_length=6)
    assert ex.input_ids == ids(tok, text)[:5] + ids(tok, " Stable.")[:1]
    assert ex.labels == [X] * 5 + ids(tok, " Stable.")[:1] and stats.truncated == 1


def test_chat_truncation_and_dropping(tok) -> None:
    full, labels = chat_labels(tok, CHAT)
    first_target = labels.index(next(i for i in labels if i != X))
    rows = [{"messages": CHAT}, {"messages": CHAT[:3]}]
    examples, stats = tokenize_records(records("messages", rows), tok, max_length=first_target + 3)
    assert [ex.input_ids for ex in examples] == [full[: first_target + 3]] * 2
    assert examples[0].labels == labels[: first_target + 3]
    assert (stats.examples, stats.truncated, stats.dropped, stats.target_tokens) == (2, 2, 0, 6)
    examples, stats = tokenize_records(records("messages", rows), tok, max_length=first_target)
    assert examples == [] and (stats.examples, stats.truncated, stats.dropped) == (0, 2, 2)


# --- packing ---------------------------------------------------------------------------------------------


def test_packing(tok) -> None:
    rows = [{"prompt": f"Question {i}: what is the dose?", "completion": f" {i * 10} mg."} for i in range(5)]
    plain, _ = tokenize_records(records("prompt_completion", rows), tok, max_length=512)
    packed, stats = tokenize_records(records("prompt_completion", rows), tok, max_length=16, packing=True)
    stream = [i for ex in plain for i in ex.input_ids]
    stream_labels = [label for ex in plain for label in ex.labels]
    assert [len(ex.input_ids) for ex in packed] == [16] * (len(stream) // 16) + [len(stream) % 16] * (
        len(stream) % 16 > 0
    )
    assert [i for ex in packed for i in ex.input_ids] == stream
    assert [label for ex in packed for label in ex.labels] == stream_labels
    assert (stats.packed_from, stats.examples, stats.truncated, stats.tokens) == (5, len(packed), 0, len(stream))


def test_packing_drops_chunks_without_targets(tok) -> None:
    rows = [{"prompt": "The patient reports mild headache and nausea after the first dose. " * 3, "completion": " ok"}]
    packed, stats = tokenize_records(records("prompt_completion", rows), tok, max_length=4, packing=True)
    assert all(any(label != X for label in ex.labels[1:]) for ex in packed)
    assert stats.dropped > 0 and stats.examples == len(packed) and stats.packed_from == 1


# --- other tokenizers and errors ---------------------------------------------------------------------------


def test_byte_tokenizer() -> None:
    bt = ByteTokenizer()
    (ex,), _ = tokenize_records(records("text", [{"text": "héllo"}]), bt, max_length=64)
    assert ex.input_ids == [1, *"héllo".encode(), 2] == ex.labels  # its BOS (1) leads, as with special tokens
    (ex,), _ = tokenize_records(records("prompt_completion", [{"prompt": "ab", "completion": "c"}]), bt, max_length=64)
    assert ex == Example([1, 97, 98, 99, 2], [X, X, X, 99, 2])
    with pytest.raises(DataError, match=r"^notes\.jsonl: messages records need a tokenizer with a chat template; m "):
        tokenize_records(records("messages", [{"messages": CHAT}]), bt, max_length=64, model="m")


def test_a_tokenizer_that_adds_bos_leads_text_and_prompts_with_it() -> None:
    """As TRL tokenizes with the tokenizer's defaults: a Llama-style BOS leads text and prompt."""
    from tokenizers import processors

    bos_tok = tiny_tokenizer()
    bos_tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos_tok.bos_token_id)]
    )
    bos = bos_tok.bos_token_id
    assert leading_special_ids(bos_tok) == [bos] and leading_special_ids(tiny_tokenizer()) == []
    (ex,), _ = tokenize_records(records("text", [{"text": "Hello"}]), bos_tok, max_length=64)
    assert ex.input_ids == [bos, *ids(bos_tok, "Hello"), bos_tok.eos_token_id]
    rows = [{"prompt": "Q: dose?", "completion": " 20 mg."}]
    (ex,), _ = tokenize_records(records("prompt_completion", rows), bos_tok, max_length=64)
    prompt = [bos, *ids(bos_tok, "Q: dose?")]
    assert ex.input_ids[: len(prompt)] == prompt and ex.labels[: len(prompt)] == [X] * len(prompt)


def test_tokenizer_errors(tok) -> None:
    no_template = tiny_tokenizer(chat_template=False)
    with pytest.raises(DataError, match=r"^notes\.jsonl: .*chat template; the model's tokenizer has none"):
        tokenize_records(records("messages", [{"messages": CHAT}]), no_template, max_length=64)
    no_eos = tiny_tokenizer()
    no_eos.eos_token = None
    with pytest.raises(DataError, match=r"^notes\.jsonl: text records need a tokenizer with an EOS token"):
        tokenize_records(records("text", [{"text": "a"}]), no_eos, max_length=64)
    with pytest.raises(ValueError, match="max_length"):
        tokenize_records(records("text", [{"text": "a"}]), tok, max_length=1)


def test_template_not_prefix_stable() -> None:
    tok = tiny_tokenizer()
    tok.chat_template = "{{ messages | length }}" + tok.chat_template  # the count changes with every prefix
    rows = [{"messages": CHAT[1:3]}, {"messages": CHAT[1:3]}]
    with pytest.raises(DataError, match=r"^notes\.jsonl row 1: the chat template is not prefix-stable"):
        tokenize_records(records("messages", rows), tok, max_length=64)
