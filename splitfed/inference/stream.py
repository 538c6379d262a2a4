"""Streamed text of generated tokens, row by row, that is never taken back.

Decoding a row's tokens so far can end in an incomplete character: a byte-level BPE splits
a multi-byte character (an accent, a CJK character, an emoji) over several tokens, and the
tokenizer decodes the missing bytes as U+FFFD until they come.  `TextStream` emits a row's
new text only once it no longer ends in U+FFFD, so what it has emitted stays a prefix of the
final text; `finish` emits whatever is left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

REPLACEMENT = "\ufffd"


class TextStream:
    """`on_text(row, piece)` receives each row's text as it grows; pieces concatenate to the final text."""

    def __init__(self, tokenizer, rows: int, on_text: Callable[[int, str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.shown = [""] * rows
        self.done = [False] * rows

    def push(self, tokens: torch.Tensor | Sequence[int], running: Sequence[bool] | None = None) -> None:
        """One step's token per row; rows not `running` (already finished) are skipped."""
        values = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        for row, tok in enumerate(values):
            if self.done[row] or (running is not None and not running[row]):
                continue
            self.tokens[row].append(int(tok))
            self._emit(row, final=False)

    def finish(self, new_tokens: Sequence[Sequence[int]]) -> None:
        """The rows' final tokens (`GenerationOutput.new_tokens`): emit what is left of each."""
        for row, toks in enumerate(new_tokens):
            self.tokens[row] = list(toks)
            self._emit(row, final=True)
            self.done[row] = True

    def _emit(self, row: int, *, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        if not final and text.endswith(REPLACEMENT):
            return  # a character still waits for its last bytes
        if text.startswith(self.shown[row]) and len(text) > len(self.shown[row]):
            self.on_text(row, text[len(self.shown[row]) :])
            self.shown[row] = text
