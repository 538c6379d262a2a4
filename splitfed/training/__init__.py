"""In-process training loops: split (three parts passing activations) and the unsplit reference."""

from splitfed.training.evaluate import EvalResult, evaluate
from splitfed.training.inprocess import ClientStep, LocalTrunk, NonFiniteError, SplitTrainer, StepResult, TrunkLink
from splitfed.training.optim import OptimConfig, make_optimizer
from splitfed.training.reference import ReferenceTrainer

__all__ = [
    "ClientStep",
    "EvalResult",
    "LocalTrunk",
    "NonFiniteError",
    "OptimConfig",
    "ReferenceTrainer",
    "SplitTrainer",
    "StepResult",
    "TrunkLink",
    "evaluate",
    "make_optimizer",
]
