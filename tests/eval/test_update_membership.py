"""Update inversion and membership inference against real (tiny) training runs.

tiny-llama (random weights, byte tokens) is fine-tuned with LoRA for a few dozen steps: the
membership attacks must rank the memorised examples above unseen ones, and the update
inversion must find the tokens of a client that writes in capitals (and not of one that
does not).  One CPU thread: on a shared 2-core machine it is several times faster for a
model this small.
"""

from __future__ import annotations

import pytest
import torch

from splitfed.data import Example, collate, load_drug_reviews
from splitfed.eval.attacks.base import AttackerView, UpdateView
from splitfed.eval.attacks.membership import LossThreshold, ReferenceCalibrated, mean_nll
from splitfed.eval.attacks.update import UpdateInversion, UpdateOptions, context_windows
from splitfed.eval.options import MembershipOptions
from splitfed.models import (
    ByteTokenizer,
    LoraSpec,
    SplitLoraConfig,
    apply_lora,
    get_adapter_state,
    load_pretrained,
    set_adapter_state,
    split_model,
)
from splitfed.training import OptimConfig, SplitTrainer

CUT = (1, 3)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA = SplitLoraConfig(*(LoraSpec(r=8, alpha=16, target_modules=TARGETS),) * 3)
CLIENT_ROLES = ("bottom", "top")
CAPITALS = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
NEWS = [
    "The city council voted on Tuesday to approve a new budget for public transport, after months of debate.",
    "Shares in the company rose sharply this morning as investors welcomed the quarterly results.",
    "Heavy rain is expected across the region over the weekend, forecasters said on Friday.",
    "The minister told reporters that talks with the unions would resume next week.",
    "Officials confirmed that the bridge will remain closed for repairs until the end of the month.",
    "The central bank left interest rates unchanged, citing uncertainty about inflation.",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """A function returning a fresh public split (no LoRA, eval mode), and the tokenizer."""
    cache = tmp_path_factory.mktemp("cache")
    tokenizer = load_pretrained("tiny-llama", cache_dir=cache).tokenizer
    assert isinstance(tokenizer, ByteTokenizer)
    return (lambda: split_model(load_pretrained("tiny-llama", cache_dir=cache).model, CUT).eval()), tokenizer


@pytest.fixture(scope="module")
def reviews():
    return load_drug_reviews("train")


def example(tokenizer, text: str, length: int = 48) -> Example:
    ids = tokenizer(text)["input_ids"][:length]
    return Example(input_ids=ids, labels=ids)  # the loss on every token: the client learns its text


def train(split, examples, *, steps: int, lr: float = 1e-2) -> float:
    trainer = SplitTrainer(split, OptimConfig(lr=lr))
    batch = collate(examples, pad_token_id=0)
    for _ in range(steps):
        loss = trainer.step(batch).loss
    split.eval()
    return loss


def auc(members: list[float], others: list[float]) -> float:
    """Mann-Whitney: the chance that a member outscores a non-member (ties count half)."""
    wins = sum((m > o) + 0.5 * (m == o) for m in members for o in others)
    return wins / (len(members) * len(others))


def view(public, tokenizer, **kw) -> AttackerView:
    return AttackerView(
        cut=CUT,
        tokenizer=tokenizer,
        public_split=public,
        lora=LORA,
        aux=[tokenizer(t)["input_ids"] for t in NEWS],
        pad_token_id=0,
        **kw,
    )


# -- membership ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def memorised(public, reviews):
    """(fine-tuned split, reference split, members, non-members); lengths vary (24..45) so
    batches are padded."""
    fresh, tok = public
    members = [example(tok, r.text, 24 + 3 * i) for i, r in enumerate(reviews[:8])]
    others = [example(tok, r.text, 24 + 3 * i) for i, r in enumerate(reviews[8:16])]
    split = fresh()
    apply_lora(split, LORA, seed=0)
    train(split, members, steps=40)
    return split, fresh(), [e.input_ids for e in members], [e.input_ids for e in others]


def membership_view(public, memorised, **kw) -> AttackerView:
    split, ref, members, others = memorised
    return view(
        public[0],
        public[1],
        query_logits=lambda ids, mask: split(ids, mask),
        reference_logits=lambda ids, mask: ref(ids, mask),
        candidates=members + others,
        **kw,
    )


@pytest.mark.parametrize("attack", [LossThreshold(), ReferenceCalibrated()], ids=lambda a: a.name)
def test_membership_ranks_memorised_examples_first(attack, public, memorised):
    scores = attack.run(membership_view(public, memorised)).scores
    assert len(scores) == 16 and all(isinstance(s, float) for s in scores)
    members, others = scores[:8], scores[8:]
    assert auc(members, others) >= 0.9
    assert sum(members) / 8 - sum(others) / 8 > 0.2  # nats per token


def test_membership_scores_are_the_nll_they_state(public, memorised):
    split, ref, members, others = memorised
    v = membership_view(public, memorised)
    loss = LossThreshold().run(v).scores
    calibrated = ReferenceCalibrated().run(v).scores
    # one candidate alone, unpadded, against a hand-written next-token NLL
    ids = torch.tensor([others[3]])
    with torch.no_grad():
        logp = torch.log_softmax(split(ids, torch.ones_like(ids)), -1)[0, :-1]
        ref_logp = torch.log_softmax(ref(ids, torch.ones_like(ids)), -1)[0, :-1]
    nll = -logp.gather(-1, ids[0, 1:, None]).mean().item()
    ref_nll = -ref_logp.gather(-1, ids[0, 1:, None]).mean().item()
    assert loss[11] == pytest.approx(-nll, abs=1e-5)
    assert calibrated[11] == pytest.approx(ref_nll - nll, abs=1e-5)
    # padding is excluded and the candidate order kept, whatever the batch size
    one_by_one = LossThreshold(MembershipOptions(batch=1)).run(membership_view(public, memorised)).scores
    assert one_by_one == pytest.approx(loss, abs=1e-5)


def test_reference_calibration_is_zero_on_the_public_model(public, memorised):
    _, ref, members, others = memorised
    v = view(
        *public,
        query_logits=lambda ids, mask: ref(ids, mask),
        reference_logits=lambda ids, mask: ref(ids, mask),
        candidates=members + others,
    )
    assert ReferenceCalibrated().run(v).scores == [0.0] * 16
    assert len(set(LossThreshold().run(v).scores)) == 16  # the uncalibrated scores still differ


def test_membership_refuses_what_it_cannot_score(public, memorised):
    split, ref, members, _ = memorised
    query = lambda ids, mask: split(ids, mask)  # noqa: E731
    with pytest.raises(ValueError, match="query_logits"):
        LossThreshold().run(view(*public, candidates=members))
    with pytest.raises(ValueError, match="reference_logits"):
        ReferenceCalibrated().run(view(*public, candidates=members, query_logits=query))
    with pytest.raises(ValueError, match=r">= 2 tokens.*\[1\]"):
        LossThreshold().run(view(*public, candidates=[members[0], [5]], query_logits=query))
    with pytest.raises(ValueError, match=r"attacks\.membership\.batch"):
        LossThreshold(MembershipOptions(batch=0))
    with pytest.raises(ValueError, match=r"\(batch, tokens, vocab\)"):
        mean_nll(lambda ids, mask: ids.float(), members, pad_token_id=0, batch_size=4)


# -- update inversion ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def round_updates(public, reviews):
    """One round from a common start: client A writes in capitals, B and C do not.

    Returns (before, {name: (after, trunk)}) with client states per role.
    """
    fresh, tok = public
    split = fresh()
    apply_lora(split, LORA, seed=0)
    before = {role: get_adapter_state(split.parts[role]) for role in CLIENT_ROLES}
    trunk0 = get_adapter_state(split.trunk)
    data = {
        "A": [example(tok, r.text.upper()) for r in reviews[:8]],
        "B": [example(tok, r.text) for r in reviews[100:108]],
        "C": [example(tok, r.text) for r in reviews[200:208]],
    }
    updates = {}
    for name, examples in data.items():
        for role in CLIENT_ROLES:
            set_adapter_state(split.parts[role], before[role])
        set_adapter_state(split.trunk, trunk0)
        train(split, examples, steps=60)
        after = {role: get_adapter_state(split.parts[role]) for role in CLIENT_ROLES}
        updates[name] = (after, get_adapter_state(split.trunk))
    return before, updates


def update_options(**kw) -> UpdateOptions:
    """The effort these tests were tuned with: 64 context windows, texts of up to 48 tokens."""
    return UpdateOptions(**{"windows": 64, "length": 48, **kw})


def capitals_found(public, before, after, trunk, **options) -> tuple[int, float]:
    """(capitals among the top 26 tokens, share of capitals in the decoded texts)."""
    v = view(*public, update=UpdateView(before, after, trunk, 1))
    guess = UpdateInversion(update_options(top_k=26, **options)).run(v)
    assert len(guess.tokens) == 26 and len(guess.texts) == 8
    text = "".join(guess.texts).encode()
    return len(CAPITALS & set(guess.tokens)), sum(c in CAPITALS for c in text) / max(len(text), 1)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_update_inversion_finds_the_clients_tokens(weight, public, round_updates):
    before, updates = round_updates
    options = {"length": 24, "weight": weight}
    a_tokens, a_text = capitals_found(public, before, *updates["A"], **options)
    b_tokens, b_text = capitals_found(public, before, *updates["B"], **options)
    chance = 26 * 26 / 256  # capitals expected among 26 tokens drawn at random
    if weight:  # the weighted score: a clear bag-of-tokens signal (6 capitals for A, 0 for B here)
        assert a_tokens >= 2 * chance and a_tokens >= b_tokens + 4
    else:  # the plain log-ratio is the weaker bag of tokens (4 for A, 1 for B here); its texts still tell
        assert a_tokens > chance and a_tokens >= b_tokens + 3
    assert a_text >= 0.5 > 0.2 >= b_text  # the decoded texts are mostly capitals for A only


def test_update_inversion_under_secure_aggregation(public, round_updates):
    """`after` is the mean of three clients' adapters: the attack runs and returns its shapes."""
    before, updates = round_updates

    def mean(states):
        return {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}

    after = {role: mean([updates[c][0][role] for c in "ABC"]) for role in CLIENT_ROLES}
    trunk = mean([updates[c][1] for c in "ABC"])
    v = view(*public, update=UpdateView(before, after, trunk, clients=3))
    attack = UpdateInversion(update_options(length=16))
    guess = attack.run(v)
    assert len(guess.texts) == 8 and all(isinstance(t, str) and 0 < len(t) <= 16 for t in guess.texts)
    assert len(guess.tokens) == 200 and len(set(guess.tokens)) == 200
    assert all(isinstance(t, int) and 0 <= t < 256 for t in guess.tokens)
    assert len(set(guess.texts)) > 1  # different prompts give different texts
    # the mean still shows that someone wrote in capitals (7 of the top 26; chance 2.6)
    assert len(CAPITALS & set(guess.tokens[:26])) > 26 * 26 / 256 + 2
    # deterministic: greedy decoding and a fixed ranking
    assert attack.run(v) == guess


def test_update_inversion_sampling_is_seeded(public, round_updates):
    before, updates = round_updates
    update = UpdateView(before, *updates["A"], 1)
    attack = UpdateInversion(update_options(length=12, texts=3, temperature=1.0))
    runs = [attack.run(view(*public, update=update, seed=s)).texts for s in (0, 0, 1)]
    assert runs[0] == runs[1] != runs[2]


def test_update_inversion_refuses_bad_input(public, round_updates):
    before, updates = round_updates
    with pytest.raises(ValueError, match="view.update"):
        UpdateInversion().run(view(*public))
    with pytest.raises(ValueError, match="same parts"):
        UpdateInversion().run(view(*public, update=UpdateView(before, {"top": before["top"]}, updates["A"][1], 1)))
    with pytest.raises(ValueError, match="aux"):
        v = view(*public, update=UpdateView(before, *updates["A"], 1))
        v.aux = [[5]]
        UpdateInversion().run(v)
    for field, key, value in (("top_k", "top_k", 0), ("length", "length", 2.5), ("lam", "lambda", -1.0),
                              ("weight", "weight", -1)):  # fmt: skip
        with pytest.raises(ValueError, match=rf"attacks\.update\.{key}: expected"):
            UpdateOptions(**{field: value})
    assert UpdateOptions(lam=2) == UpdateOptions(lam=2.0) and isinstance(UpdateOptions(lam=2).lam, float)


def test_context_windows_take_every_text_in_turn():
    aux = [list(range(10)), list(range(100, 103)), [7]]
    assert context_windows(aux, length=4, count=10) == [[0, 1, 2, 3], [100, 101, 102], [4, 5, 6, 7], [8, 9]]
    assert context_windows(aux, length=4, count=2) == [[0, 1, 2, 3], [100, 101, 102]]
