"""The client adapter as one vector: tensor names in one agreed order, and their shapes.

Client and server both go through `AdapterLayout`; neither orders the keys on its own, so
the flattened vectors they exchange (secure aggregation) line up by construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from splitfed.wire import ErrorCode, WireError


@dataclass(frozen=True, eq=False)
class AdapterLayout:
    shapes: Mapping[str, tuple[int, ...]]  # name -> shape, in the agreed (sorted) order

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", {k: tuple(self.shapes[k]) for k in sorted(self.shapes)})

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> AdapterLayout:
        return cls({k: tuple(v.shape) for k, v in state.items()})

    @property
    def keys(self) -> list[str]:
        return list(self.shapes)

    @property
    def size(self) -> int:
        """Number of values in the flattened vector."""
        return sum(math.prod(s) for s in self.shapes.values())

    def check(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """A client's adapter update has exactly these names, shapes and float32.  Raises `WireError`."""
        missing = sorted(set(self.shapes) - set(tensors))
        extra = sorted(set(tensors) - set(self.shapes))
        if missing or extra:
            raise WireError(ErrorCode.BAD_TENSOR, f"adapter update: missing {missing[:3]}, unexpected {extra[:3]}")
        for k, t in tensors.items():
            if tuple(t.shape) != self.shapes[k] or t.dtype != torch.float32:
                raise WireError(
                    ErrorCode.BAD_TENSOR,
                    f"adapter update {k}: expected float32{list(self.shapes[k])}, got {t.dtype}{list(t.shape)}",
                )

    def flatten(self, state: Mapping[str, torch.Tensor]) -> np.ndarray:
        """The tensors, in layout order, as one float64 vector."""
        return np.concatenate([state[k].detach().reshape(-1).double().numpy() for k in self.shapes])

    def unflatten(self, vector: np.ndarray) -> dict[str, torch.Tensor]:
        """Inverse of `flatten` (float32 tensors)."""
        if vector.size != self.size:
            raise ValueError(f"vector has {vector.size} values, the adapter needs {self.size}")
        out, i = {}, 0
        for k, shape in self.shapes.items():
            n = math.prod(shape)
            out[k] = torch.from_numpy(np.ascontiguousarray(vector[i : i + n])).float().reshape(shape)
            i += n
        return out
