"""KVCache: sparse layer indices, and stacking sessions of different lengths into one trunk step.

A stacked step is NOT bitwise equal to each session alone on this CPU stack, for two reasons
measured here: MKL's sgemm gives a row a different rounding depending on how many rows the
matrix has (a (7, D) @ W row differs from the same (1, D) @ W in the last bit, even on one
thread), and SDPA's CPU flash kernel sums softmax terms in vector lanes by position, so left
padding that is not a multiple of the vector width regroups the sum.  The step therefore
agrees to float32 rounding (max |diff| ~1e-7 on these models, asserted <= 1e-6); everything
that is bookkeeping (padding, splitting, the positions cached before the step) is bitwise.
"""

import copy

import pytest
import torch
from splitfed_testing import no_dropout, tiny_model

from splitfed.models import split_model
from splitfed.models.kv import KVCache, stack_caches, unstack_cache

SESSIONS = [(2, 5), (1, 9), (3, 2), (1, 13)]  # (rows, cached length): 13 > qwen3's window of 3


def _ones(rows: int) -> torch.Tensor:
    return torch.ones(rows, 1, dtype=torch.long)


def _sessions(split, gen):
    """Prefill each session through bottom + trunk; row 1 of a multi-row session is left-padded."""
    out = []
    with torch.no_grad():
        for rows, length in SESSIONS:
            ids = torch.randint(3, 128, (rows, length), generator=gen)
            mask = torch.ones(rows, length, dtype=torch.long)
            if rows > 1:
                mask[1, :1] = 0
            cache = KVCache()
            split.trunk(split.bottom(ids, mask), mask, cache=cache)
            out.append((cache, mask))
    return out


def _equal_caches(a: KVCache, b: KVCache) -> bool:
    same = a.layers == b.layers and (a.rows, a.length) == (b.rows, b.length)
    return same and all(torch.equal(a.keys[i], b.keys[i]) and torch.equal(a.values[i], b.values[i]) for i in a.layers)


def test_cache_keys_layers_by_full_model_index():
    split = split_model(tiny_model("llama"), (2, 4))  # a trunk of layers 2 and 3
    cache = KVCache()
    with torch.no_grad():
        split.trunk(torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long), cache=cache)
    assert cache.layers == [2, 3] and (cache.rows, cache.length) == (2, 5)
    assert cache.keys[2].shape == (2, 2, 5, 8)  # rows, kv heads, positions, head dim
    assert cache.nbytes() == 2 * 2 * (2 * 2 * 5 * 8) * 4  # 2 layers x (K, V) x float32
    with pytest.raises(ValueError, match=r"shape \(2, 6\) \(batch, cached \+ new tokens\)"):
        split.trunk(torch.randn(2, 1, 32), torch.ones(2, 1, dtype=torch.long), cache=cache)


def test_stack_pads_left_and_unstack_is_its_exact_inverse():
    split = split_model(tiny_model("gpt2", **no_dropout("gpt2")), (1, 3))
    sessions = _sessions(split, torch.Generator().manual_seed(0))
    caches, masks = zip(*sessions, strict=True)
    stacked, mask = stack_caches(caches, masks)
    assert (stacked.rows, stacked.length) == (7, 13) and mask.shape == (7, 13)
    assert torch.equal(mask[:2, :8], torch.zeros(2, 8, dtype=torch.long))  # 13 - 5 padding columns
    assert torch.equal(mask[:2, 8:], masks[0])
    assert not stacked.keys[1][:2, :, :8].any() and stacked.keys[1][:2, :, 8:].any()
    back = unstack_cache(stacked, [r for r, _ in SESSIONS], [n for _, n in SESSIONS])
    assert all(_equal_caches(b, c) for b, c in zip(back, caches, strict=True))


def test_stack_refuses_mismatched_sessions():
    a, b = KVCache(), KVCache()
    a.update(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), 1)
    a.advance(1, 3)
    with pytest.raises(ValueError, match=r"cache 1 holds layers \[\]"):
        stack_caches([a, b], [torch.ones(1, 3), torch.ones(0, 0)])
    with pytest.raises(ValueError, match=r"mask 0 has shape \(1, 2\)"):
        stack_caches([a], [torch.ones(1, 2)])
    with pytest.raises(ValueError, match="do not split"):
        unstack_cache(a, [2], [3])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
def test_stacked_decode_step_equals_each_session_alone(arch):
    split = split_model(tiny_model(arch, **no_dropout(arch)), (1, 3))
    gen = torch.Generator().manual_seed(1)
    sessions = _sessions(split, gen)
    new = [torch.randn(rows, 1, 32, generator=gen) for rows, _ in SESSIONS]
    alone_out, alone_caches = [], []
    with torch.no_grad():
        for (cache, mask), h in zip(sessions, new, strict=True):
            mine = copy.deepcopy(cache)
            alone_out.append(split.trunk(h, torch.cat([mask, _ones(len(mask))], 1), cache=mine))
            alone_caches.append(mine)
        stacked, mask = stack_caches(*zip(*sessions, strict=True))
        out = split.trunk(torch.cat(new), torch.cat([mask, _ones(len(mask))], 1), cache=stacked)
    back = unstack_cache(stacked, [r for r, _ in SESSIONS], [n + 1 for _, n in SESSIONS])
    worst = 0.0
    for got, want, cache, ref, (_, n) in zip(
        out.split([r for r, _ in SESSIONS]), alone_out, back, alone_caches, SESSIONS, strict=True
    ):
        worst = max(worst, (got - want).abs().max().item())
        assert (cache.rows, cache.length) == (ref.rows, ref.length) == (len(got), n + 1)
        for i in ref.layers:
            # positions cached before the step come back bit for bit
            assert torch.equal(cache.keys[i][:, :, :n], ref.keys[i][:, :, :n])
            assert torch.equal(cache.values[i][:, :, :n], ref.values[i][:, :, :n])
            torch.testing.assert_close(cache.keys[i], ref.keys[i], atol=1e-6, rtol=0)
            torch.testing.assert_close(cache.values[i], ref.values[i], atol=1e-6, rtol=0)
    assert worst <= 1e-6, f"stacked step differs from alone by {worst:.3g}"
