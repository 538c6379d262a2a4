"""Streamed text never takes anything back: a character split over byte tokens waits for its bytes."""

import pytest
import torch
from splitfed_testing import tiny_tokenizer

from splitfed.inference.stream import REPLACEMENT, TextStream

TEXT = "Patient: naïve to metformin, café visits 🙂 then 痛み eased."


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_pieces_concatenate_to_the_final_text_and_never_hold_a_broken_character(tok):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    partial = [tok.decode(ids[:k]) for k in range(1, len(ids) + 1)]
    assert any(p.endswith(REPLACEMENT) for p in partial)  # the case that matters: bytes split over tokens
    pieces: list[tuple[int, str]] = []
    stream = TextStream(tok, 2, lambda row, piece: pieces.append((row, piece)))
    other = tok("ok", add_special_tokens=False)["input_ids"]
    for k, t in enumerate(ids):
        stream.push(torch.tensor([t, other[k] if k < len(other) else tok.pad_token_id]))
    stream.finish([ids, other])
    row0 = [p for r, p in pieces if r == 0]
    assert "".join(row0) == TEXT and len(row0) > 10  # streamed as it came, not at the end
    assert not any(REPLACEMENT in p for p in row0)
    assert "".join(p for r, p in pieces if r == 1) == "ok"  # a finished row's padding adds nothing


def test_finish_flushes_a_row_that_ends_mid_character(tok):
    ids = tok("🙂", add_special_tokens=False)["input_ids"][:-1]  # cut short: max_new_tokens ended it
    pieces: list[str] = []
    stream = TextStream(tok, 1, lambda row, piece: pieces.append(piece))
    for t in ids:
        stream.push([t])
    assert pieces == []
    stream.finish([ids])
    assert "".join(pieces) == tok.decode(ids)  # what the row ends with, as generate_text returns it
