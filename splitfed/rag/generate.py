"""Retrieval-augmented generation: a prompt grounded in the retrieved documents, answered by SmolLM2
(optionally with a PEFT adapter exported by a SplitFed training run)."""

from __future__ import annotations

import os
from collections.abc import Sequence

SYSTEM = "Answer the question using only the articles below. Be brief."


def build_prompt(question: str, hits: Sequence, *, chars_per_doc: int = 700) -> list[dict[str, str]]:
    """Chat messages: the retrieved articles (truncated) followed by the question."""
    parts = [f"Article {i + 1}: {h.title}\n{h.text[:chars_per_doc]}" for i, h in enumerate(hits)]
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "\n\n".join(parts) + f"\n\nQuestion: {question}"},
    ]


class Generator:
    def __init__(self, model: str = "smollm2-135m", *, adapter: str | os.PathLike | None = None):
        from splitfed.models import load_pretrained

        pre = load_pretrained(model)
        self.tokenizer = pre.tokenizer
        self.model = pre.model
        if adapter is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(pre.model, str(adapter)).eval()

    def generate(self, messages: list[dict[str, str]], *, max_new_tokens: int = 96) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = self.model.generate(
                **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.eos_token_id
            )
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
