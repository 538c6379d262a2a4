"""Which base model a party runs: its own local directory (``model.path``) or a built-in one.

Every party (the server and each client) names its own copy of the base model; that the
copies hold the same weights is checked at HELLO with `model_fingerprint`, computed here
from the files on each side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from splitfed.config.schema import ModelSection


@dataclass(frozen=True)
class BaseModel:
    """A party's base model: the checkpoint directory it reads and the fingerprint of its files."""

    path: Path
    fingerprint: str
    label: str  # how the user named it: the directory, or the built-in name

    def __str__(self) -> str:
        return f"{self.label} ({short_fingerprint(self.fingerprint)})"


def short_fingerprint(fp: str) -> str:
    """``sha256:0123456789abcdef`` (16 hex digits): enough to compare over the phone."""
    algo, _, digest = fp.partition(":")
    return f"{algo}:{digest[:16]}" if digest else fp[:23]


def resolve_base_model(model: ModelSection, *, need_tokenizer: bool) -> BaseModel:
    """The directory of ``model.path`` (validated) or of the built-in ``model.name`` (prepared).

    `need_tokenizer`: clients tokenize, the server does not.  Raises `ModelDirError` (a
    `ValueError`-like `CheckpointError`) naming the directory and what is wrong.
    """
    from splitfed.models.fingerprint import model_fingerprint
    from splitfed.models.local import inspect_model_dir
    from splitfed.models.pretrained import prepare

    if model.path:
        path = Path(model.path).expanduser().resolve()
        inspect_model_dir(path, need_tokenizer=need_tokenizer)
        label = str(path)
    else:
        path = prepare(model.name, cache_dir=model.cache_dir or None)
        label = model.name
    return BaseModel(path=path, fingerprint=model_fingerprint(path), label=label)
