"""In-process training loops: split (three parts passing activations) and the unsplit reference."""

from splitfed.training.evaluate import EvalResult, evaluate
from splitfed.training.inprocess import SplitTrainer, StepResult
from splitfed.training.optim import OptimConfig, make_optimizer
from splitfed.training.reference import ReferenceTrainer

__all__ = ["EvalResult", "OptimConfig", "ReferenceTrainer", "SplitTrainer", "StepResult", "evaluate", "make_optimizer"]
