"""Where the pieces of a decoder-only Hugging Face causal LM live.

`detect_layout` finds the embeddings, the list of transformer blocks, the final norm and
the LM head by name, so that the model can be cut at block boundaries.  Anything that does
not have that layout is refused with an error that names the architecture and what is
missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from splitfed.errors import SplitfedError

# Candidate attribute names, first match wins.  (GPT-2 family, Llama family, GPT-NeoX, Phi.)
_BASES = ("model", "transformer", "gpt_neox")
_EMBEDS = ("embed_tokens", "wte", "embed_in")
_POS_EMBEDS = ("wpe",)
_EMB_DROPOUTS = ("drop", "emb_dropout", "embed_dropout")
_LAYERS = ("layers", "h")
_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
_ROTARIES = ("rotary_emb",)
_HEADS = ("lm_head", "embed_out")


class UnsupportedModelError(SplitfedError, ValueError):
    """The model cannot be cut: it is not a decoder-only causal LM with the usual layout."""


@dataclass(frozen=True)
class Layout:
    """Dotted paths (from the top-level causal-LM module) of the parts `split_model` needs."""

    architecture: str
    model_type: str
    num_layers: int
    embed: str
    layers: str
    norm: str
    lm_head: str
    pos_embed: str | None = None
    embed_dropout: str | None = None
    rotary: str | None = None


def _first(module: nn.Module, names: tuple[str, ...]) -> str | None:
    for name in names:
        if isinstance(getattr(module, name, None), nn.Module):
            return name
    return None


def architecture_name(model: object) -> str:
    config = getattr(model, "config", None)
    archs = getattr(config, "architectures", None) or [type(model).__name__]
    return f"{archs[0]} (model_type={getattr(config, 'model_type', '?')!r})"


def detect_layout(model: nn.Module) -> Layout:
    """Return the `Layout` of `model` or raise `UnsupportedModelError` naming what is missing."""
    arch = architecture_name(model)
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torch.nn.Module causal LM, got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedModelError(f"{arch}: has no Hugging Face `config`; split_model needs a transformers model")
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{arch}: encoder-decoder models cannot be cut; need a decoder-only causal LM")
    base_name = _first(model, _BASES)
    head_name = _first(model, _HEADS)
    missing: list[str] = []
    if base_name is None:
        missing.append(f"a base model attribute (one of {', '.join(_BASES)})")
    if head_name is None:
        missing.append(f"an LM head (one of {', '.join(_HEADS)})")
    if missing:
        raise UnsupportedModelError(f"{arch} is not supported by split_model: missing {'; '.join(missing)}")
    base = getattr(model, base_name)
    embed = _first(base, _EMBEDS)
    layers = _first(base, _LAYERS)
    norm = _first(base, _NORMS)
    if embed is None:
        missing.append(f"token embeddings ({base_name}.{{{','.join(_EMBEDS)}}})")
    if layers is None or not isinstance(getattr(base, layers), nn.ModuleList):
        missing.append(f"a ModuleList of transformer blocks ({base_name}.{{{','.join(_LAYERS)}}})")
    if norm is None:
        missing.append(f"a final norm ({base_name}.{{{','.join(_NORMS)}}})")
    if missing:
        raise UnsupportedModelError(f"{arch} is not supported by split_model: missing {'; '.join(missing)}")
    pos = _first(base, _POS_EMBEDS)
    rotary = _first(base, _ROTARIES)
    if pos is None and rotary is None:
        raise UnsupportedModelError(
            f"{arch} is not supported by split_model: missing position information "
            f"(absolute {base_name}.wpe or rotary {base_name}.rotary_emb)"
        )
    drop = _first(base, _EMB_DROPOUTS)
    n = len(getattr(base, layers))
    return Layout(
        architecture=arch,
        model_type=str(getattr(config, "model_type", "?")),
        num_layers=n,
        embed=f"{base_name}.{embed}",
        layers=f"{base_name}.{layers}",
        norm=f"{base_name}.{norm}",
        lm_head=head_name,
        pos_embed=f"{base_name}.{pos}" if pos else None,
        embed_dropout=f"{base_name}.{drop}" if drop else None,
        rotary=f"{base_name}.{rotary}" if rotary else None,
    )


class CutError(SplitfedError, ValueError):
    """A cut that is not two layer indices 0 <= a < b <= the number of layers."""


def validate_cut(cut: tuple[int, int], num_layers: int) -> tuple[int, int]:
    """Check `0 <= a < b <= num_layers` and return the cut as a tuple of ints."""
    try:
        a, b = (int(c) for c in cut)
    except (TypeError, ValueError):
        raise CutError(f"cut must be a pair of layer indices (a, b), got {cut!r}") from None
    if not (0 <= a < b <= num_layers):
        raise CutError(
            f"invalid cut {(a, b)}: need 0 <= a < b <= {num_layers} for a model with {num_layers} layers "
            f"(bottom = layers [0, a), trunk = [a, b), top = [b, {num_layers}))"
        )
    return a, b
