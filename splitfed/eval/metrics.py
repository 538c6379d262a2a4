"""How well an attack did: ROUGE of reconstructed text, token accuracy, membership AUC.

ROUGE follows rouge-score 0.1.2 (`rouge_score.rouge_scorer.RougeScorer` without stemming)
exactly, so numbers compare with published ones; the tests check it against that package.
Only numpy is needed; torch tensors are accepted where token ids are.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    f1: float


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def words(text: str) -> list[str]:
    """rouge-score's default tokens: lowercase, every run of chars outside [a-z0-9] is a space."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def rouge_n(pred: Sequence[str], ref: Sequence[str], n: int) -> Score:
    """Clipped n-gram overlap; all zero when either side has no n-gram."""
    if n < 1:
        raise ValueError(f"rouge_n needs n >= 1, got {n}")
    p = Counter(tuple(pred[i : i + n]) for i in range(len(pred) - n + 1))
    r = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
    overlap = sum((p & r).values())
    precision = overlap / max(sum(p.values()), 1)
    recall = overlap / max(sum(r.values()), 1)
    return Score(precision, recall, _f1(precision, recall))


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)  # row[j] = LCS(a[:i], b[:j]), one row at a time
    for x in a:
        diag = 0  # LCS(a[:i-1], b[:j-1])
        for j, y in enumerate(b, start=1):
            up = row[j]
            row[j] = diag + 1 if x == y else max(up, row[j - 1])
            diag = up
    return row[-1]


def rouge_l(pred: Sequence[str], ref: Sequence[str]) -> Score:
    """Longest-common-subsequence ROUGE; all zero when either side is empty."""
    if not pred or not ref:
        return Score(0.0, 0.0, 0.0)
    lcs = _lcs(ref, pred)
    precision, recall = lcs / len(pred), lcs / len(ref)
    return Score(precision, recall, _f1(precision, recall))


def rouge(pred_text: str, ref_text: str) -> dict[str, float]:
    """F1 of ROUGE-1, ROUGE-2 and ROUGE-L between two texts."""
    p, r = words(pred_text), words(ref_text)
    return {"rouge_1": rouge_n(p, r, 1).f1, "rouge_2": rouge_n(p, r, 2).f1, "rouge_l": rouge_l(p, r).f1}


def mean_rouge(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """`rouge` averaged over (prediction, reference) pairs."""
    if len(preds) != len(refs):
        raise ValueError(f"mean_rouge: {len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("mean_rouge: no pairs to average")
    scores = [rouge(p, r) for p, r in zip(preds, refs, strict=True)]
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def token_accuracy(guess, truth, mask) -> float:
    """Fraction of the positions where ``mask`` is nonzero at which ``guess == truth``; all (N, T)."""
    g, t, m = _array(guess), _array(truth), _array(mask) != 0
    if not g.shape == t.shape == m.shape:
        raise ValueError(f"token_accuracy: shapes differ: guess {g.shape}, truth {t.shape}, mask {m.shape}")
    if not m.any():
        raise ValueError(f"token_accuracy: the mask {m.shape} selects no position")
    return float((g == t)[m].mean())


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s, y = _array(scores).astype(float), _array(labels)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be 1-D of the same length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (non-member) or 1 (member), got {sorted(set(y.tolist()))}")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError(f"need both members and non-members, got {int(y.sum())} of {y.size} members")
    return s, y


def roc_auc(scores, labels) -> float:
    """P(score of a member > score of a non-member), ties counting 1/2 (Mann-Whitney U / n1 n0).

    Labels: 1 = member (positive), 0 = non-member.
    """
    s, y = _scores_labels(scores, labels)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first occurrence
    ranks = (first + (counts + 1) / 2)[inverse]  # 1-based ranks, ties averaged
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def tpr_at_fpr(scores, labels, fpr: float = 0.01) -> float:
    """The largest true-positive rate over thresholds whose false-positive rate is <= ``fpr``.

    A threshold t predicts "member" when score >= t; t ranges over every distinct score and
    +inf (nobody predicted a member, TPR = FPR = 0), so the answer is never undefined.
    Labels: 1 = member, 0 = non-member.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    s, y = _scores_labels(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[s[1:] != s[:-1], True]  # threshold t = s[i] admits every score >= s[i]
    tprs, fprs = tp[last] / tp[-1], fp[last] / fp[-1]
    return float(max(0.0, tprs[fprs <= fpr].max(initial=0.0)))


def token_set_scores(guessed: Iterable[int], truth: Iterable[int]) -> dict[str, float]:
    """Precision, recall and F1 of the set of guessed token ids against the set of true ones."""
    g, t = {int(x) for x in guessed}, {int(x) for x in truth}
    hit = len(g & t)
    precision = hit / len(g) if g else 0.0
    recall = hit / len(t) if t else 0.0
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall)}
