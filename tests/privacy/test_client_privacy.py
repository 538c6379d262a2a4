"""ClientPrivacy's ledger entries: lengths and the sample count disclosed, secret noise only."""

import math

import pytest
import torch

from splitfed.client.privacy import ClientPrivacy
from splitfed.config import parse_config
from splitfed.privacy.events import DiscreteGaussianEvent, NonPrivateEvent, Party
from splitfed.privacy.ledger import REPRODUCIBLE_NOISE, Disclosure, LedgerError, Relation
from splitfed.privacy.mechanisms import MAX_RELEASE_TV, SecureNoise, TorchNoise


def _cfg(tmp_path, **privacy):
    return parse_config(
        {
            "run": {"dir": str(tmp_path)},
            "privacy": {
                "enabled": True,
                "activations": {"enabled": True, "noise_multiplier": 2.0},
                "dpsgd": {"enabled": True, "noise_multiplier": 4.0, "sample_rate": 0.1},
                **privacy,
            },
        }
    )


def test_round_entries_disclose_lengths_and_name_relations(tmp_path):
    cp = ClientPrivacy(_cfg(tmp_path), 0, "client-0", n_examples=50)
    assert isinstance(cp.noise, SecureNoise)
    lengths, act, grad, dpsgd = cp.round_entries(3, releases=2)
    assert (lengths.mechanism, lengths.against, lengths.event) == ("lengths", Party.SERVER, Disclosure(2))
    assert (
        act.event == DiscreteGaussianEvent(2.0, 2, MAX_RELEASE_TV)
        and act.relation is Relation.REPLACE_ONE
        and act.reason is None
    )
    assert grad.event == NonPrivateEvent(2) and grad.mechanism == "raw_gradients"
    assert dpsgd.relation is Relation.ADD_REMOVE and dpsgd.event.noise_multiplier == 4.0
    assert [e.mechanism for e in cp.round_entries(3, releases=0)] == ["dpsgd"]  # all Poisson batches empty


def test_sample_count_is_recorded_once_per_run(tmp_path):
    cp = ClientPrivacy(_cfg(tmp_path), 0, "client-0", n_examples=50)
    (hello,) = cp.hello_entries()
    assert (hello.mechanism, hello.against, hello.event) == ("sample_count", Party.AGGREGATOR, Disclosure(1))
    cp.ledger.append([hello])
    assert cp.hello_entries() == []  # a reconnect or a resumed run says hello again: nothing new is disclosed
    cp.ledger.append(cp.round_entries(0, releases=1))
    stated = cp.statements()
    assert all(any(line.startswith("sample_count -> aggregator") for line in s.not_covered) for s in stated[1:])


def test_reproducible_noise_is_recorded_as_non_private(tmp_path):
    cp = ClientPrivacy(_cfg(tmp_path, secure_noise=False), 0, "client-0", n_examples=50)
    assert isinstance(cp.noise, TorchNoise)
    entries = cp.round_entries(0, releases=1)
    noised = [e for e in entries if e.mechanism in ("activation_ldp", "dpsgd")]
    assert len(noised) == 2 and all(isinstance(e.event, NonPrivateEvent) for e in noised)
    assert all(e.reason == REPRODUCIBLE_NOISE for e in noised)
    cp.ledger.append(entries)
    assert all(math.isinf(v) for v in cp.spent().values())


def test_injected_noise_is_a_test_hook_that_keeps_the_epsilon(tmp_path):
    noise, gen = TorchNoise(torch.Generator().manual_seed(1)), torch.Generator().manual_seed(2)
    cfg = _cfg(tmp_path, gradients={"enabled": True, "noise_multiplier": 2.0})
    cp = ClientPrivacy(cfg, 0, "client-0", n_examples=50, noise=noise, generator=gen)
    assert cp.noise is noise and cp.generator is gen
    cp.ledger.append(cp.round_entries(0, releases=1))
    assert math.isfinite(cp.spent()["total"])


def test_a_damaged_ledger_stops_the_client_before_it_releases(tmp_path):
    path = tmp_path / "privacy" / "client-0.jsonl"
    path.parent.mkdir()
    path.write_text("garbage\n{}\n")
    with pytest.raises(LedgerError, match=r"client-0.jsonl:1: not a complete ledger entry"):
        ClientPrivacy(_cfg(tmp_path), 0, "client-0", n_examples=50)


def test_after_prepare_the_ledger_charges_the_tables_own_slack(tmp_path):
    """The demo's privacy (examples/run_private.toml): with the bound for any release size the
    sampler's slack makes round 3's total infinite; with the tables' own bounds it stays finite."""
    from crypto.dgauss import cdt_sampler
    from splitfed.privacy.ledger import spent

    cfg = parse_config(
        {
            "run": {"dir": str(tmp_path)},
            "privacy": {
                "enabled": True,
                "activations": {"enabled": True, "clip": 800.0, "epsilon": 8.0},
                "gradients": {"enabled": True, "clip": 0.01, "epsilon": 8.0},
                "dpsgd": {"enabled": True, "noise_multiplier": 4.0, "sample_rate": 0.1},
            },
        }
    )
    loose = ClientPrivacy(cfg, 0, "client-0", n_examples=500)
    tight = ClientPrivacy(cfg, 1, "client-1", n_examples=500)
    tight.prepare(576, trainable=100_000)
    positions = cfg.data.max_length
    _, act, grad, dpsgd = tight.round_entries(0, releases=1)
    sigma2 = tight.activations.grid(576)[2]
    assert act.event.tv == math.nextafter(positions * 576 * cdt_sampler(sigma2).tv, math.inf)
    assert 0 < act.event.tv < MAX_RELEASE_TV * 1e-6 and 0 < grad.event.tv < MAX_RELEASE_TV * 1e-6
    assert dpsgd.event.tv == math.nextafter(100_000 * cdt_sampler(tight.dpsgd.grid(100_000)[2]).tv, math.inf)
    rounds = lambda cp: [e for r in range(3) for e in cp.round_entries(r, releases=1)]  # noqa: E731
    assert math.isinf(spent(rounds(loose), cfg.privacy.delta)["total"])
    assert 30 < spent(rounds(tight), cfg.privacy.delta)["total"] < 50  # the demo's budget lasts three rounds


def test_post_release_hook_sees_each_channels_release_and_its_output_is_sent(tmp_path):
    cfg = _cfg(tmp_path, gradients={"enabled": False}, dpsgd={"enabled": False})
    seen = []

    def hook(channel: str, x: torch.Tensor) -> torch.Tensor:
        seen.append((channel, x.clone()))
        return x + 1000.0

    x, mask = torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.long)
    plain = ClientPrivacy(cfg, 0, "client-0", n_examples=50, noise=TorchNoise(torch.Generator().manual_seed(5)))
    hooked = ClientPrivacy(
        cfg, 0, "client-0", n_examples=50, noise=TorchNoise(torch.Generator().manual_seed(5)), post_release=hook
    )
    noised = plain.release_activations(x, mask)
    assert torch.equal(hooked.release_activations(x, mask), noised + 1000.0)  # after the noise, same draws
    assert torch.equal(hooked.release_gradient(x, mask), x + 1000.0)  # a raw channel goes through it too
    assert [c for c, _ in seen] == ["activation", "gradient"]
    assert torch.equal(seen[0][1], noised) and torch.equal(seen[1][1], x)
    assert plain.release_gradient(x, mask) is x  # no hook: the raw release is the tensor itself
