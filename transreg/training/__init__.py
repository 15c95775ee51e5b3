"""Training: recipes (:mod:`~transreg.training.config`), the trainer
(:mod:`~transreg.training.trainer`) and its parts — precision, schedules, the objective,
resumable state, DDP, run logs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Trainer", "TrainingError"]

if TYPE_CHECKING:
    from .trainer import Trainer, TrainingError  # noqa: F401


def __getattr__(name: str) -> Any:
    """``Trainer`` and ``TrainingError`` load the trainer (and torch) on first use, so that
    ``transreg.training.config`` (recipes, the ``train`` command's flags) imports no torch."""
    if name in __all__:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'transreg.training' has no attribute {name!r}")
