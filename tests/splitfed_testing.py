"""Test helpers: tiny random models of several architectures (no downloads), padded batches."""

from __future__ import annotations

import torch

# The one place for tiny random models: every test and benchmark builds its models here.
# One shape for every decoder family (4 layers: a cut (1, 3) leaves a layer in each part).
_DECODER_SHAPE = dict(
    vocab_size=128,
    max_position_embeddings=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
)
_GPT2_SHAPE = dict(vocab_size=128, n_positions=64, n_embd=32, n_layer=4, n_head=4, bos_token_id=1, eos_token_id=2)
_FAMILY_IDS = dict(head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)  # the families below

# Each entry switches on what makes the family different, so the exactness tests exercise it.
_FAMILIES: dict[str, dict] = {
    "qwen3": dict(use_sliding_window=True, sliding_window=3, max_window_layers=2),  # q/k norm, mixed windows
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=3),
    "gemma": dict(),  # embeddings scaled by sqrt(hidden) inside the embedding module; tied head
    "phi": dict(partial_rotary_factor=0.5, num_key_value_heads=4),  # parallel block, final_layernorm, biases
    "phi3": dict(sliding_window=3),  # fused qkv / gate_up projections
    "stablelm": dict(partial_rotary_factor=0.25, qk_layernorm=True, use_parallel_residual=True),
    "gpt_neox": dict(partial_rotary_factor=0.5, num_key_value_heads=4),  # parallel residual, embed_in / embed_out
    "gpt_bigcode": dict(multi_query=True),
    "olmo": dict(clip_qkv=8.0),  # non-parametric layer norms
    "olmo2": dict(),  # post-norms, q/k norm
    "smollm3": dict(no_rope_layers=[1, 1, 0, 1]),  # a layer without rotary
    "starcoder2": dict(sliding_window=3),
}

# Complete configurations, by model type.  Beyond ARCHS: models the split must refuse or catch.
_CONFIGS: dict[str, dict] = {
    "llama": _DECODER_SHAPE,
    "gpt2": _GPT2_SHAPE,
    "qwen2": {**_DECODER_SHAPE, "use_sliding_window": True, "sliding_window": 3, "max_window_layers": 2},  # mixed
    "mistral": {**_DECODER_SHAPE, "sliding_window": 3},  # one sliding window for every layer
    **{arch: {**_DECODER_SHAPE, **_FAMILY_IDS, **extra} for arch, extra in _FAMILIES.items()},
    "gpt_bigcode": {**_GPT2_SHAPE, "n_inner": 64, **_FAMILIES["gpt_bigcode"]},  # GPT-2 names
    "granite": {**_DECODER_SHAPE, "num_hidden_layers": 2},  # the Llama layout, an unusual forward
    "bert": dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
    "t5": dict(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8),  # encoder-decoder
}

GPT2_NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def no_dropout(arch: str) -> dict:
    """Overrides that switch off an architecture's dropout (GPT-2's is on by default)."""
    return GPT2_NO_DROPOUT if arch == "gpt2" else {}


def tiny_config(arch: str, **overrides):
    """The tiny configuration of model type `arch` (a key of `_CONFIGS`), with `overrides`."""
    from transformers import AutoConfig

    if arch not in _CONFIGS:
        raise ValueError(f"no tiny {arch!r} model; known: {sorted(_CONFIGS)}")
    return AutoConfig.for_model(arch, **{**_CONFIGS[arch], **overrides})


def tiny_model(arch: str, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **overrides)).eval()


def randomize_lora_b(split, scale: float, seed: int = 1) -> None:
    """LoRA B starts at zero (the adapter is then a no-op, every A-gradient zero): fill it with
    seeded noise of std `scale` on every part, so exactness tests see the adapter matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in split.parts.values():
            for name, p in part.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * scale)


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


ARCHS = ["llama", "gpt2", "qwen2", "mistral", *_FAMILIES]


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


# --------------------------------------------------------------------------- local model directories

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_TOKENIZER_TEXT = [
    "The patient reports mild headache and nausea after the first dose.",
    "Discharge summary: stable, follow up in two weeks with the clinic.",
    "Question: what is the dose? Answer: 20 mg twice a day with food.",
    "Hello! How are you today? I am fine, thank you.",
]


def tiny_tokenizer(*, chat_template: bool = True, vocab_size: int = 320):
    """A byte-level BPE tokenizer trained in memory (no download), with pad/bos/eos and,
    by default, a ChatML chat template; any text tokenizes (bytes are the base alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_TOKENIZER_TEXT * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token=None
    )
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def make_model_dir(
    path,
    arch: str = "llama",
    *,
    dtype=None,
    max_shard_size: str | None = None,
    tokenizer: bool = True,
    chat_template: bool = True,
    seed: int = 0,
):
    """Write a tiny random `arch` model (save_pretrained, safetensors) with a real tokenizer to `path`.

    `dtype` (e.g. torch.bfloat16) converts the weights first; `max_shard_size` (e.g. "100KB")
    writes a sharded checkpoint with an index.  Returns the directory.
    """
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    path = Path(path)
    tok = tiny_tokenizer(chat_template=chat_template)
    cfg = tiny_config(arch, vocab_size=len(tok))
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    if tokenizer:
        tok.save_pretrained(path)
    return path
