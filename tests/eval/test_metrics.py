import itertools
import random

import numpy as np
import pytest
import torch

from splitfed.eval.metrics import (
    Score,
    mean_rouge,
    roc_auc,
    rouge,
    rouge_l,
    rouge_n,
    token_accuracy,
    token_set_scores,
    tpr_at_fpr,
    words,
)


def test_words_follow_rouge_score_tokenizer():
    assert words("Hello, World! It's 2024.") == ["hello", "world", "it", "s", "2024"]
    assert words("naïve café\tA-B_c") == ["na", "ve", "caf", "a", "b", "c"]
    assert words("  ...  ") == []
    assert words("") == []


def test_rouge_by_hand():
    pred, ref = words("the cat sat on the mat"), words("the cat lay on the mat")
    # LCS "the cat on the mat" = 5 of 6 tokens on each side
    assert rouge_l(pred, ref) == Score(5 / 6, 5 / 6, pytest.approx(5 / 6))
    assert rouge_n(pred, ref, 1).f1 == pytest.approx(5 / 6)
    # bigrams shared: "the cat", "on the", "the mat" of 5 each
    assert rouge_n(pred, ref, 2) == Score(3 / 5, 3 / 5, pytest.approx(3 / 5))
    # LCS("a b c d", "a c e") = "a c": P = 2/4, R = 2/3, F1 = 4/7
    s = rouge_l(["a", "b", "c", "d"], ["a", "c", "e"])
    assert (s.precision, s.recall) == (0.5, 2 / 3)
    assert s.f1 == pytest.approx(4 / 7)
    assert rouge("The cat sat on the mat.", "the cat lay on the mat") == pytest.approx(
        {"rouge_1": 5 / 6, "rouge_2": 3 / 5, "rouge_l": 5 / 6}
    )


def test_rouge_clips_repeated_ngrams_and_handles_empty_sides():
    assert rouge_n(["the", "the", "the"], ["the", "cat"], 1) == Score(1 / 3, 1 / 2, pytest.approx(0.4))
    zero = Score(0.0, 0.0, 0.0)
    assert rouge_l([], ["a"]) == rouge_l(["a"], []) == rouge_l([], []) == zero
    assert rouge_n([], ["a"], 1) == rouge_n(["a"], ["a"], 2) == zero  # no bigram on either side
    with pytest.raises(ValueError, match="n >= 1"):
        rouge_n(["a"], ["a"], 0)


def test_mean_rouge():
    m = mean_rouge(["a b", "x"], ["a b", "y"])
    assert m == {"rouge_1": 0.5, "rouge_2": 0.5, "rouge_l": 0.5}
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        mean_rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no pairs"):
        mean_rouge([], [])


_VOCAB = ["the", "The", "cat", "sat", "on", "mat", "drug", "Pain", "side-effects", "don't", "2", "mg", "ÉTÉ", "a"]
_PUNCT = ["", "", "", ",", ".", "!", "?", "'s", " (", ")"]


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(_VOCAB) + rng.choice(_PUNCT) for _ in range(rng.randint(0, 14)))


def test_rouge_matches_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    from rouge_score import tokenize

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    rng = random.Random(0)
    pairs = [(_text(rng), _text(rng)) for _ in range(50)] + [("", "a b"), ("Same text.", "same TEXT")]
    for pred, ref in pairs:
        assert words(pred) == tokenize.tokenize(pred, None)
        want = scorer.score(ref, pred)  # (target, prediction)
        p, r = words(pred), words(ref)
        for name, got in [("rouge1", rouge_n(p, r, 1)), ("rouge2", rouge_n(p, r, 2)), ("rougeL", rouge_l(p, r))]:
            w = want[name]
            assert (got.precision, got.recall, got.f1) == pytest.approx((w.precision, w.recall, w.fmeasure), abs=1e-12)
        assert rouge(pred, ref)["rouge_l"] == pytest.approx(want["rougeL"].fmeasure, abs=1e-12)


def test_token_accuracy_numpy_and_torch():
    guess = [[1, 2, 3], [4, 5, 6]]
    truth = [[1, 0, 3], [4, 5, 0]]
    mask = [[1, 1, 1], [1, 1, 0]]  # 5 positions, 4 equal
    assert token_accuracy(np.array(guess), np.array(truth), np.array(mask)) == 0.8
    assert token_accuracy(torch.tensor(guess), torch.tensor(truth), torch.tensor(mask).bool()) == 0.8
    with pytest.raises(ValueError, match=r"guess \(2, 3\), truth \(1, 3\)"):
        token_accuracy(np.array(guess), np.array(truth[:1]), np.array(mask))
    with pytest.raises(ValueError, match="selects no position"):
        token_accuracy(np.array(guess), np.array(truth), np.zeros((2, 3)))


def _pairwise_auc(s, y) -> float:
    pos = [a for a, t in zip(s, y, strict=True) if t]
    neg = [a for a, t in zip(s, y, strict=True) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert roc_auc([0.3] * 6, [0, 1, 0, 1, 1, 0]) == 0.5
    assert roc_auc([1, 1, 2], [0, 1, 1]) == 0.75  # one tie (1/2) and one win
    assert roc_auc(torch.tensor([0.9, 0.1]), torch.tensor([0, 1])) == 0.0
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, size=40), rng.integers(0, 2, size=40)
    assert roc_auc(s, y) == pytest.approx(_pairwise_auc(s.tolist(), y.tolist()), abs=1e-12)


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        ([0.1, 0.2], [1, 1], "both members and non-members"),
        ([0.1], [0, 1], "same length"),
        ([1, 2], [0, 2], "labels must be 0"),
    ],
)
def test_roc_auc_rejects(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        roc_auc(scores, labels)
    with pytest.raises(ValueError, match=match):
        tpr_at_fpr(scores, labels)


def test_tpr_at_fpr_constructed():
    neg = list(range(10))  # 0..9
    pos = [9, 8.5, 12, 11, 3]
    s, y = neg + pos, [0] * 10 + [1] * 5
    assert tpr_at_fpr(s, y, fpr=0.1) == 0.8  # t = 8.5: negatives {9}, positives {8.5, 9, 11, 12}
    assert tpr_at_fpr(s, y, fpr=0.0) == 0.4  # t = 11: no negative, positives {11, 12}
    assert tpr_at_fpr(s, y, fpr=1.0) == 1.0
    assert tpr_at_fpr([1, 1], [0, 1], fpr=0.5) == 0.0  # only t = +inf keeps FPR <= 0.5
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(s, y, fpr=1.5)


def test_tpr_at_fpr_matches_brute_force():
    rng = np.random.default_rng(1)
    s, y = rng.integers(0, 8, size=60).astype(float), rng.integers(0, 2, size=60)
    for fpr in (0.0, 0.01, 0.1, 0.3):
        best = 0.0
        for t in [*set(s.tolist()), np.inf]:
            pred = s >= t
            if (pred & (y == 0)).sum() / (y == 0).sum() <= fpr:
                best = max(best, (pred & (y == 1)).sum() / (y == 1).sum())
        assert tpr_at_fpr(s, y, fpr=fpr) == pytest.approx(best)


def test_token_set_scores():
    got = token_set_scores([1, 2, 2, 3], torch.tensor([2, 3, 4, 5]))
    assert got == pytest.approx({"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7})
    assert token_set_scores([], [1]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
