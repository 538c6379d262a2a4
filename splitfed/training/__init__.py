"""In-process training loops: split (three parts passing activations) and the unsplit reference."""

from splitfed.training.evaluate import EvalResult, evaluate
from splitfed.training.inprocess import ClientStep, LocalLink, NonFiniteError, SplitTrainer, StepResult, TrunkLink
from splitfed.training.optim import OptimConfig, make_optimizer
from splitfed.training.reference import ReferenceTrainer
from splitfed.training.strategy import PlainStep, StepStrategy

__all__ = [
    "ClientStep",
    "EvalResult",
    "LocalLink",
    "NonFiniteError",
    "OptimConfig",
    "PlainStep",
    "ReferenceTrainer",
    "SplitTrainer",
    "StepResult",
    "StepStrategy",
    "TrunkLink",
    "evaluate",
    "make_optimizer",
]
