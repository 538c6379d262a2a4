"""Inference releases: noised through [privacy.activations], recorded before they are sent, stated per
session and per client; without noise recorded as non-private; the budget refuses a session."""

import math

import pytest
import torch
from generation_testing import with_lora
from splitfed_testing import padded_batch

from splitfed.client.inference_privacy import InferencePrivacy, inference_ledger_path
from splitfed.config import parse_config
from splitfed.errors import UsageError
from splitfed.inference import GenerationSettings, LocalDecodeLink, SplitGenerator
from splitfed.privacy.calibrate import gaussian_composition_epsilon
from splitfed.privacy.events import DiscreteGaussianEvent, GaussianEvent, NonPrivateEvent
from splitfed.privacy.ledger import REPRODUCIBLE_NOISE, Disclosure, read_ledger, statements
from splitfed.privacy.mechanisms import SecureNoise, TorchNoise


def _cfg(tmp_path, *, activations=None, **privacy):
    act = {"enabled": True, "noise_multiplier": 2.0, "clip": 1.0} if activations is None else activations
    return parse_config({"run": {"dir": str(tmp_path)}, "privacy": {"enabled": True, "activations": act, **privacy}})


class Recording(LocalDecodeLink):
    """The in-process trunk, keeping what it received: the server's view of the session."""

    def __init__(self, trunk):
        super().__init__(trunk)
        self.seen: list[torch.Tensor] = []

    def prefill(self, h, mask):
        self.seen.append(h.clone())
        return super().prefill(h, mask)

    def decode(self, h, mask):
        self.seen.append(h.clone())
        return super().decode(h, mask)


def test_sequence_unit_session_is_one_release_per_sent_tensor_and_recorded_before_sending(tmp_path):
    ip = InferencePrivacy(_cfg(tmp_path), "client-0")
    assert isinstance(ip.noise, SecureNoise)
    s = ip.open(rows=3, prompt_positions=7, max_new_tokens=5, hidden=16)
    shape, act = read_ledger(inference_ledger_path(tmp_path, "client-0"))
    assert shape.event == Disclosure(1) and shape.round == act.round == s.number == 1
    # the prefill and 4 decode positions: 5 releases at the channel's multiplier, for one prompt
    assert act.unit == "prompt" and isinstance(act.event, DiscreteGaussianEvent)
    assert (act.event.noise_multiplier, act.event.count) == (2.0, 5)
    assert math.isfinite(s.epsilon()) and s.epsilon() == s.epsilon("client")
    s2 = ip.open(rows=1, prompt_positions=3, max_new_tokens=5, hidden=16)
    assert s2.number == 2 and math.isclose(s2.epsilon(), s.epsilon(), rel_tol=1e-9)
    assert s2.epsilon("client") > s2.epsilon()  # both sessions composed: a text in every prompt


def test_token_unit_composes_every_position_sent(tmp_path):
    act = {"enabled": True, "noise_multiplier": 3.0, "unit": "token", "mechanism": "float"}
    s = InferencePrivacy(_cfg(tmp_path, activations=act), "client-0").open(
        rows=2, prompt_positions=6, max_new_tokens=4, hidden=8
    )
    (entry,) = [e for e in s.entries if e.mechanism == "inference_activation_ldp"]
    assert entry.event == GaussianEvent(3.0 / math.sqrt(6 + 3), 1)
    expected = gaussian_composition_epsilon([GaussianEvent(3.0, 9)], 1e-5)
    assert math.isclose(s.epsilon(), expected, rel_tol=1e-6)


def test_without_noise_inference_is_recorded_as_non_private(tmp_path):
    s = InferencePrivacy(_cfg(tmp_path, activations={"enabled": False}), "client-0").open(
        rows=1, prompt_positions=4, max_new_tokens=3, hidden=8
    )
    (raw,) = [e for e in s.entries if e.mechanism == "raw_inference_activations"]
    assert raw.event == NonPrivateEvent(4 + 2) and math.isinf(s.epsilon())
    h = torch.randn(1, 4, 8)
    assert s.release(h, torch.ones(1, 4)) is h


def test_reproducible_noise_is_non_private_at_inference_too(tmp_path):
    ip = InferencePrivacy(_cfg(tmp_path, secure_noise=False), "client-0", seed=5)
    assert isinstance(ip.noise, TorchNoise)
    s = ip.open(rows=1, prompt_positions=4, max_new_tokens=3, hidden=8)
    (noised,) = [e for e in s.entries if e.mechanism == "inference_activation_ldp"]
    assert isinstance(noised.event, NonPrivateEvent) and noised.reason == REPRODUCIBLE_NOISE


def test_budget_refuses_the_session_that_would_exceed_it_and_records_nothing(tmp_path):
    one = InferencePrivacy(_cfg(tmp_path / "probe"), "client-0").open(
        rows=1, prompt_positions=4, max_new_tokens=2, hidden=8
    )
    budget = 1.2 * one.epsilon()  # room for one session, not two
    ip = InferencePrivacy(_cfg(tmp_path, max_epsilon=budget), "client-0")
    assert ip.open(rows=1, prompt_positions=4, max_new_tokens=2, hidden=8).epsilon("client") <= budget
    before = read_ledger(ip.ledger.path)
    with pytest.raises(UsageError, match=r"privacy budget: .*above privacy.max_epsilon = .*nothing was sent"):
        ip.open(rows=1, prompt_positions=4, max_new_tokens=2, hidden=8)
    assert read_ledger(ip.ledger.path) == before
    spent = [s for s in statements(before, 1e-5) if s.party == "server"][0].epsilon
    assert math.isclose(spent, one.epsilon(), rel_tol=1e-9)


def test_the_server_receives_only_noised_clipped_positions_and_a_fixed_number_of_them(tmp_path):
    torch.manual_seed(0)
    split, _ = with_lora("llama")
    hidden = split.bottom.config.hidden_size
    cfg = _cfg(tmp_path, activations={"enabled": True, "noise_multiplier": 0.5, "clip": 1.0, "unit": "token"})
    session = InferencePrivacy(cfg, "client-0").open(rows=3, prompt_positions=10, max_new_tokens=6, hidden=hidden)
    link = Recording(split.trunk)
    batch = padded_batch("left", batch=3, length=10)
    gen = SplitGenerator(
        split.bottom, split.top, link, pad_token_id=0, eos_token_id=None, release=session.release, fixed_steps=True
    )
    gen.generate(batch["input_ids"], batch["attention_mask"], GenerationSettings(max_new_tokens=6))
    assert [tuple(t.shape) for t in link.seen] == [(3, 10, hidden)] + [(3, 1, hidden)] * 5
    gamma = session.release.mech.grid(hidden)[0]
    for sent in link.seen:
        k = sent / gamma
        assert torch.equal(k, k.round())  # integers on the grid, not the Bottom's floats
    clean = split.bottom(batch["input_ids"], batch["attention_mask"])
    clipped = session.release.mech.clip_only(clean, batch["attention_mask"])
    assert not torch.allclose(link.seen[0], clipped, atol=0.05)  # noise of sigma = 0.5 * 2 * clip per coordinate
    pad = batch["attention_mask"] == 0
    assert torch.equal(link.seen[0][pad], torch.zeros_like(link.seen[0][pad]))  # padding carries nothing


def test_fixed_steps_runs_to_max_new_tokens_even_when_every_row_stopped():
    torch.manual_seed(0)
    split, _ = with_lora("gpt2")
    batch = padded_batch("left", batch=2, length=6)
    for fixed, calls in ((False, 1), (True, 6)):
        link = Recording(split.trunk)
        eos = list(range(split.top.config.vocab_size))  # every token is an EOS: each row stops at once
        gen = SplitGenerator(split.bottom, split.top, link, pad_token_id=0, eos_token_id=eos, fixed_steps=fixed)
        out = gen.generate(batch["input_ids"], batch["attention_mask"], GenerationSettings(max_new_tokens=6))
        assert len(link.seen) == calls and out.finish_reasons == ["eos", "eos"]
        assert all(len(t) == 1 for t in out.new_tokens)
