"""Records into tokenized `Example`s with loss masks, following TRL's ``SFTTrainer`` conventions.

- ``text``: the text's tokens and EOS, loss on every token.
- ``prompt_completion``: prompt tokens, then completion tokens and EOS; loss on the completion and
  EOS only. This is the code path of the built-in drug review data (`prompt_completion_example`).
- ``messages``: the tokenizer's chat template; loss on each assistant turn as the template renders
  it (content and end-of-turn marker); system, user and generation-prompt tokens are masked.

Text is tokenized without special tokens (``add_special_tokens=False``); in files, a ``text``
or a prompt is preceded by the ids the tokenizer itself puts before a text (`leading_special_ids`:
BOS for Llama-style tokenizers, nothing for SmolLM2 or GPT-2), as TRL does by tokenizing with
its defaults.  The bundled demo path adds none.
Without packing an example longer than ``max_length`` keeps its head (a prompt is cut to
``max_length - 1`` tokens so one completion token remains). With packing nothing is truncated:
all examples are concatenated in order and cut into ``max_length`` chunks ("wrapped" packing,
as TRL's ``packing_strategy="wrapped"``); attention then crosses example boundaries, so a chunk's
later examples see the tail of the earlier ones as context. An example or chunk without a target
token (position 0 is never predicted) is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from splitfed.data.drugreviews import IGNORE_INDEX, Example, Tokenizer
from splitfed.data.records import DataError, Records


@dataclass
class TokenizeStats:
    """Counts over the examples `tokenize_records` returned (``tokens``: input ids, ``target_tokens``:
    labels that are not ``IGNORE_INDEX``). ``truncated``: records cut to ``max_length`` (the dropped
    ones included); ``dropped``: records (or packed chunks) without a target token; ``packed_from``:
    the examples that were packed, ``None`` without packing."""

    examples: int
    truncated: int
    tokens: int
    target_tokens: int
    dropped: int = 0
    packed_from: int | None = None


def token_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """``tokenizer(text, add_special_tokens=False)["input_ids"]`` as a list of ints."""
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def leading_special_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids `tokenizer` puts before a text when special tokens are on (e.g. ``[bos]``), else ``[]``."""
    bare = token_ids(tokenizer, "a")
    full = [int(i) for i in tokenizer("a", add_special_tokens=True)["input_ids"]]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start]
    return []


def prompt_completion_example(
    tokenizer: Tokenizer, prompt: str, completion: str, *, max_length: int, eos: int, prefix: Sequence[int] = ()
) -> tuple[Example, bool]:
    """(example, truncated): prompt + completion + EOS, loss on completion and EOS.

    Prompt and completion are tokenized separately so their boundary is exact. Too long: the
    completion (and its EOS) is cut first; a prompt of ``max_length - 1`` or more tokens is cut to
    ``max_length - 1`` tokens (keeping its head) so that one completion token always remains.
    """
    full_prompt = [*prefix, *token_ids(tokenizer, prompt)]
    full_target = [*token_ids(tokenizer, completion), int(eos)]
    prompt_ids = full_prompt[: max_length - 1]
    target = full_target[: max_length - len(prompt_ids)]
    example = Example(input_ids=prompt_ids + target, labels=[IGNORE_INDEX] * len(prompt_ids) + target)
    return example, len(full_prompt) + len(full_target) > max_length


def text_example(
    tokenizer: Tokenizer, text: str, *, max_length: int, eos: int, prefix: Sequence[int] = ()
) -> tuple[Example, bool]:
    """(example, truncated): [prefix +] text + EOS with the loss on every token, cut to ``max_length``."""
    ids = [*prefix, *token_ids(tokenizer, text), int(eos)]
    kept = ids[:max_length]
    return Example(input_ids=kept, labels=list(kept)), len(ids) > max_length


def _chat_ids(tokenizer, messages: Sequence[Mapping], *, add_generation_prompt: bool = False) -> list[int]:
    try:
        out = tokenizer.apply_chat_template(
            list(messages), tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
    except Exception as exc:  # a template error (e.g. jinja's raise_exception) is a data problem
        raise DataError(f"the chat template failed: {str(exc).strip()[:200]}") from None
    if isinstance(out, Mapping):  # transformers 5 returns a BatchEncoding unless return_dict=False
        out = out["input_ids"]
    return [int(i) for i in out]


def chat_labels(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, labels) of one conversation: ids exactly as ``apply_chat_template(messages)``, labels
    ``IGNORE_INDEX`` except on the assistant turns.

    Assistant turn ``i`` spans the tokens from ``template(messages[:i], add_generation_prompt=True)``
    to ``template(messages[:i + 1])``; both must be prefixes of the full ids, else `DataError`.
    """
    ids = _chat_ids(tokenizer, messages)
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _chat_ids(tokenizer, messages[:i], add_generation_prompt=True)
        end = _chat_ids(tokenizer, messages[: i + 1])
        if ids[: len(end)] != end or end[: len(start)] != start or len(start) >= len(end):
            raise DataError(
                f"the chat template is not prefix-stable: the tokens of messages 1..{i + 1} (and of the "
                "generation prompt before them) are not a prefix of the whole conversation's tokens, "
                "so the assistant tokens cannot be located"
            )
        labels[len(start) : len(end)] = ids[len(start) : len(end)]
    return ids, labels


def tokenize_records(
    records: Records, tokenizer, *, max_length: int, packing: bool = False, model: str = "the model's tokenizer"
) -> tuple[list[Example], TokenizeStats]:
    """Examples and counts for `records` (see the module docstring for masks, truncation, packing).

    `model` names the tokenizer in the error for a messages file and a tokenizer without a chat
    template. Raises `DataError` naming the file (and row) for data the tokenizer cannot handle.
    """
    if max_length < 2:
        raise DataError(f"max_length must be >= 2 (one prompt and one target token), got {max_length}")
    limit = None if packing else max_length
    path, fmt = records.path, records.format
    if fmt == "messages":
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{path}: messages records need a tokenizer with a chat template; {model} has none")
    elif getattr(tokenizer, "eos_token_id", None) is None:
        raise DataError(f"{path}: {fmt} records need a tokenizer with an EOS token; {model} has none")
    prefix = leading_special_ids(tokenizer) if fmt != "messages" else []  # a chat template renders its own
    examples: list[Example] = []
    truncated = dropped = 0
    for i, row in enumerate(records.rows):
        example, cut = _encode(records.format, row, tokenizer, limit, records.where(i), prefix)
        truncated += cut
        if _has_target(example.labels):
            examples.append(example)
        else:
            dropped += 1
    packed_from = None
    if packing:
        packed_from = len(examples)
        chunks = pack(examples, max_length)
        examples = [c for c in chunks if _has_target(c.labels)]
        dropped += len(chunks) - len(examples)
    stats = TokenizeStats(
        examples=len(examples),
        truncated=truncated,
        tokens=sum(len(ex.input_ids) for ex in examples),
        target_tokens=sum(label != IGNORE_INDEX for ex in examples for label in ex.labels),
        dropped=dropped,
        packed_from=packed_from,
    )
    return examples, stats


def pack(examples: Sequence[Example], max_length: int) -> list[Example]:
    """Concatenate `examples` in order and cut the stream into ``max_length`` chunks (the last may be shorter)."""
    ids = [t for ex in examples for t in ex.input_ids]
    labels = [t for ex in examples for t in ex.labels]
    return [Example(ids[s : s + max_length], labels[s : s + max_length]) for s in range(0, len(ids), max_length)]


def _encode(
    fmt: str, row: dict, tokenizer, limit: int | None, where: str, prefix: Sequence[int]
) -> tuple[Example, bool]:
    big = limit if limit is not None else 1 << 62  # packing: no truncation
    eos = tokenizer.eos_token_id
    if fmt == "text":
        return text_example(tokenizer, row["text"], max_length=big, eos=eos, prefix=prefix)
    if fmt == "prompt_completion":
        return prompt_completion_example(
            tokenizer, row["prompt"], row["completion"], max_length=big, eos=eos, prefix=prefix
        )
    try:
        ids, labels = chat_labels(tokenizer, row["messages"])
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    return Example(ids[:big], labels[:big]), len(ids) > big


def _has_target(labels: Sequence[int]) -> bool:
    return any(label != IGNORE_INDEX for label in labels[1:])
