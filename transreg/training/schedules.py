"""Learning-rate schedules: linear warm-up, then constant, poly or cosine."""
from __future__ import annotations

import math

__all__ = ["lr_factor"]


def lr_factor(step: int, total: int, schedule: str, warmup: int, min_ratio: float = 0.0, power: float = 0.9) -> float:
    """Multiplier of the base learning rate for optimiser step ``step`` (0-based).

    Linear warm-up from ``1/warmup`` to 1 over ``warmup`` steps, then ``constant`` (1),
    ``poly`` (``(1 - p)^power``, as in TransMorph) or ``cosine`` (half cosine), where
    ``p`` is the fraction of post-warm-up steps done; both decay to ``min_ratio``.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = (1.0 - p) ** power if schedule == "poly" else 0.5 * (1.0 + math.cos(math.pi * p))
    return min_ratio + (1.0 - min_ratio) * shape
