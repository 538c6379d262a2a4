"""The shared trunk cannot become non-finite through one client: a step that would is dropped first."""

import pytest
import torch


def _service():
    from splitfed_testing import tiny_model

    from splitfed.models import LoraSpec, add_lora, split_model
    from splitfed.server.engine import TrunkEngine
    from splitfed.training import OptimConfig

    trunk = split_model(tiny_model("llama"), (1, 3)).trunk
    add_lora(trunk, LoraSpec(r=2), seed=0)
    return TrunkEngine(trunk, mode="shared", clients=["client-0"], optim=OptimConfig(lr=0.1))


def _weights(svc):
    return {k: v.detach().clone() for k, v in svc.trunk.state_dict().items()}


def test_non_finite_forward_and_backward_change_nothing():
    from splitfed.training import NonFiniteError

    svc = _service()
    before = _weights(svc)
    mask = torch.ones(1, 4, dtype=torch.long)
    huge = torch.full((1, 4, 32), 3e38)  # finite (it passes a NaN/Inf check), its square is not
    out = svc.forward([("client-0", huge, mask)])["client-0"]
    with pytest.raises(NonFiniteError, match="gradients contain NaN or Inf; the step was skipped"):
        svc.backward({"client-0": torch.ones_like(out)})["client-0"]
    assert not svc.busy
    out = svc.forward([("client-0", torch.randn(1, 4, 32), mask)])["client-0"]
    with pytest.raises(NonFiniteError, match="gradients contain NaN or Inf; the step was skipped"):
        svc.backward({"client-0": torch.full_like(out, 3e38)})["client-0"]
    assert not svc.busy
    after = _weights(svc)
    assert all(torch.equal(before[k], after[k]) for k in before)  # no weight moved, none non-finite
    out = svc.forward([("client-0", torch.randn(1, 4, 32), mask)])["client-0"]
    svc.backward({"client-0": torch.ones_like(out)})  # an ordinary step still works afterwards
    assert any(not torch.equal(before[k], v) for k, v in _weights(svc).items())
    assert all(bool(torch.isfinite(v).all()) for v in _weights(svc).values())
