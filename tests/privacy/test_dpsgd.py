"""DP-SGD on the client's adapters: per-example gradients, the clipped noised step, empty batches."""

import copy
from functools import partial

import numpy as np
import pytest
import torch
from splitfed_testing import no_dropout, padded_batch, tiny_model

from crypto.dgauss import KeystreamBytes, cdt_sampler
from splitfed.models import LoraSpec, SplitLoraConfig, adapter_parameters, apply_lora, split_model
from splitfed.privacy.dpsgd import DPSGDConfig, per_example_loss, poisson_batches, secure_generator
from splitfed.privacy.dpsgd_step import DPSGDStrategy
from splitfed.privacy.events import DiscreteGaussianEvent, NonPrivateEvent, SampledGaussianEvent
from splitfed.privacy.grid import snap_rows
from splitfed.training import ClientStep, LocalLink, OptimConfig

OPTIM = OptimConfig(lr=1e-2, weight_decay=0.01)


def make_split(arch, *, trunk_lora=False, seed=0):
    """Tiny split (1, 3) with LoRA on Bottom and Top whose A and B are both random (B = 0 at
    initialisation would make every lora_A gradient zero and the comparisons weak)."""
    split = split_model(tiny_model(arch, **no_dropout(arch)), (1, 3))
    apply_lora(
        split, SplitLoraConfig(bottom=LoraSpec(r=2), trunk=LoraSpec(r=2) if trunk_lora else None, top=LoraSpec(r=2))
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in split.parts.values():
            for p in adapter_parameters(part):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return split


def client_params(split):
    return [*adapter_parameters(split.bottom), *adapter_parameters(split.top)]


def dp_step(split, dp, *, n_examples, seed=0, link=None):
    """A step whose noise is reproducible from `seed` (torch generator: float; keystream: discrete)."""
    link = link or LocalLink(split.trunk, OPTIM)
    gen = torch.Generator().manual_seed(seed)
    randbytes = KeystreamBytes(seed.to_bytes(32, "little"))
    strategy = partial(DPSGDStrategy, dp=dp, n_examples=n_examples, generator=gen, randbytes=randbytes)
    return ClientStep(split.bottom, split.top, link, OPTIM, strategy=strategy)


def single_example_grads(split, batch):
    """Each example alone through bottom -> trunk -> top (its loss: the mean over its targets)."""
    params, grads = client_params(split), []
    for i in range(batch["input_ids"].shape[0]):
        ids, mask, labels = (batch[k][i : i + 1] for k in ("input_ids", "attention_mask", "labels"))
        loss = split.top(split.trunk(split.bottom(ids, mask), mask), mask, labels).loss
        grads.append(torch.autograd.grad(loss, params))
    return grads  # [example][param]


class NoLink:
    def forward(self, act, mask):
        raise AssertionError("the link was called for an empty batch")

    backward = forward


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_per_example_gradients_equal_single_example_loop(arch, padding):
    split = make_split(arch)  # trunk without LoRA: unchanged by the step, so the loop is exact
    batch = padded_batch(padding, batch=4, seed=1)
    expected = single_example_grads(split, batch)
    step = dp_step(split, DPSGDConfig(1.0, 1.0, 0.5), n_examples=8)
    step.step(batch)
    for j, p in enumerate(step.strategy.params):
        assert p.grad_sample.shape == (4, *p.shape)
        for i in range(4):
            torch.testing.assert_close(p.grad_sample[i], expected[i][j], atol=1e-5, rtol=1e-4)
    lora = {id(p) for p in step.strategy.params}
    for part in split.parts.values():
        for name, p in part.named_parameters():
            if id(p) not in lora:
                assert getattr(p, "grad_sample", None) is None, name


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_step_equals_hand_computed_dp_sgd(arch):
    split = make_split(arch)
    before = [p.detach().clone() for p in client_params(split)]
    batch = padded_batch("right", batch=4, seed=2)
    grads = single_example_grads(split, batch)
    norms = torch.stack([torch.cat([g.flatten() for g in ex]).norm() for ex in grads])
    clip = float(norms.median())  # some examples clipped, some not
    dp = DPSGDConfig(noise_multiplier=0.7, max_grad_norm=clip, sample_rate=0.25, mechanism="float")
    n = 20  # expected batch q * n = 5, not the realised 4
    step = dp_step(split, dp, n_examples=n, seed=123)
    step.step(batch)

    noise_gen = torch.Generator().manual_seed(123)  # Opacus draws one normal tensor per param, in order
    expected_grads = []
    for j, p0 in enumerate(before):
        clipped = sum(ex[j] * min(1.0, clip / float(norm)) for ex, norm in zip(grads, norms, strict=True))
        noise = torch.normal(0.0, 0.7 * clip, size=p0.shape, generator=noise_gen)
        expected_grads.append((clipped + noise) / (0.25 * n))
    expected = [p.clone().requires_grad_(True) for p in before]
    adamw = torch.optim.AdamW(expected, lr=OPTIM.lr, weight_decay=OPTIM.weight_decay, betas=OPTIM.betas, eps=OPTIM.eps)
    for p, g in zip(expected, expected_grads, strict=True):
        p.grad = g
    adamw.step()
    for p, g, e in zip(step.strategy.params, expected_grads, expected, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(p.detach(), e.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_discrete_step_releases_the_snapped_sum_plus_the_exact_draw(arch):
    """The integer release is exactly sum_i snap(clip(g_i)) + z, z the sampler's draw from the
    injected bytes; the gradient is that integer vector * gamma / (q n), AdamW after it."""
    split = make_split(arch)
    before = [p.detach().clone() for p in client_params(split)]
    batch = padded_batch("right", batch=4, seed=2)
    grads = single_example_grads(split, batch)
    flat = torch.stack([torch.cat([g.flatten() for g in ex]) for ex in grads]).double()  # (B, d)
    clip = float(flat.norm(dim=1).median())
    dp = DPSGDConfig(noise_multiplier=0.7, max_grad_norm=clip, sample_rate=0.25)
    step = dp_step(split, dp, n_examples=20, seed=9)
    step.step(batch)

    d = flat.shape[1]
    gamma, bound, sigma2 = dp.grid(d)
    assert bound == dp.grid(d)[1] and gamma < clip / 100  # a fine grid: rounding within 1% of Delta
    clipped = flat * (clip / flat.norm(dim=1, keepdim=True).clamp(min=clip))
    snapped = snap_rows(clipped, gamma, bound)
    assert int((snapped * snapped).sum(dim=1).max()) <= bound**2
    z = torch.from_numpy(cdt_sampler(sigma2).sample(d, KeystreamBytes((9).to_bytes(32, "little"))))
    release = step.strategy.optimizer.last_release
    # This test's per-example gradients and Opacus' differ in the last bits (another summation
    # order, CPU-dependent): a coordinate that lands on a rounding boundary may snap one grid step
    # apart.  Everything else, and the noise draw, must be exact.
    off = release - (snapped.sum(dim=0) + z)
    assert int(off.abs().max()) <= 1 and int((off != 0).sum()) <= max(1, d // 200), off.nonzero()
    assert z.double().std() == pytest.approx(0.7 * float(bound), rel=0.2)  # sigma = nm * Delta grid units
    expected = torch.cat([p.grad.flatten() for p in step.strategy.params]).double()
    torch.testing.assert_close(expected, release.double() * gamma / 5.0, rtol=1e-6, atol=1e-9)
    for p, p0 in zip(step.strategy.params, before, strict=True):
        assert not torch.equal(p.detach(), p0)
    assert step.strategy.events() == (DiscreteGaussianEvent(0.7, count=1, tv=step.strategy.dp.events(1)[0].tv),)


def test_discrete_empty_batch_releases_noise_only_and_the_grid_is_validated():
    split = make_split("gpt2")
    dp = DPSGDConfig(1.0, 1.0, 0.1)
    step = dp_step(split, dp, n_examples=30, link=NoLink(), seed=3)
    empty = {k: torch.zeros((0, 10), dtype=torch.long) for k in ("input_ids", "attention_mask", "labels")}
    step.step(empty)
    d = sum(p.numel() for p in step.strategy.params)
    gamma, _, sigma2 = dp.grid(d)
    z = torch.from_numpy(cdt_sampler(sigma2).sample(d, KeystreamBytes((3).to_bytes(32, "little"))))
    assert torch.equal(step.strategy.optimizer.last_release, z)
    coarse = DPSGDConfig(1.0, 1.0, 0.1, grid_step=0.25)
    assert coarse.grid(100)[:2] == (0.25, 4 + 5)  # C / gamma + sqrt(d) / 2
    for bad in (0.3, -1.0, float("inf")):
        with pytest.raises(ValueError, match="grid_step must be 0 .automatic. or a power of two"):
            DPSGDConfig(1.0, 1.0, 0.1, grid_step=bad)
    with pytest.raises(ValueError, match="mechanism must be 'discrete' or 'float'"):
        DPSGDConfig(1.0, 1.0, 0.1, mechanism="gauss")
    with pytest.raises(ValueError, match="DP-SGD over 0 parameters"):
        dp.grid(0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_lora_parameters_change(arch):
    split = make_split(arch, trunk_lora=True)
    lora = {id(p) for part in split.parts.values() for p in adapter_parameters(part)}
    before = {(r, n): p.detach().clone() for r, part in split.parts.items() for n, p in part.named_parameters()}
    step = dp_step(split, DPSGDConfig(1.0, 0.5, 0.5), n_examples=8)
    for seed in range(2):
        step.step(padded_batch("right", batch=4, seed=seed))
    for role, part in split.parts.items():
        for name, p in part.named_parameters():
            if id(p) in lora:
                assert not torch.equal(p, before[role, name]), f"{role}.{name} did not change"
                assert torch.isfinite(p).all()
            else:
                assert torch.equal(p, before[role, name]), f"{role}.{name} changed"


def test_empty_batch_takes_a_noise_only_step_without_the_link():
    split = make_split("gpt2")
    lora_before = [p.detach().clone() for p in client_params(split)]
    base = [p for p in split.bottom.parameters() if not p.requires_grad]
    base_before = [p.detach().clone() for p in base]
    step = dp_step(split, DPSGDConfig(1.0, 1.0, 0.1, mechanism="float"), n_examples=30, link=NoLink())
    empty = {k: torch.zeros((0, 10), dtype=torch.long) for k in ("input_ids", "attention_mask", "labels")}
    assert step.step(empty).tokens == 0
    noise = torch.Generator().manual_seed(0)  # dp_step's seed: the whole gradient is the noise / (q * n)
    for p in step.strategy.params:
        torch.testing.assert_close(p.grad, torch.normal(0.0, 1.0, size=p.shape, generator=noise) / 3.0)
    assert step.empty_step().tokens == 0
    for p, p0 in zip(step.strategy.params, lora_before, strict=True):
        assert not torch.equal(p, p0)
    assert all(torch.equal(p, p0) for p, p0 in zip(base, base_before, strict=True))
    assert step.strategy.events() == (SampledGaussianEvent(1.0, 0.1, count=2),)

    quiet = dp_step(make_split("gpt2"), DPSGDConfig(0.0, 1.0, 0.1), n_examples=30, link=NoLink())
    before = [p.detach().clone() for p in quiet.strategy.params]
    assert quiet.strategy.events() == ()
    quiet.empty_step()
    for p, p0 in zip(quiet.strategy.params, before, strict=True):  # zero gradient: only AdamW's weight decay
        torch.testing.assert_close(p.detach(), p0 * (1 - OPTIM.lr * OPTIM.weight_decay), rtol=0, atol=1e-7)
    assert quiet.strategy.events() == (NonPrivateEvent(count=1),)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_without_noise_or_clipping_dp_gradient_is_client_step_gradient(arch):
    """loss_reduction: the server's gradient is d(mean loss)/d(act); with every example the same
    length the per-example mean is the token mean, so no-noise, no-clip DP-SGD with q * n = B
    takes exactly ClientStep's gradient (a mismatch would be off by a factor B)."""
    plain = make_split(arch, trunk_lora=True)
    private = copy.deepcopy(plain)
    batch = padded_batch("right", batch=3, seed=3)
    batch = {k: v[:1].repeat(3, 1) if k != "input_ids" else v for k, v in batch.items()}  # no padding
    batch["labels"] = batch["input_ids"].clone()
    ref = ClientStep(plain.bottom, plain.top, LocalLink(plain.trunk, OPTIM), OPTIM)
    dp = dp_step(private, DPSGDConfig(0.0, 1e6, 0.5), n_examples=6)
    a, b = ref.step(batch), dp.step(batch)
    assert b.loss == pytest.approx(a.loss, rel=1e-6)
    for p, q in zip(client_params(plain), dp.strategy.params, strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4)  # float32 sums, summed apart
        torch.testing.assert_close(q.detach(), p.detach(), atol=1e-7, rtol=1e-5)


def test_failed_link_leaves_no_stale_capture():
    class FailOnce(LocalLink):
        failed = False

        def backward(self, grad):
            if not self.failed:
                self.failed = True
                raise ConnectionError("server gone")
            return super().backward(grad)

    split = make_split("llama")
    batch = padded_batch("left", batch=4, seed=4)
    expected = single_example_grads(split, batch)
    step = dp_step(split, DPSGDConfig(1.0, 1.0, 0.5), n_examples=8, link=FailOnce(split.trunk, OPTIM))
    with pytest.raises(ConnectionError):
        step.step(padded_batch("right", batch=2, seed=5))
    assert step.strategy.steps == 0 and step.strategy.events() == ()
    step.step(batch)
    for j, p in enumerate(step.strategy.params):
        torch.testing.assert_close(p.grad_sample, torch.stack([ex[j] for ex in expected]), atol=1e-5, rtol=1e-4)


def test_per_example_loss_ignores_labels_and_averages_per_row():
    logits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 2, 3, 4], [-100, -100, -100, -100]])
    loss = per_example_loss(logits, labels)
    manual = torch.nn.functional.cross_entropy(logits[0, :3], labels[0, 1:])
    torch.testing.assert_close(loss, torch.stack([manual, torch.tensor(0.0)]))


def test_poisson_batches_statistics_and_reproducibility():
    n, q = 1000, 0.05
    sizes = [
        len(b) for b in poisson_batches(range(n), sample_rate=q, steps=200, generator=torch.Generator().manual_seed(0))
    ]
    assert abs(np.mean(sizes) - q * n) < 2.0  # the mean's sd is about 0.5
    again = poisson_batches(range(50), sample_rate=0.2, steps=20, generator=torch.Generator().manual_seed(7))
    assert again == poisson_batches(range(50), sample_rate=0.2, steps=20, generator=torch.Generator().manual_seed(7))
    assert again != poisson_batches(range(50), sample_rate=0.2, steps=20, generator=torch.Generator().manual_seed(8))
    small = poisson_batches(range(10), sample_rate=0.05, steps=100, generator=np.random.default_rng(0))
    assert [] in small and any(small)
    assert all(b == sorted(set(b)) and all(0 <= i < 10 for i in b) for b in small)
    assert len(poisson_batches(range(3), sample_rate=0.5, steps=4, generator=secure_generator())) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 0.0}, "sample_rate must be in \\(0, 1\\], got 0.0"),
        ({"steps": -1}, "steps must be an integer >= 0, got -1"),
        ({"generator": 7}, "generator must be"),
    ],
)
def test_poisson_batches_rejects_bad_arguments(kwargs, message):
    args = {"sample_rate": 0.5, "steps": 1, "generator": torch.Generator()} | kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        poisson_batches(range(3), **args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier must be a finite number >= 0, got -1.0"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier .* got nan"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be a finite number > 0, got 0.0"),
        ({"sample_rate": 1.5}, "sample_rate must be in \\(0, 1\\], got 1.5"),
        ({"sample_rate": True}, "sample_rate .* got True"),
    ],
)
def test_config_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPSGDConfig(**({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "sample_rate": 0.1} | kwargs))


def test_step_refuses_trainable_base_weights_and_missing_adapters():
    split = make_split("llama")
    split.top.norm.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="only LoRA parameters may be trainable.*norm.weight"):
        dp_step(split, DPSGDConfig(1.0, 1.0, 0.1), n_examples=10)
    bare = split_model(tiny_model("llama"), (1, 3))
    bare.bottom.requires_grad_(False)
    bare.top.requires_grad_(False)
    with pytest.raises(ValueError, match="call apply_lora first"):
        dp_step(bare, DPSGDConfig(1.0, 1.0, 0.1), n_examples=10)
    with pytest.raises(ValueError, match="n_examples must be an integer >= 1, got 0"):
        dp_step(make_split("llama"), DPSGDConfig(1.0, 1.0, 0.1), n_examples=0)
