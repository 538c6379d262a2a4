"""Update inversion: what one round's adapter update says about the client's training text.

The aggregator (the server in this system) holds the client adapters before and after a
round.  Loading each into the public model gives two snapshots, M0 and M1; the differential
score ``log p1 - log p0`` is largest on what the update taught the model (Zanella-Béguelin
et al., CCS 2020, "Analyzing Information Leakage of Updates to Natural Language Models"):

1. bag of tokens: averaged over positions of public auxiliary text, the tokens whose
   log-probability the update raised most;
2. differential decoding: texts generated under ``log p1 + lambda (log p1 - log p0)``, each
   from its own prompt (BOS, then BOS + one of the top tokens).

Under secure aggregation ``after`` is the mean of all clients' adapters, so the same score
reads the clients' pooled data rather than one client's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from splitfed.eval.attacks.base import AttackerView, Knowledge, Target, TextGuess, UpdateView, pad_right
from splitfed.eval.options import UpdateOptions
from splitfed.models import apply_lora, set_adapter_state

State = Mapping[str, torch.Tensor]


class Snapshots:
    """The public model with the round's trunk adapter, its client adapters switchable
    between the ``before`` (M0) and ``after`` (M1) states."""

    def __init__(self, view: AttackerView, update: UpdateView):
        if set(update.before) != set(update.after):
            raise ValueError(
                f"update.before and update.after must hold the same parts, got {sorted(update.before)} "
                f"and {sorted(update.after)}"
            )
        unknown = sorted(set(update.before) - {"bottom", "top"})
        if unknown:
            raise ValueError(f"an update holds client parts (bottom, top), got {unknown}")
        self.split = view.public_split()
        apply_lora(self.split, view.lora, seed=view.seed)
        set_adapter_state(self.split.parts["trunk"], update.trunk)
        self.split.eval()
        self.states = (dict(update.before), dict(update.after))
        self._loaded: int | None = None

    def _load(self, which: int) -> None:
        if self._loaded != which:
            for role, state in self.states[which].items():
                set_adapter_state(self.split.parts[role], state)
            self._loaded = which

    @torch.no_grad()
    def logprobs(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids and mask -> log p0 and log p1 of the next token, each (B, T, V)."""
        out = []
        for which in (0, 1):
            self._load(which)
            out.append(torch.log_softmax(self.split(ids, mask).float(), dim=-1))
        return out[0], out[1]


def context_windows(aux: Sequence[Sequence[int]], *, length: int, count: int) -> list[list[int]]:
    """Up to `count` windows of `length` tokens (the last of a text may be shorter, >= 2),
    taken round-robin over the texts so that many texts contribute."""
    chunks = [
        [list(text[i : i + length]) for i in range(0, len(text), length) if len(text[i : i + length]) >= 2]
        for text in aux
    ]
    windows: list[list[int]] = []
    for j in range(max((len(c) for c in chunks), default=0)):
        windows.extend(c[j] for c in chunks if j < len(c))
        if len(windows) >= count:
            break
    return windows[:count]


def token_scores(
    snapshots: Snapshots, windows: Sequence[Sequence[int]], *, pad: int, batch: int, weight: float = 0.0
) -> torch.Tensor:
    """(V,) mean over all window positions of ``p1(v | ctx)^weight * (log p1(v | ctx) - log p0(v | ctx))``.

    ``weight = 0`` is the plain mean log-ratio: it ranks first the tokens whose odds the update
    multiplied most, rare ones included (on SmolLM2 these name the topic: "diagnosed",
    "stenosis").  ``weight = 1`` is each token's share of KL(p1 || p0): frequent tokens whose
    probability rose ("me", "was").
    """
    total: torch.Tensor | None = None
    count = 0
    for start in range(0, len(windows), batch):
        ids, mask = pad_right(windows[start : start + batch], pad)
        lp0, lp1 = snapshots.logprobs(ids, mask)
        keep = mask.bool()
        diff = lp1 - lp0 if weight == 0 else lp1.exp().pow(weight) * (lp1 - lp0)
        part = diff[keep].sum(0)  # (V,)
        total = part if total is None else total + part
        count += int(keep.sum())
    if total is None:
        raise ValueError("no context windows to score")
    return total / count


@torch.no_grad()
def differential_decode(
    snapshots: Snapshots,
    prompts: Sequence[Sequence[int]],
    *,
    steps: int,
    lam: float,
    pad: int,
    eos: int | None,
    banned: Sequence[int],
    temperature: float,
    generator: torch.Generator,
) -> list[list[int]]:
    """Extend every prompt by up to `steps` tokens under ``log p1 + lam (log p1 - log p0)``,
    all prompts in one left-padded batch; a row stops at `eos` (not included)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    for _ in range(steps):
        lp0, lp1 = snapshots.logprobs(ids, mask)
        score = lp1[:, -1] + lam * (lp1[:, -1] - lp0[:, -1])  # (B, V)
        score[:, list(banned)] = -torch.inf
        if temperature > 0:
            nxt = torch.multinomial(torch.softmax(score / temperature, dim=-1), 1, generator=generator).squeeze(1)
        else:
            nxt = score.argmax(dim=-1)
        for i in range(len(prompts)):
            if not done[i]:
                if eos is not None and int(nxt[i]) == eos:
                    done[i] = True
                else:
                    out[i].append(int(nxt[i]))
        ids = torch.cat([ids, nxt.masked_fill(done, pad)[:, None]], dim=1)
        mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
        if bool(done.all()):
            break
    return out


def _special(tokenizer: object, name: str) -> int | None:
    value = getattr(tokenizer, name, None)
    return None if value is None else int(value)


class UpdateInversion:
    name: ClassVar[str] = "update-inversion"
    target: ClassVar[Target] = "update"
    knowledge: ClassVar[Knowledge] = Knowledge(
        party="aggregator",
        sees=(
            "one round's client adapters (Bottom + Top LoRA) before and after: one client's own update "
            "under plain FedAvg, only the mean of all clients' under secure aggregation; and the server's "
            "trunk adapter"
        ),
        knows="the public pretrained weights, the LoRA configuration, the tokenizer and public auxiliary text (news)",
    )
    summary: ClassVar[str] = (
        "Differential score between the model before and after the round (Zanella-Béguelin et al., "
        "CCS 2020): the tokens the update made most likely on public contexts, and texts decoded under "
        "log p1 + lambda (log p1 - log p0)."
    )
    Options: ClassVar[type] = UpdateOptions

    def __init__(self, options: UpdateOptions = UpdateOptions()):
        self.options = options

    def run(self, view: AttackerView) -> TextGuess:
        if view.update is None:
            raise ValueError(f"{self.name} needs view.update (the adapters the aggregator saw); the view has none")
        opts = self.options
        snapshots = Snapshots(view, view.update)
        windows = context_windows(view.aux, length=opts.context, count=opts.windows)
        if not windows:
            raise ValueError(f"{self.name} needs auxiliary text (view.aux) with at least one text of 2+ tokens")
        pad = int(view.pad_token_id)
        scores = token_scores(snapshots, windows, pad=pad, batch=opts.batch, weight=opts.weight)
        ranking = [int(t) for t in scores.argsort(descending=True)]

        tok = view.tokenizer
        bos, eos = _special(tok, "bos_token_id"), _special(tok, "eos_token_id")
        banned = sorted({pad} | ({bos} if bos is not None and bos != eos else set()))
        firsts = [t for t in ranking if t not in banned and t != eos]
        starts = [[]] if bos is not None else []
        starts += [[t] for t in firsts[: opts.texts - len(starts)]]
        prompts = [([bos] if bos is not None else []) + s for s in starts]
        new = differential_decode(
            snapshots,
            prompts,
            steps=opts.length - min(len(s) for s in starts),
            lam=opts.lam,
            pad=pad,
            eos=eos,
            banned=banned,
            temperature=opts.temperature,
            generator=torch.Generator().manual_seed(view.seed),
        )
        texts = [tok.decode((s + n)[: opts.length], skip_special_tokens=True) for s, n in zip(starts, new, strict=True)]
        return TextGuess(texts=texts, tokens=ranking[: opts.top_k])
