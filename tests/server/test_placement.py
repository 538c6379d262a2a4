"""Device and precision of the trunk: config checks, the `auto` choice, reduced precision on CPU."""

from __future__ import annotations

import pytest
import torch

from splitfed.config import RunConfig, parse_config
from splitfed.models.placement import autocast, place, resolve_device, resolve_dtype


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_the_config_accepts(spec):
    assert parse_config({"server": {"device": spec}, "client": {"device": spec}}).server.device == spec


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CPU", "mps", ""])
def test_bad_device_names_the_key_and_what_is_accepted(spec):
    with pytest.raises(ValueError, match=r"server\.device.*'auto', 'cpu', 'cuda' or 'cuda:N'"):
        parse_config({"server": {"device": spec}})


def test_bad_dtype_names_the_key():
    with pytest.raises(ValueError, match=r"server\.dtype"):
        parse_config({"server": {"dtype": "float64"}})


def test_device_is_local_but_dtype_changes_what_is_trained():
    base = RunConfig()
    assert base.with_overrides(**{"server.device": "cpu", "client.device": "cpu"}).hash() == base.hash()
    assert base.with_overrides(**{"server.dtype": "bfloat16"}).hash() != base.hash()


def test_auto_picks_cuda_only_when_present():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match=r"server\.device = 'cuda:1' but no CUDA device is visible"):
        resolve_device("cuda:1", key="server.device")
    with pytest.raises(ValueError, match=r"dtype must be one of"):
        resolve_dtype("half", torch.device("cpu"))


def _service(dtype: torch.dtype):
    from splitfed_testing import tiny_model

    from splitfed.models import LoraSpec, add_lora, split_model
    from splitfed.server.engine import TrunkEngine
    from splitfed.training import OptimConfig

    trunk = split_model(tiny_model("llama", num_hidden_layers=6), (1, 5)).trunk
    add_lora(trunk, LoraSpec(r=4), seed=0)
    place(trunk, torch.device("cpu"), dtype)
    return TrunkEngine(trunk, mode="shared", clients=["c0"], optim=OptimConfig(lr=1e-2), dtype=dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_agrees_with_float32_and_keeps_lora_in_float32(dtype):
    """The stated tolerance: 2 % relative error (bf16 has 8 bits of mantissa, fp16 11) on the
    trunk's output, its activation gradient and the adapter's first step."""
    ref, low = _service(torch.float32), _service(dtype)
    gen = torch.Generator().manual_seed(0)
    act, mask = torch.randn(3, 7, 32, generator=gen), torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    out_ref, out_low = (s.forward([("c0", act, mask)])["c0"] for s in (ref, low))
    assert out_low.dtype == torch.float32  # what goes back on the wire
    assert _rel(out_low, out_ref) < 0.02
    grad = torch.randn(out_ref.shape, generator=gen)
    g_ref, g_low = (s.backward({"c0": grad})["c0"] for s in (ref, low))
    assert g_low.dtype == torch.float32 and _rel(g_low, g_ref) < 0.02
    # the adapter's gradients (Adam's first step is lr * sign(g), too coarse to compare)
    grads = [{n: p.grad for n, p in s.trunk.named_parameters() if p.requires_grad} for s in (ref, low)]
    compared = [n for n, g in grads[0].items() if g is not None and g.norm() > 0]
    assert compared
    for name in compared:
        assert grads[1][name].dtype == torch.float32
        assert _rel(grads[1][name], grads[0][name]) < 0.02, name
    trainable = [p for p in low.trunk.parameters() if p.requires_grad]
    frozen = [p for p in low.trunk.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == dtype for p in frozen)  # half the memory for the base
    opt_state = low.links["shared"].optimizer.state
    assert opt_state and all(t.dtype == torch.float32 for s in opt_state.values() for t in s.values() if t.dim())


def test_float32_on_cpu_is_unchanged_by_placement():
    """The exactness path: placement on CPU in float32 is the identity."""
    svc = _service(torch.float32)
    act, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(svc.infer("c0", act, mask), svc.trunk(act, mask))


def test_autocast_is_a_no_op_for_float32():
    with autocast(torch.device("cpu"), torch.float32):
        assert not torch.is_autocast_enabled("cpu")
