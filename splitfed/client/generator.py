"""Generate with the fine-tuned split model: the prompt and the answer stay on the client.

`SplitLM` loads this client's Bottom and Top with its fine-tuned adapter (the PEFT adapter
the client wrote at the end of training), connects to a server that serves generation
(``splitfed server`` during or after the run, or ``splitfed serve`` for a finished one) and
reads like Hugging Face ``model.generate``::

    lm = SplitLM(load_config("run.toml"), client_id=0)
    out = lm.generate(input_ids, attention_mask, max_new_tokens=32)
    print(lm.generate_text(["Patient reports"], max_new_tokens=32))
    lm.close()

Each call opens one stream on the server: the prompt's activations at the first cut go up
once, then one position per new token; the server runs its trunk adapter (this client's own
in ``per_client`` mode) with a per-stream KV cache, and never holds a token id.

With ``[privacy]`` on, every position sent goes through ``[privacy.activations]`` and the
session is recorded in the client's inference ledger first (`splitfed.client.inference_privacy`);
``last_session`` then states its epsilon, per session and for the client.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from splitfed.aggregation import run_roster
from splitfed.client.generation import RemoteDecodeLink
from splitfed.client.inference_privacy import InferencePrivacy, InferenceSession
from splitfed.client.link import Connection, ServerRefused
from splitfed.config import RunConfig
from splitfed.errors import UsageError
from splitfed.inference import GenerationSettings, SplitGenerator
from splitfed.inference.generate import GenerationOutput
from splitfed.inference.stream import TextStream
from splitfed.transport import client_name
from splitfed.wire import Header, MsgType, encode
from splitfed.wire.meta import Bye, Hello

log = logging.getLogger("splitfed.client")


class SplitLM:
    def __init__(
        self,
        cfg: RunConfig,
        client_id: int,
        *,
        adapter_dir: str | Path | None = None,
        base: bool = False,
        insecure: bool = False,
        endpoint: str | None = None,
    ):
        """`adapter_dir`: the client's fine-tuned PEFT adapter (default: where training wrote it,
        ``client.adapter_dir`` or ``run.dir/clients/client-K/adapter``); `base`: no adapter on
        this side (the public base model's Bottom and Top)."""
        from splitfed.models import load_client_parts, load_tokenizer, set_lora
        from splitfed.models.client_adapter import load_exported_adapter
        from splitfed.models.placement import place, resolve_device
        from splitfed.models.source import resolve_base_model

        if not 0 <= client_id < cfg.data.clients:
            raise UsageError(f"--client-id must be in [0, {cfg.data.clients}), got {client_id}")
        self.cfg, self.client_id, self.name = cfg, client_id, client_name(client_id)
        self.base_model = resolve_base_model(cfg.model, need_tokenizer=True)
        self.tokenizer = load_tokenizer(self.base_model.path)
        self.bottom, self.top = load_client_parts(self.base_model.path, tuple(cfg.model.cut))
        parts = {"bottom": self.bottom, "top": self.top}
        self.adapter: Path | None = None
        if not base:
            default = Path(cfg.run.dir) / "clients" / self.name / "adapter"
            self.adapter = Path(adapter_dir or cfg.client.adapter_dir or default)
            lora = cfg.lora.to_split_lora()
            for role, part in parts.items():
                set_lora(part, lora.for_role(role), seed=0)
            try:
                load_exported_adapter(parts, self.adapter)
            except (FileNotFoundError, ValueError) as exc:
                hint = "train first, pass --adapter DIR, or --base for the public base model"
                raise UsageError(f"{exc}; {hint}") from None
        self.device = resolve_device(cfg.client.device, key="client.device")
        for part in parts.values():
            place(part, self.device)
            part.eval()
        self._streams = itertools.count()
        self.privacy: InferencePrivacy | None = None
        self.last_session: InferenceSession | None = None  # with [privacy] on: the last session's statements
        if cfg.privacy.enabled:
            self.privacy = InferencePrivacy(cfg, self.name, seed=cfg.run.seed * 1000 + client_id)
        self.conn = Connection(cfg, client_id, insecure=insecure, endpoint=endpoint)
        self._hello()

    def _hello(self) -> None:
        hello = Hello(
            client_id=self.client_id,
            config_hash=self.cfg.hash(),
            config_keys=self.cfg.key_digests(),
            model=self.base_model.fingerprint,
            roster=run_roster(self.cfg).digest if self.cfg.aggregation.secure else None,  # the agreed one, checked
            n_samples=1,
            generate=True,
        )
        welcome = self.conn.request(Header(MsgType.HELLO, meta=hello), expect=MsgType.WELCOME)
        self.conn.session = welcome.header.session
        if welcome.meta.hidden != self.bottom.config.hidden_size:
            ours = self.bottom.config.hidden_size
            raise ServerRefused(f"server trunk has hidden size {welcome.meta.hidden}, this model {ours}")
        self.compression = welcome.meta.compression

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        settings: GenerationSettings | None = None,
        *,
        on_tokens: Callable[[int, torch.Tensor], None] | None = None,
        **overrides: Any,
    ) -> GenerationOutput:
        """Like ``model.generate``: (B, T) ids (either padding side) -> `GenerationOutput` (sequences,
        new tokens per row, finish reasons).  `settings` default to the run config's ``[generate]``
        (``cfg.generate``); `overrides` (`GenerationSettings` keys) replace single keys of either."""
        settings = self.cfg.generate if settings is None else settings
        if overrides:
            settings = settings.with_overrides(overrides)
        positions = input_ids.shape[1] + settings.max_new_tokens
        release = None
        if self.privacy is not None:  # recorded (and checked against the budget) before anything is sent
            self.last_session = self.privacy.open(
                rows=input_ids.shape[0],
                prompt_positions=input_ids.shape[1],
                max_new_tokens=settings.max_new_tokens,
                hidden=self.bottom.config.hidden_size,
            )
            release = self.last_session.release
        link = RemoteDecodeLink(self.conn, next(self._streams), compression=self.compression, positions=positions)
        gen = SplitGenerator(
            self.bottom,
            self.top,
            link,
            pad_token_id=self._pad_id(),
            eos_token_id=self.tokenizer.eos_token_id,
            release=release,
            fixed_steps=self.privacy is not None,
        )
        ids = input_ids.to(self.device)
        mask = attention_mask.to(self.device) if attention_mask is not None else None
        return gen.generate(ids, mask, settings, tokenizer=self.tokenizer, on_tokens=on_tokens)

    def generate_text(
        self,
        prompts: Sequence[str],
        settings: GenerationSettings | None = None,
        *,
        chat: bool = False,
        on_text: Callable[[int, str], None] | None = None,
        **overrides: Any,
    ) -> list[str]:
        """Generate a continuation of each prompt (``chat``: each prompt is one user turn through the
        tokenizer's chat template); `on_text(row, piece)` streams the decoded text as it comes.  `settings`
        and `overrides` as in `generate` (by default the run config's ``[generate]``)."""
        texts = [self._chat(p) if chat else p for p in prompts]
        ids = [list(self.tokenizer(t, add_special_tokens=not chat)["input_ids"]) for t in texts]
        if not all(ids):
            raise UsageError("a prompt tokenizes to nothing: give it some text")
        width = max(len(r) for r in ids)
        input_ids = torch.tensor([[self._pad_id()] * (width - len(r)) + r for r in ids])  # left padding
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
        stream = None if on_text is None else TextStream(self.tokenizer, len(texts), on_text)
        out = self.generate(
            input_ids, mask, settings, on_tokens=None if stream is None else lambda step, t: stream.push(t), **overrides
        )
        if stream is not None:
            stream.finish(out.new_tokens)
        return [self.tokenizer.decode(toks, skip_special_tokens=True) for toks in out.new_tokens]

    def _chat(self, prompt: str) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise UsageError(f"the tokenizer of {self.base_model.label} has no chat template: drop --chat")
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def close(self) -> None:
        """Say BYE (the server frees every stream of this session) and close the connection."""
        with contextlib.suppress(ConnectionError):
            self.conn.sock.send(encode(Header(MsgType.BYE, self.conn.session, 0, 0, Bye())), timeout_ms=1000)
        time.sleep(0.1)  # let the BYE leave before the socket closes
        self.conn.close()

    def __enter__(self) -> SplitLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
