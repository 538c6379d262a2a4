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
    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        adapter: str | os.PathLike | None = None,
        device: str = "auto",
        dtype: str = "float32",
    ):
        """`device`: auto (CUDA when present), cpu, cuda or cuda:N; `dtype`: float32, bfloat16 or float16."""
        from splitfed.models import load_pretrained
        from splitfed.models.placement import resolve_device, resolve_dtype

        pre = load_pretrained(model)
        self.tokenizer = pre.tokenizer
        self.model = pre.model
        if adapter is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(pre.model, str(adapter)).eval()
        self.device = resolve_device(device, key="generator device")
        self.model.to(self.device, resolve_dtype(dtype, self.device, key="generator dtype"))

    def generate(self, messages: list[dict[str, str]], *, max_new_tokens: int = 96) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        with torch.no_grad():
            out = self.model.generate(
                **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.eos_token_id
            )
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
