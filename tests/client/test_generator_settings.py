"""`SplitLM.generate` takes its settings from the run config's [generate] unless given (no server)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import torch

import splitfed.client.generator as generator
from splitfed.config import GenerationSettings, parse_config


def _lm(monkeypatch, cfg):
    seen = []

    class FakeGenerator:
        def __init__(self, *args, **kwargs):
            pass

        def generate(self, ids, mask, settings, **kwargs):
            seen.append(settings)
            return SimpleNamespace(new_tokens=[[] for _ in range(ids.shape[0])])

    monkeypatch.setattr(generator, "SplitGenerator", FakeGenerator)
    monkeypatch.setattr(generator, "RemoteDecodeLink", lambda *args, **kwargs: None)
    lm = object.__new__(generator.SplitLM)
    lm.cfg, lm.conn, lm.compression, lm.device = cfg, None, "fp32", torch.device("cpu")
    lm.bottom = lm.top = None
    lm.tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=0)
    lm._streams = itertools.count()
    lm.privacy = None
    return lm, seen


def test_generate_defaults_to_the_config_and_keywords_win(monkeypatch):
    cfg = parse_config({"generate": {"max_new_tokens": 7, "do_sample": True, "seed": 1}})
    lm, seen = _lm(monkeypatch, cfg)
    ids = torch.ones(1, 3, dtype=torch.long)
    lm.generate(ids)
    assert seen[-1] == cfg.generate
    lm.generate(ids, max_new_tokens=2)
    assert seen[-1] == GenerationSettings(max_new_tokens=2, do_sample=True, seed=1)
    given = GenerationSettings(top_k=3)
    lm.generate(ids, None, given)
    assert seen[-1] == given  # explicit settings replace the config's, they are not merged
    lm.generate(ids, None, given, top_p=0.5)
    assert seen[-1] == GenerationSettings(top_k=3, top_p=0.5)
