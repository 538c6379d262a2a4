"""Each part can be built alone from a checkpoint; the trunk never holds embeddings or the head."""

import pytest
import torch
from splitfed_testing import padded_batch, tiny_model

from splitfed.models import CheckpointError, load_client_parts, load_part, split_model


@pytest.fixture(params=["llama", "gpt2"])
def checkpoint(request, tmp_path):
    model = tiny_model(request.param, tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_parts_from_checkpoint_reproduce_the_model(checkpoint):
    model, path = checkpoint
    cut = (1, 3)
    trunk = load_part(path, "trunk", cut)
    bottom, top = load_client_parts(path, cut)
    batch = padded_batch("left")
    mask = batch["attention_mask"]
    with torch.no_grad():
        got = top(trunk(bottom(batch["input_ids"], mask), mask), mask)
        want = split_model(model, cut)(batch["input_ids"], mask)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # tied embeddings stay tied on the client, so the client holds one copy
    assert top.lm_head.weight is bottom.embed.weight


def test_trunk_holds_only_its_blocks(checkpoint):
    model, path = checkpoint
    layout_layers = "model.layers" if model.config.model_type == "llama" else "transformer.h"
    trunk = load_part(path, "trunk", (1, 3))
    names = [n for n, _ in trunk.named_parameters()]
    assert names and all(n.startswith(("layers.1.", "layers.2.")) for n in names)
    assert all(k.startswith((f"{layout_layers}.1.", f"{layout_layers}.2.")) for k in trunk.loaded_keys)
    expected = sum(p.numel() for i in (1, 2) for p in model.get_submodule(layout_layers)[i].parameters())
    assert sum(p.numel() for p in trunk.parameters()) == expected
    assert not any(isinstance(m, torch.nn.Embedding) for m in trunk.modules())


def test_trunk_loads_from_a_checkpoint_without_embeddings_or_head(tmp_path):
    """The strongest form of separation: give the server a file with nothing but the trunk."""
    from safetensors.torch import load_file, save_file

    model = tiny_model("llama")
    full = tmp_path / "full"
    model.save_pretrained(full)
    server = tmp_path / "server"
    server.mkdir()
    (server / "config.json").write_text((full / "config.json").read_text())
    tensors = load_file(full / "model.safetensors")
    keep = {k: v for k, v in tensors.items() if k.startswith(("model.layers.1.", "model.layers.2."))}
    save_file(keep, server / "model.safetensors")
    trunk = load_part(server, "trunk", (1, 3))
    h = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(trunk(h), split_model(model, (1, 3)).trunk(h))
    with pytest.raises(
        CheckpointError, match=r"tensor .model\.layers\.0\..* needed by the bottom is not in the checkpoint"
    ):
        load_part(server, "bottom", (1, 3))


def test_bad_role_and_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="role must be one of"):
        load_part(tmp_path, "middle", (1, 2))
    with pytest.raises(CheckpointError, match="no config.json"):
        load_part(tmp_path, "trunk", (1, 2))
