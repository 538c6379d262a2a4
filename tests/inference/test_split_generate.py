"""Split generation equals Hugging Face `generate` on the unsplit model carrying the same LoRA."""

import pytest
import torch
from generation_testing import ARCHS, batch_args, generator, hf_generate, right_padded, with_lora
from splitfed_testing import ARCHS as EVERY_FAMILY
from splitfed_testing import no_dropout, padded_batch, tiny_model, tiny_tokenizer

from splitfed.inference import GenerationSettings, LocalDecodeLink, SplitGenerator, left_align
from splitfed.models import split_model
from splitfed.models.kv import KVCache


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_unsplit_generate_with_lora(arch):
    split, reference = with_lora(arch)
    left = padded_batch("left")
    want = hf_generate(reference, left, eos_token_id=None)
    assert want.shape == (3, 20)
    without_lora = hf_generate(tiny_model(arch, **no_dropout(arch)), left, eos_token_id=None)
    assert not torch.equal(want, without_lora)  # the adapters change the tokens
    for batch in (left, right_padded(left)):
        out = generator(split, eos=None).generate(
            batch["input_ids"], batch["attention_mask"], GenerationSettings(max_new_tokens=10)
        )
        assert torch.equal(out.sequences, want)
        assert out.new_tokens == want[:, 10:].tolist() and out.finish_reasons == ["length"] * 3


@pytest.mark.parametrize("arch", EVERY_FAMILY)
def test_greedy_equals_generate_every_family_and_empty_parts(arch):
    """Every family's blocks take the cache (GPT-NeoX / GPTBigCode as `layer_past`); a cut
    (0, 4) leaves Bottom and Top without blocks, whose caches only count positions."""
    model = tiny_model(arch, **no_dropout(arch))
    batch = padded_batch("left")
    want = hf_generate(model, batch, max_new_tokens=6, eos_token_id=None)
    for cut in [(0, 4), (1, 3)]:
        split = split_model(model, cut)
        gen = SplitGenerator(split.bottom, split.top, LocalDecodeLink(split.trunk), pad_token_id=0, eos_token_id=None)
        out = gen.generate(**batch_args(batch), settings=GenerationSettings(max_new_tokens=6))
        assert torch.equal(out.sequences, want), cut


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_logits_equal_uncached(arch):
    split, _ = with_lora(arch)
    batch = padded_batch("left", length=12)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        want = split(ids, mask)
        caches = [KVCache(), KVCache(), KVCache()]
        got = []
        for lo, hi in [(0, 7), *[(t, t + 1) for t in range(7, 12)]]:  # a prefill, then one token at a time
            m = mask[:, :hi]
            h = split.bottom(ids[:, lo:hi], m, cache=caches[0])
            h = split.trunk(h, m, cache=caches[1])
            got.append(split.top(h, m, cache=caches[2]))
    got = torch.cat(got, dim=1)
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-5, rtol=0)
    assert all(c.length == 12 and c.rows == 3 for c in caches)


def test_eos_finishes_a_row_which_then_pads():
    split, reference = with_lora("llama")
    batch = padded_batch("left")
    free = generator(split, eos=None).generate(**batch_args(batch), settings=GenerationSettings(max_new_tokens=8))
    # a token some row first produces at step k >= 1 becomes the end of sequence
    row0, k = next((r, k) for r, t in enumerate(free.new_tokens) for k in range(1, 8) if t[k] not in t[:k])
    eos = free.new_tokens[row0][k]
    out = generator(split, eos=eos).generate(**batch_args(batch), settings=GenerationSettings(max_new_tokens=8))
    assert torch.equal(out.sequences, hf_generate(reference, batch, max_new_tokens=8, eos_token_id=eos))
    for row, tokens in enumerate(free.new_tokens):
        stop = tokens.index(eos) + 1 if eos in tokens else len(tokens)
        assert out.new_tokens[row] == tokens[:stop]
        assert out.finish_reasons[row] == ("eos" if eos in tokens else "length")
    assert out.new_tokens[row0] == free.new_tokens[row0][: k + 1] and out.finish_reasons[row0] == "eos"
    width = max(len(t) for t in out.new_tokens)
    assert out.sequences.shape == (3, 10 + width)
    assert out.sequences[row0, 10 + k + 1 :].eq(0).all()  # pad after the row's EOS


def test_all_rows_at_eos_stop_early_and_max_new_tokens_bounds():
    split, _ = with_lora("gpt2")
    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    free = generator(split, eos=None).generate(ids, mask, GenerationSettings(max_new_tokens=6))
    assert free.sequences.shape == (1, 9) and free.finish_reasons == ["length"]
    eos = free.new_tokens[0][1]
    first = free.new_tokens[0].index(eos)
    steps = []
    out = generator(split, eos=eos).generate(
        ids, mask, GenerationSettings(max_new_tokens=6), on_tokens=lambda step, tok: steps.append((step, tok.tolist()))
    )
    assert out.finish_reasons == ["eos"] and out.new_tokens[0] == free.new_tokens[0][: first + 1]
    assert steps == [(i, [t]) for i, t in enumerate(out.new_tokens[0])]
    assert out.sequences.shape == (1, 3 + first + 1)


def test_stop_strings_with_a_tokenizer():
    tok = tiny_tokenizer()
    split, _ = with_lora("llama", vocab_size=len(tok))
    enc = tok(["Hello! How are", "The patient"], return_tensors="pt", padding=True, padding_side="left")
    args = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    gen = SplitGenerator(
        split.bottom, split.top, LocalDecodeLink(split.trunk), pad_token_id=tok.pad_token_id, eos_token_id=None
    )
    free = gen.generate(**args, settings=GenerationSettings(max_new_tokens=10))
    text = tok.decode(free.new_tokens[0][:4], skip_special_tokens=False)
    stop = text[-2:] if len(text) >= 2 else text
    with pytest.raises(ValueError, match="needs a tokenizer"):
        gen.generate(**args, settings=GenerationSettings(max_new_tokens=10, stop=(stop,)))
    out = gen.generate(**args, settings=GenerationSettings(max_new_tokens=10, stop=(stop,)), tokenizer=tok)
    for row, tokens in enumerate(free.new_tokens):
        ends = [n for n in range(1, 11) if stop in tok.decode(tokens[:n], skip_special_tokens=False)]
        assert out.new_tokens[row] == (tokens[: ends[0]] if ends else tokens)
        assert out.finish_reasons[row] == ("stop" if ends else "length")
    assert out.finish_reasons[0] == "stop" and len(out.new_tokens[0]) <= 4


class RecordingLink(LocalDecodeLink):
    """The real in-process trunk, recording what crosses the cut."""

    def __init__(self, trunk):
        super().__init__(trunk)
        self.seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.closed = 0

    def prefill(self, h, mask):
        self.seen.append(("prefill", h, mask))
        return super().prefill(h, mask)

    def decode(self, h, mask):
        self.seen.append(("decode", h, mask))
        return super().decode(h, mask)

    def close(self):
        self.closed += 1
        super().close()


def test_only_activations_and_masks_cross_one_position_per_step():
    split, _ = with_lora("qwen3")
    link = RecordingLink(split.trunk)
    batch = padded_batch("left")
    gen = SplitGenerator(split.bottom, split.top, link, pad_token_id=0, eos_token_id=None)
    gen.generate(**batch_args(batch), settings=GenerationSettings(max_new_tokens=4))
    kinds = [k for k, _, _ in link.seen]
    assert kinds == ["prefill", "decode", "decode", "decode"] and link.closed == 1 and link.cache is None
    for i, (_, h, mask) in enumerate(link.seen):
        assert h.dtype == torch.float32 and h.shape == (3, 10 if i == 0 else 1, 32)
        assert mask.shape == (3, 10 + i)


def test_left_align_rolls_right_padding_and_refuses_holes():
    ids = torch.tensor([[1, 2, 0], [0, 3, 4], [5, 6, 7]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1]])
    got_ids, got_mask = left_align(ids, mask)
    assert got_ids.tolist() == [[0, 1, 2], [0, 3, 4], [5, 6, 7]]
    assert got_mask.tolist() == [[0, 1, 1], [0, 1, 1], [1, 1, 1]]
    with pytest.raises(ValueError, match="contiguous"):
        left_align(ids, torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 1]]))
