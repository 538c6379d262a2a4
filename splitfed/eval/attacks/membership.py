"""Membership inference from the fine-tuned model's loss on each candidate.

- `LossThreshold` (Yeom et al., CSF 2018): a training member has a lower loss; score =
  minus the mean next-token NLL under the fine-tuned model.
- `ReferenceCalibrated` (offline difficulty calibration with one public reference model:
  Watson et al., ICLR 2022; Carlini et al., S&P 2022 "LiRA", offline): subtract how hard the
  text is for the public pretrained model; score = NLL_reference - NLL_target.

The NLL is over every position after the first (next-token prediction), padding excluded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from splitfed.eval.attacks.base import AttackerView, Knowledge, MembershipScores, Target, pad_right
from splitfed.eval.options import MembershipOptions

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_KNOWLEDGE = Knowledge(
    party="anyone who can query the model",
    sees=(
        "the fine-tuned model's logits on candidate texts (the aggregator holds the model under plain "
        "FedAvg; every client receives it at the end unless server.share_trunk_adapter = false)"
    ),
    knows="the candidate texts and the public pretrained model",
)


def _candidates(view: AttackerView, attack: str) -> list[list[int]]:
    if view.candidates is None:
        raise ValueError(f"{attack} needs view.candidates (the texts whose membership is asked); the view has none")
    rows = [[int(t) for t in c] for c in view.candidates]
    short = [i for i, r in enumerate(rows) if len(r) < 2]
    if short:
        raise ValueError(
            f"{attack}: every candidate needs >= 2 tokens (one next-token prediction); {short[:5]} have fewer"
        )
    return rows


@torch.no_grad()
def mean_nll(
    logits_fn: LogitsFn, candidates: Sequence[Sequence[int]], *, pad_token_id: int, batch_size: int
) -> list[float]:
    """Mean next-token NLL of each candidate (positions 1..n-1), in candidate order.

    Candidates are batched by length (right padding, mask) so little is spent on padding.
    """
    order = sorted(range(len(candidates)), key=lambda i: len(candidates[i]))
    out = [0.0] * len(candidates)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = pad_right([candidates[i] for i in rows], pad_token_id)
        logits = logits_fn(ids, mask)
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
            raise ValueError(
                f"logits must be (batch, tokens, vocab) with (batch, tokens) = {tuple(ids.shape)}, "
                f"got {tuple(logits.shape)}"
            )
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # predicts ids[:, 1:]
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        keep = mask[:, 1:].float()
        per_row = (nll * keep).sum(1) / keep.sum(1)
        for r, i in enumerate(rows):
            out[i] = float(per_row[r])
    return out


class LossThreshold:
    name: ClassVar[str] = "membership-loss"
    target: ClassVar[Target] = "model"
    knowledge: ClassVar[Knowledge] = _KNOWLEDGE
    summary: ClassVar[str] = (
        "Loss threshold (Yeom et al. 2018): a candidate the fine-tuned model predicts well was likely "
        "trained on; score = minus its mean next-token NLL."
    )
    Options: ClassVar[type] = MembershipOptions

    def __init__(self, options: MembershipOptions = MembershipOptions()):
        self.options = options

    def run(self, view: AttackerView) -> MembershipScores:
        if view.query_logits is None:
            raise ValueError(
                f"{self.name} needs view.query_logits (queries to the fine-tuned model); the view has none"
            )
        rows = _candidates(view, self.name)
        nll = mean_nll(view.query_logits, rows, pad_token_id=view.pad_token_id, batch_size=self.options.batch)
        return MembershipScores(scores=[-x for x in nll])


class ReferenceCalibrated:
    name: ClassVar[str] = "membership-reference"
    target: ClassVar[Target] = "model"
    knowledge: ClassVar[Knowledge] = _KNOWLEDGE
    summary: ClassVar[str] = (
        "Reference-calibrated loss (Watson et al. 2022; offline LiRA, Carlini et al. 2022): how much more "
        "likely the fine-tuned model finds a candidate than the public model does; score = NLL_ref - NLL_target."
    )
    Options: ClassVar[type] = MembershipOptions

    def __init__(self, options: MembershipOptions = MembershipOptions()):
        self.options = options

    def run(self, view: AttackerView) -> MembershipScores:
        if view.query_logits is None or view.reference_logits is None:
            raise ValueError(
                f"{self.name} needs view.query_logits (the fine-tuned model) and view.reference_logits "
                "(the public model); the view lacks "
                + " and ".join(n for n in ("query_logits", "reference_logits") if getattr(view, n) is None)
            )
        rows = _candidates(view, self.name)
        size = self.options.batch
        target = mean_nll(view.query_logits, rows, pad_token_id=view.pad_token_id, batch_size=size)
        ref = mean_nll(view.reference_logits, rows, pad_token_id=view.pad_token_id, batch_size=size)
        return MembershipScores(scores=[r - t for r, t in zip(ref, target, strict=True)])
