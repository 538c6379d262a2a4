"""Test helpers: tiny random models of several architectures (no downloads), padded batches."""

from __future__ import annotations

import torch


def tiny_config(arch: str, **overrides):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=128, max_position_embeddings=64)
    if arch == "llama":
        cfg = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            **common,
        )
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=128, n_embd=32, n_layer=4, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    elif arch == "qwen2":  # alternating full / sliding-window attention layers
        cfg = Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            use_sliding_window=True,
            sliding_window=3,
            max_window_layers=2,
            **common,
        )
    elif arch == "mistral":  # one sliding window for every layer
        cfg = MistralConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=3,
            **common,
        )
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(arch: str, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **overrides)).eval()


def padded_batch(padding: str, *, batch=3, length=10, vocab=128, seed=0):
    """Random ids with a mask that pads two rows on `padding` side by different amounts."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row, pad in ((1, 3), (2, 6)):
        if row < batch:
            if padding == "left":
                mask[row, :pad] = 0
            else:
                mask[row, length - pad :] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


ARCHS = ["llama", "gpt2", "qwen2", "mistral"]


DIM = 384  # MiniLM's embedding width


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_store(n: int, rng):
    """A vector store of `n` random unit vectors (no embedder needed)."""
    import numpy as np

    from splitfed.rag.corpus import Document
    from splitfed.rag.store import VectorStore

    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return VectorStore(v, [Document(f"d{i}", f"title {i}", f"text {i}") for i in range(n)])
