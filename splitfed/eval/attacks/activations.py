"""Activation inversion by the server: recover the client's tokens from what its Bottom sends.

Three attackers, from cheap to strong, plus a baseline that guesses without looking:

- `NearestEmbedding`: each released vector -> the closest row of the public embedding table
  (cosine).  Exact at cut 0 without noise; a lower bound elsewhere.
- `LearnedInversion` (BiSR's / SIP's learning-based attacker): a small network trained on
  public news text run through the public pretrained Bottom *and the defense's own release
  function* (it knows the configured clip, noise and compression, not the noise draws),
  mapping the released vectors around each position to that position's token.
- `WhiteBoxInversion`: soft input embeddings optimised so that the public Bottom, followed by
  the defense's deterministic part (padding zeroed, clipping), reproduces the observed
  release in least squares (the maximum-likelihood fit under Gaussian noise); each optimised
  vector is then read as its nearest token embedding.
- `PublicTextBaseline` ("chance"): news text of the same length, not looking at the release:
  the ROUGE a guess gets from common words alone.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from splitfed.eval.attacks.base import AttackerView, Knowledge, TokenGuess, pad_right
from splitfed.eval.options import LearnedOptions, WhiteBoxOptions

_SERVER_SEES = "the activations the client's Bottom sends for each victim example (after the defense), and the mask"


def _embedding_table(split) -> torch.Tensor:
    return split.bottom.embed.weight.detach()


def _nearest(vectors: torch.Tensor, table: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Index of the cosine-nearest row of `table` (V, D) for each of `vectors` (..., D)."""
    flat = F.normalize(vectors.reshape(-1, vectors.shape[-1]).float(), dim=-1)
    t = F.normalize(table.float(), dim=-1)
    out = torch.cat([(flat[i : i + chunk] @ t.T).argmax(-1) for i in range(0, len(flat), chunk)])
    return out.reshape(vectors.shape[:-1])


def _require_activations(view: AttackerView):
    if view.activations is None:
        raise ValueError("this attack needs the released activations (view.activations)")
    return view.activations


class NearestEmbedding:
    name: ClassVar[str] = "nearest-embedding"
    target: ClassVar[str] = "activations"
    summary: ClassVar[str] = "each released vector read as the cosine-nearest token embedding of the public model"
    knowledge: ClassVar[Knowledge] = Knowledge("server", _SERVER_SEES, "the public embedding table")

    Options: ClassVar[type | None] = None

    def run(self, view: AttackerView) -> TokenGuess:
        rel = _require_activations(view)
        with torch.no_grad():
            table = _embedding_table(view.public_split())
            return TokenGuess(_nearest(rel.tensor, table))


def _windows(h: torch.Tensor, width: int) -> torch.Tensor:
    """(N, T, D) -> (N, T, (2 width + 1) D): each position with its neighbours (zeros past the ends)."""
    pad = F.pad(h, (0, 0, width, width))
    return torch.cat([pad[:, i : i + h.shape[1]] for i in range(2 * width + 1)], dim=-1)


class _Inverter(nn.Module):
    def __init__(self, dim: int, width: int, hidden: int, table: torch.Tensor):
        super().__init__()
        k = 2 * width + 1
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(k)])
        self.mlp = nn.Sequential(nn.Linear(k * dim, hidden), nn.GELU(), nn.Linear(hidden, table.shape[1]))
        self.register_buffer("table", F.normalize(table.float(), dim=-1))
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.dim, self.width = dim, width

    def forward(self, win: torch.Tensor) -> torch.Tensor:
        """(M, k D) -> (M, D) query vectors; logits against `table` rows come from `logits`."""
        parts = win.split(self.dim, dim=-1)
        x = torch.cat([n(p) for n, p in zip(self.norms, parts, strict=True)], dim=-1)
        return F.normalize(self.mlp(x), dim=-1) * self.scale

    def logits(self, q: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        t = self.table if rows is None else self.table[rows]
        return q @ t.T


class LearnedInversion:
    name: ClassVar[str] = "learned-inversion"
    target: ClassVar[str] = "activations"
    summary: ClassVar[str] = (
        "an MLP over each position's released vector and its neighbours, trained on public news run through "
        "the public Bottom and the defense's release function, scoring tokens against the embedding table"
    )
    knowledge: ClassVar[Knowledge] = Knowledge(
        "server",
        _SERVER_SEES,
        "the public pretrained Bottom, the defense's configuration (clip, noise scale, compression; not the "
        "noise draws), auxiliary public text from another corpus (news)",
    )
    Options: ClassVar[type] = LearnedOptions

    def __init__(self, options: LearnedOptions = LearnedOptions()):
        self.options = options

    def run(self, view: AttackerView) -> TokenGuess:
        rel = _require_activations(view)
        o = self.options
        steps, width, hidden, batch, negatives = o.steps, o.width, o.hidden, o.batch, 4096
        gen = torch.Generator().manual_seed(view.seed)
        split = view.public_split()
        table = _embedding_table(split)
        release = view.release_activations or (lambda x, m: x)
        # training pairs: public text -> public Bottom -> the defense's release
        feats, labels = [], []
        with torch.no_grad():
            for i in range(0, len(view.aux), 16):
                chunk = view.aux[i : i + 16]
                ids, mask = pad_right(chunk, view.pad_token_id)
                h = release(split.bottom(ids, mask), mask)
                w = _windows(h, width)
                keep = mask.bool()
                feats.append(w[keep])
                labels.append(ids[keep])
        x, y = torch.cat(feats), torch.cat(labels)
        model = _Inverter(rel.tensor.shape[-1], width, hidden, table)
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=0.01)
        vocab = table.shape[0]
        for _ in range(steps):
            idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
            # sampled softmax: the batch's tokens and random negatives share one candidate set
            cand = torch.unique(torch.cat([y[idx], torch.randint(vocab, (min(negatives, vocab),), generator=gen)]))
            target = torch.searchsorted(cand, y[idx])
            loss = F.cross_entropy(model.logits(model(x[idx]), cand), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            q = model(_windows(rel.tensor.float(), width).reshape(-1, x.shape[-1]))
            guess = torch.cat([model.logits(q[i : i + 512]).argmax(-1) for i in range(0, len(q), 512)])
        return TokenGuess(guess.reshape(rel.tensor.shape[:2]))


class WhiteBoxInversion:
    name: ClassVar[str] = "white-box"
    target: ClassVar[str] = "activations"
    summary: ClassVar[str] = (
        "soft input embeddings optimised (Adam) so the public Bottom plus the defense's clipping reproduces the "
        "release in least squares, then read as nearest token embeddings"
    )
    knowledge: ClassVar[Knowledge] = Knowledge(
        "server", _SERVER_SEES, "the public pretrained Bottom and the defense's clip and unit"
    )
    Options: ClassVar[type] = WhiteBoxOptions

    def __init__(self, options: WhiteBoxOptions = WhiteBoxOptions()):
        self.options = options

    def run(self, view: AttackerView) -> TokenGuess:
        rel = _require_activations(view)
        steps, lr = self.options.steps, self.options.lr
        split = view.public_split()
        for p in split.bottom.parameters():
            p.requires_grad_(False)
        table = _embedding_table(split)
        mask = rel.mask
        target = rel.tensor.float() * mask[..., None]
        clip, unit = view.activation_clip, view.activation_unit
        # start every position at the mean embedding, scaled like a real one
        z = table.mean(0).expand(*mask.shape, -1).clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr * float(table.norm(dim=-1).mean()))
        norm = target.pow(2).sum().clamp(min=1e-12)
        for _ in range(steps):
            h = split.bottom.from_embeddings(z, mask) * mask[..., None]
            if clip:
                h = _clip_like_the_defense(h, clip, unit, view.prompt_positions)
            loss = (h - target).pow(2).sum() / norm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            return TokenGuess(_nearest(z, table))


def _clip_like_the_defense(h: torch.Tensor, clip: float, unit: str, prompt: int | None) -> torch.Tensor:
    """Each unit scaled to norm <= clip: a sequence, or each position; in a generation view the
    sequence unit is the prompt's `prompt` positions, then each later position alone."""
    if unit == "sequence" and prompt is not None and prompt < h.shape[1]:
        head = _clip_like_the_defense(h[:, :prompt], clip, unit, None)
        return torch.cat([head, _clip_like_the_defense(h[:, prompt:], clip, "token", None)], dim=1)
    n = h.flatten(1).norm(dim=1)[:, None, None] if unit == "sequence" else h.norm(dim=-1, keepdim=True)
    return h * (clip / n.clamp(min=clip))


class PublicTextBaseline:
    name: ClassVar[str] = "chance"
    target: ClassVar[str] = "activations"
    summary: ClassVar[str] = "a baseline, not an attack: public news text of the same length, ignoring the release"
    knowledge: ClassVar[Knowledge] = Knowledge("nobody", "nothing", "auxiliary public text (news)")

    Options: ClassVar[type | None] = None

    def run(self, view: AttackerView) -> TokenGuess:
        rel = _require_activations(view)
        n, t = rel.mask.shape
        gen = torch.Generator().manual_seed(view.seed)
        out = torch.zeros(n, t, dtype=torch.long)
        for row in range(n):
            text = view.aux[int(torch.randint(len(view.aux), (1,), generator=gen))]
            pos = rel.mask[row].nonzero().flatten()
            for j, p in enumerate(pos.tolist()):
                out[row, p] = int(text[j % len(text)])
        return TokenGuess(out)
