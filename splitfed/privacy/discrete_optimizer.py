"""Opacus' `DPOptimizer` with an integer release: clipped per-example gradients snapped to a grid,
summed as integers, discrete Gaussian noise added to the integers (see `splitfed.privacy.dpsgd`)."""

from __future__ import annotations

import math
import os

import torch
from opacus.optimizers.optimizer import DPOptimizer, _check_processed_flag, _mark_as_processed

from crypto.dgauss import RandBytes, cdt_sampler
from splitfed.privacy.grid import snap_rows


class DiscreteDPOptimizer(DPOptimizer):
    """Clip jointly, snap, sum in int64, add N_Z(0, sigma^2) from `randbytes`, then * gamma.

    ``grid`` is ``DPSGDConfig.grid(coords)``: (gamma, Delta, sigma^2).  `last_release` holds the
    released integers of the last step (the snapped sum plus the draw), flattened in parameter
    order, so tests can check the release exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, grid, randbytes: RandBytes = os.urandom, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.gamma, self.bound, self.sigma2 = grid
        self.randbytes = randbytes
        self.sampler = cdt_sampler(self.sigma2)
        self.last_release: torch.Tensor | None = None

    def clip_and_accumulate(self) -> None:
        samples = []
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            samples.append(self._get_flat_grad_sample(p))
        rows = samples[0].shape[0]
        flat = torch.cat([g.reshape(rows, math.prod(g.shape[1:])).double() for g in samples], dim=1)  # (B, d)
        c = self.max_grad_norm
        clipped = flat * (c / flat.norm(dim=1, keepdim=True).clamp(min=c))
        total = snap_rows(clipped, self.gamma, self.bound).sum(dim=0)  # (d,) int64: the sum's sensitivity is Delta
        offset = 0
        for p in self.params:
            part = total[offset : offset + p.numel()].view(p.shape)
            offset += p.numel()
            p.summed_grad = part if p.summed_grad is None else p.summed_grad + part
            _mark_as_processed(p.grad_sample)

    def add_noise(self) -> None:
        coords = sum(p.numel() for p in self.params)
        noise = torch.from_numpy(self.sampler.sample(coords, self.randbytes))
        released = []
        offset = 0
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            ints = p.summed_grad.reshape(-1).to(torch.int64).cpu() + noise[offset : offset + p.numel()]
            offset += p.numel()
            released.append(ints)
            # post-processing of the released integers: any float rounding here leaks nothing more
            p.grad = (ints.double() * self.gamma).to(device=p.device, dtype=p.dtype).view_as(p)
            _mark_as_processed(p.summed_grad)
        self.last_release = torch.cat(released)
