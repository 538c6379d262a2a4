"""The three parts of a U-shaped split: client Bottom, server Trunk, client Top.

Only `(B, T, D)` activations and the 2-D attention mask cross a cut.  Each part rebuilds
position ids, the 4-D attention mask and (for rotary models) the position embeddings from
the 2-D mask on its own side, exactly as the unsplit model's forward does.

Blocks are kept in an `nn.ModuleDict` keyed by their index in the full model, so a part's
parameter names map to the full model's by a prefix swap (see `SplitPart.full_name`).
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
from torch import nn
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from splitfed.config.lora import LoraSpec
from splitfed.models.kv import KVCache
from splitfed.models.layout import Layout


class TopOutput(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them.

    (B, T) mask -> (B, T) long positions; padding positions are clamped to 0.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _ensure_mask(attention_mask: torch.Tensor | None, like: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
    """The 2-D mask over cached + new positions: (B, cache.length + T); all ones when None."""
    past = cache.length if cache is not None else 0
    shape = (like.shape[0], past + like.shape[1])
    if attention_mask is None:
        return torch.ones(shape, dtype=torch.long, device=like.device)
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != shape:
        what = "(batch, cached + new tokens)" if cache is not None else "(batch, tokens)"
        raise ValueError(f"attention_mask must be 2-D with shape {shape} {what}, got {tuple(attention_mask.shape)}")
    return attention_mask


def _new_positions(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """Position ids of the last `new` columns, counted over the whole (cached + new) mask."""
    return position_ids_from_mask(attention_mask)[:, attention_mask.shape[1] - new :]


def _layer_types(config, num_layers: int) -> list[str]:
    """Attention type of each block, as the model's own forward chooses it."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    # Mistral-style configs: no per-layer types, one sliding window for every layer.
    default = "sliding_attention" if getattr(config, "sliding_window", None) is not None else "full_attention"
    return [default] * num_layers


class SplitPart(nn.Module):
    """Common machinery: a run of transformer blocks plus the context they need.

    `lora_spec` is the part's LoRA adapter, ``None`` without one; `splitfed.models.set_lora`
    sets it.
    """

    role: str = "part"
    lora_spec: LoraSpec | None

    def __init__(self, config, layout: Layout, layers: dict[int, nn.Module], rotary: nn.Module | None):
        super().__init__()
        self.config = config
        self.layout = layout
        self.layers = nn.ModuleDict({str(i): layer for i, layer in sorted(layers.items())})
        self.rotary = rotary
        # local attribute name -> dotted path in the full model
        self._prefixes: dict[str, str] = {"layers": layout.layers}
        if rotary is not None and layout.rotary:
            self._prefixes["rotary"] = layout.rotary
        self._layer_types = _layer_types(config, layout.num_layers)
        self.lora_spec = None
        # GPT-NeoX and GPTBigCode blocks take their cache as `layer_past`, the others as `past_key_values`
        self._layer_past = {
            i for i, layer in self.layers.items() if "layer_past" in inspect.signature(layer.forward).parameters
        }

    @property
    def layer_range(self) -> tuple[int, int]:
        idx = [int(k) for k in self.layers]
        return (min(idx), max(idx) + 1) if idx else (0, 0)

    def full_name(self, local: str) -> str:
        """Map a parameter/module name of this part to the same name in the full model."""
        head, _, rest = local.partition(".")
        if head not in self._prefixes:
            raise KeyError(f"{self.role}: no full-model name for {local!r}")
        prefix = self._prefixes[head]
        return f"{prefix}.{rest}" if rest else prefix

    def local_name(self, full: str) -> str:
        """Inverse of `full_name`."""
        for head, prefix in sorted(self._prefixes.items(), key=lambda kv: -len(kv[1])):
            if full == prefix:
                return head
            if full.startswith(prefix + "."):
                return f"{head}.{full[len(prefix) + 1 :]}"
        raise KeyError(f"{self.role}: {full!r} does not belong to this part")

    def _run_layers(self, h: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Run the blocks; with `cache`, `h` holds the new positions only and `attention_mask`
        covers cached + new ones, and the blocks' K/V are appended to `cache`."""
        if cache is None and not len(self.layers):
            return h
        position_ids = _new_positions(attention_mask, h.shape[1])
        mask_kwargs = dict(
            config=self.config,
            inputs_embeds=h,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=position_ids,
        )
        wanted = {self._layer_types[int(i)] for i in self.layers}
        masks = {}
        if "full_attention" in wanted:
            masks["full_attention"] = create_causal_mask(**mask_kwargs)
        if "sliding_attention" in wanted:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        extra = {}
        if self.rotary is not None and len(self.layers):
            extra["position_embeddings"] = self.rotary(h, position_ids=position_ids)
        for i, layer in self.layers.items():
            out = layer(
                h,
                attention_mask=masks[self._layer_types[int(i)]],
                position_ids=position_ids,
                use_cache=cache is not None,
                **(
                    {"layer_past": cache, "past_key_values": None}
                    if i in self._layer_past
                    else {"past_key_values": cache}
                ),
                **extra,
            )
            h = out[0] if isinstance(out, tuple) else out
        if cache is not None:
            cache.advance(h.shape[0], h.shape[1])
        return h


class Bottom(SplitPart):
    """Client side, first half: token (and absolute position) embeddings + blocks [0, a)."""

    role = "bottom"

    def __init__(self, config, layout, *, embed, layers, rotary=None, pos_embed=None, embed_dropout=None):
        super().__init__(config, layout, layers, rotary)
        self.embed = embed
        self.pos_embed = pos_embed
        self.embed_dropout = embed_dropout
        self._prefixes["embed"] = layout.embed
        if pos_embed is not None:
            self._prefixes["pos_embed"] = layout.pos_embed
        if embed_dropout is not None:
            self._prefixes["embed_dropout"] = layout.embed_dropout

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, cache: KVCache | None = None
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, T, D) activations at the first cut.

        With `cache`, `input_ids` are the T new tokens and `attention_mask` covers the cached
        positions too; the blocks' K/V are appended to `cache`.
        """
        attention_mask = _ensure_mask(attention_mask, input_ids, cache)
        return self.from_embeddings(self.embed(input_ids), attention_mask, cache=cache)

    def from_embeddings(
        self, h: torch.Tensor, attention_mask: torch.Tensor, *, cache: KVCache | None = None
    ) -> torch.Tensor:
        """(B, T, D) token embeddings -> activations at the first cut (the rest of `forward`)."""
        if self.pos_embed is not None:
            h = h + self.pos_embed(_new_positions(attention_mask, h.shape[1]))
        if self.embed_dropout is not None:
            h = self.embed_dropout(h)
        return self._run_layers(h, attention_mask, cache)


class Trunk(SplitPart):
    """Server side: blocks [a, b).  Holds no embedding and no LM head."""

    role = "trunk"

    def forward(
        self, h: torch.Tensor, attention_mask: torch.Tensor | None = None, *, cache: KVCache | None = None
    ) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); with `cache` as in `Bottom.forward`."""
        return self._run_layers(h, _ensure_mask(attention_mask, h, cache), cache)


class Top(SplitPart):
    """Client side, second half: blocks [b, n) + final norm + LM head (+ loss on the labels)."""

    role = "top"

    def __init__(self, config, layout, *, layers, norm, lm_head, rotary=None):
        super().__init__(config, layout, layers, rotary)
        self.norm = norm
        self.lm_head = lm_head
        self._prefixes["norm"] = layout.norm
        self._prefixes["lm_head"] = layout.lm_head

    def forward(
        self,
        h: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor | TopOutput:
        """(B, T, D) -> (B, T, V) logits; with `labels` a `TopOutput(logits, loss)`.

        The loss is Hugging Face's causal-LM loss (shifted, `-100` ignored), the mean over
        target tokens, or their sum divided by `num_items_in_batch` when that is given.  With
        `cache` as in `Bottom.forward` (logits of the new positions only).
        """
        h = self._run_layers(h, _ensure_mask(attention_mask, h, cache), cache)
        logits = self.lm_head(self.norm(h))
        if labels is None:
            return logits
        loss = ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch)
        return TopOutput(logits, loss)
