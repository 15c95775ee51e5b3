"""Training: recipes (:mod:`~transreg.training.config`), the trainer
(:mod:`~transreg.training.trainer`) and its parts — precision, schedules, the objective,
resumable state, DDP, run logs.
"""
from .trainer import Trainer, TrainingError

__all__ = ["Trainer", "TrainingError"]
