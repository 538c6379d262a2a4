"""The DP-SGD client step: `DPSGDStrategy`, the strategy of the one client step path (the mechanism:
`splitfed.privacy.dpsgd`).  Build it as ``ClientStep(bottom, top, link, optim,
strategy=partial(DPSGDStrategy, dp=dp, n_examples=n))``; its state (`params`, `optimizer`,
`steps`, `events()`) is read through ``step.strategy``.

The strategy swaps, in the one client step path of `splitfed.training.ClientStep`: the loss (the
per-example mean `per_example_loss`, averaged over the batch), the optimizer (Opacus'
`DPOptimizer` for ``mechanism = "float"`` or no noise, else `DiscreteDPOptimizer`), per-example
gradient capture around the forward and backward (Opacus `GradSampleModule`, hooks on only
inside a step), and the noise-only update of an empty Poisson batch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from crypto.dgauss import RandBytes
from splitfed.checks import is_int
from splitfed.models import SplitPart, adapter_parameters
from splitfed.privacy.discrete_optimizer import DiscreteDPOptimizer
from splitfed.privacy.dpsgd import DPSGDConfig, per_example_loss, secure_generator
from splitfed.privacy.events import PrivacyEvent
from splitfed.training import OptimConfig, make_optimizer

_HOOK_ATTRS = ("activations", "max_batch_len")  # what Opacus leaves on a module mid-step


class DPSGDStrategy:
    """Bottom and Top adapters clipped jointly, noised once, one AdamW step (a `StepStrategy`).

    `n_examples` is the client's dataset size n; batches must be Poisson samples of it at
    `dp.sample_rate` (see `poisson_batches`) for `events()` to be the privacy spent.  The discrete
    noise comes from `randbytes` (default `os.urandom`; an injected source is for tests only);
    the float mechanism's from `generator` (default: `secure_generator()`), with Opacus'
    `secure_mode` if asked.  Only LoRA tensors may be trainable.
    """

    def __init__(
        self,
        bottom: SplitPart,
        top: SplitPart,
        optim: OptimConfig,
        dp: DPSGDConfig,
        *,
        n_examples: int,
        generator: torch.Generator | None = None,
        secure_mode: bool = False,
        randbytes: RandBytes = os.urandom,
    ):
        if not is_int(n_examples) or n_examples < 1:
            raise ValueError(f"n_examples must be an integer >= 1, got {n_examples!r}")
        self.parts, self.dp = (bottom, top), dp
        self.expected_batch_size = dp.sample_rate * n_examples
        self.steps = 0
        for part in self.parts:
            lora = {id(p) for p in adapter_parameters(part)}
            other = [n for n, p in part.named_parameters() if p.requires_grad and id(p) not in lora]
            if other:
                raise ValueError(f"{part.role}: only LoRA parameters may be trainable under DP-SGD, got {other[:5]}")
        self.params = [p for part in self.parts for p in adapter_parameters(part) if p.requires_grad]
        if not self.params:
            raise ValueError("no client part has trainable LoRA parameters; call apply_lora first")
        # "hooks": per-example gradients of the LoRA Linears; frozen Conv1D / RMSNorm get no hook.
        self._wrappers = [
            GradSampleModule(part, batch_first=True, loss_reduction="mean", strict=True)
            for part in self.parts
            if any(p.requires_grad for p in part.parameters())
        ]
        for w in self._wrappers:
            w.disable_hooks()  # on only inside a step: other forwards (evaluation) stay untouched
        common = {
            "noise_multiplier": dp.noise_multiplier,
            "max_grad_norm": dp.max_grad_norm,
            "expected_batch_size": self.expected_batch_size,
            "loss_reduction": "mean",
        }
        inner = make_optimizer(self.params, optim)
        if dp.mechanism == "float" or dp.noise_multiplier == 0:
            generator = generator if generator is not None else secure_generator()
            self.optimizer = DPOptimizer(inner, generator=generator, secure_mode=secure_mode, **common)
        else:
            grid = dp.grid(sum(p.numel() for p in self.params))
            self.optimizer = DiscreteDPOptimizer(inner, grid=grid, randbytes=randbytes, **common)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def loss(self, top: SplitPart, act: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean over the examples of each one's mean next-token loss."""
        return per_example_loss(top(act, mask), labels).mean()

    def step(self) -> None:
        self.optimizer.step()  # clip jointly, sum, noise once, / (q * n), AdamW
        self.steps += 1

    def empty_step(self) -> None:
        """An empty Poisson batch: a noise-only update (every step the accountant counts is taken)."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad_sample = p.new_zeros((0, *p.shape))  # what Opacus sees for an empty batch
        self.step()

    def events(self) -> tuple[PrivacyEvent, ...]:
        """The privacy events of the steps taken so far."""
        return self.dp.events(self.steps)

    def close(self) -> None:
        """Remove Opacus' hooks and per-parameter attributes; the parts are plain modules again."""
        for w in self._wrappers:
            w.to_standard_module()
        self._wrappers = []

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Per-example capture on for one forward/backward; a failure (say the link) leaves no
        half-captured activations or counters behind to corrupt the next step."""
        for w in self._wrappers:
            w.enable_hooks()
        try:
            with warnings.catch_warnings():
                # The first hooked LoRA Linear of the Bottom sees embeddings that need no
                # gradient; Opacus only reads the output gradient, so torch's warning is moot.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                yield
        except BaseException:
            self._discard_capture()
            raise
        finally:
            for w in self._wrappers:
                w.disable_hooks()

    def _discard_capture(self) -> None:
        for part in self.parts:
            for module in part.modules():
                for attr in _HOOK_ATTRS:
                    if attr in module.__dict__:
                        delattr(module, attr)
        for p in self.params:
            p._forward_counter = 0
            if hasattr(p, "_current_grad_sample"):
                del p._current_grad_sample
        self.optimizer.zero_grad(set_to_none=True)
