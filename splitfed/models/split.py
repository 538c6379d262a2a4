"""Cut a Hugging Face causal LM into Bottom / Trunk / Top."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from splitfed.models.layout import Layout, UnsupportedModelError, detect_layout, validate_cut
from splitfed.models.parts import Bottom, Top, Trunk, position_ids_from_mask


class SplitMismatchError(UnsupportedModelError):
    """The cut model does not reproduce the unsplit forward (an unusual architecture)."""


@dataclass
class SplitModel:
    """The three parts of one model.  In-process they share modules with the source model."""

    bottom: Bottom
    trunk: Trunk
    top: Top
    layout: Layout
    cut: tuple[int, int]

    @property
    def parts(self) -> dict[str, nn.Module]:
        return {"bottom": self.bottom, "trunk": self.trunk, "top": self.top}

    def forward(self, input_ids, attention_mask=None, labels=None):
        """Run the three parts back to back (in memory); same return as `Top.forward`."""
        h = self.bottom(input_ids, attention_mask)
        h = self.trunk(h, attention_mask)
        return self.top(h, attention_mask, labels)

    __call__ = forward

    def train(self, mode: bool = True) -> SplitModel:
        for part in self.parts.values():
            part.train(mode)
        return self

    def eval(self) -> SplitModel:
        return self.train(False)


def get_submodule(model: nn.Module, path: str | None) -> nn.Module | None:
    return None if path is None else model.get_submodule(path)


def build_parts(model: nn.Module, layout: Layout, cut: tuple[int, int], roles=("bottom", "trunk", "top")):
    """Build the requested parts from (possibly meta-device) `model`; returns {role: part}."""
    a, b = cut
    blocks = model.get_submodule(layout.layers)
    rotary = get_submodule(model, layout.rotary)
    config = model.config
    made: dict[str, nn.Module] = {}
    if "bottom" in roles:
        made["bottom"] = Bottom(
            config,
            layout,
            embed=model.get_submodule(layout.embed),
            layers={i: blocks[i] for i in range(0, a)},
            rotary=rotary,
            pos_embed=get_submodule(model, layout.pos_embed),
            embed_dropout=get_submodule(model, layout.embed_dropout),
        )
    if "trunk" in roles:
        made["trunk"] = Trunk(config, layout, {i: blocks[i] for i in range(a, b)}, rotary)
    if "top" in roles:
        made["top"] = Top(
            config,
            layout,
            layers={i: blocks[i] for i in range(b, layout.num_layers)},
            norm=model.get_submodule(layout.norm),
            lm_head=model.get_submodule(layout.lm_head),
            rotary=rotary,
        )
    return made


def split_model(model: nn.Module, cut: tuple[int, int], *, verify: bool = True) -> SplitModel:
    """Cut `model` into `.bottom` (embeddings + layers [0, a)), `.trunk` ([a, b)) and
    `.top` ([b, n) + final norm + LM head).

    The parts share their modules with `model` (no copy).  With `verify` (default) a short
    forward on random tokens checks that the parts reproduce the unsplit logits, so an
    architecture whose forward differs from the usual layout fails loudly here rather than
    training silently wrong.
    """
    layout = detect_layout(model)
    cut = validate_cut(cut, layout.num_layers)
    parts = build_parts(model, layout, cut)
    split = SplitModel(parts["bottom"], parts["trunk"], parts["top"], layout, cut)
    if verify:
        verify_split(model, split)
    return split


@torch.no_grad()
def verify_split(model: nn.Module, split: SplitModel, *, atol: float | None = None) -> float:
    """Compare split and unsplit logits on a small padded batch; return the max |diff|."""
    was_training = model.training
    model.eval()
    split.eval()
    try:
        gen = torch.Generator().manual_seed(0)
        vocab = min(int(model.config.vocab_size), 1000)
        ids = torch.randint(0, vocab, (2, 8), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, :3] = 0  # left padding in the second row
        param = next(model.parameters())
        if atol is None:
            atol = 1e-4 if param.dtype == torch.float32 else 5e-2
        ids, mask = ids.to(param.device), mask.to(param.device)
        want = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        got = split(ids, mask)
        diff = (want - got)[mask.bool()].abs().max().item()
    finally:
        model.train(was_training)
        split.train(was_training)
    if not diff <= atol:
        raise SplitMismatchError(
            f"{split.layout.architecture}: split forward differs from the unsplit model "
            f"(max |logit diff| {diff:.3g} > {atol:g}); this architecture's forward does something "
            "the usual layout does not (e.g. scaled embeddings) and is not supported"
        )
    return diff
