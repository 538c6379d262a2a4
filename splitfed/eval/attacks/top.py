"""Inversion from the Top side: what the server learns about the next tokens (the labels).

The server computes the trunk output it sends to the client's Top, and receives back the
gradient of the client's loss with respect to it.  Both reveal the labels:

- `LogitLens`: the public pretrained Top (its layers, final norm and LM head) run on the
  trunk output predicts the next token: the server reads the model's own guess.
- `GradientLabels`: the returned gradient carries ``-(one-hot label)`` through the LM head.
  With the public Top the server computes the softmax part it expects, ``J^T p``, subtracts
  the observed gradient, and reads the remainder against every token's output embedding
  (the LM head row seen through the final norm's scale); the best-matching row is the label.
  Exact for a Top with no layers; through the Top's layers the residual path carries most of it.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from splitfed.eval.attacks.base import AttackerView, Knowledge, TokenGuess


def _require(view: AttackerView, field: str):
    value = getattr(view, field)
    if value is None:
        raise ValueError(f"this attack needs view.{field}")
    return value


class LogitLens:
    name: ClassVar[str] = "logit-lens"
    target: ClassVar[str] = "gradients"
    summary: ClassVar[str] = "the public Top run on the trunk output the server sends: its argmax is the next token"
    knowledge: ClassVar[Knowledge] = Knowledge(
        "server", "the trunk output it computes and sends to the client's Top", "the public pretrained Top"
    )

    Options: ClassVar[type | None] = None

    def run(self, view: AttackerView) -> TokenGuess:
        out = _require(view, "trunk_output")
        with torch.no_grad():
            logits = view.public_split().top(out.tensor.float(), out.mask)
        return TokenGuess(logits.argmax(-1), shift=1)


class GradientLabels:
    name: ClassVar[str] = "gradient-labels"
    target: ClassVar[str] = "gradients"
    summary: ClassVar[str] = (
        "the returned gradient minus the softmax part the public Top predicts, matched against every "
        "token's LM-head row (label leakage through the head)"
    )
    knowledge: ClassVar[Knowledge] = Knowledge(
        "server",
        "the gradient the client returns for the trunk output, and that trunk output",
        "the public pretrained Top (LM head and final norm)",
    )

    Options: ClassVar[type | None] = None

    def run(self, view: AttackerView) -> TokenGuess:
        out, grad = _require(view, "trunk_output"), _require(view, "gradients")
        top = view.public_split().top
        mask = out.mask
        h = out.tensor.float().detach().requires_grad_(True)
        logits = top(h, mask)
        probs = torch.softmax(logits.detach(), dim=-1)
        (expected,) = torch.autograd.grad(logits, h, grad_outputs=probs * mask[..., None])
        g = grad.tensor.float()
        # the loss is a mean over target tokens the server cannot count: fit that scale (least squares)
        scale = float((expected * g).sum() / expected.pow(2).sum().clamp(min=1e-30))
        remainder = scale * expected - g  # ~ J^T onehot(label) / n
        with torch.no_grad():
            head = top.lm_head.weight.detach().float()
            scale = getattr(top.norm, "weight", None)
            rows = head * scale.detach().float() if scale is not None else head
            flat = remainder.reshape(-1, remainder.shape[-1])
            guess = torch.cat([(flat[i : i + 256] @ rows.T).argmax(-1) for i in range(0, len(flat), 256)])
        return TokenGuess(guess.reshape(mask.shape), shift=1)
