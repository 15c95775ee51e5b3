"""Paired differences between methods on the same pairs, with bootstrap confidence intervals.

Two methods evaluated on the same pairs are compared pair by pair: the difference of a
metric on each pair, its mean over pairs, and a percentile bootstrap interval of that mean
(pairs resampled with replacement), as in the backbone tables of registration papers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["PairedDifference", "paired_differences", "bootstrap_mean_interval"]

METRICS = ("dice_mean", "hd95")  # higher Dice is better, lower HD95 is better


@dataclass(frozen=True)
class PairedDifference:
    """``method`` − ``reference`` for ``metric`` over ``pairs`` shared pairs: ``mean``,
    the ``confidence`` bootstrap interval ``[low, high]``, and ``better``: the number of
    pairs where ``method`` is better (higher Dice, lower HD95)."""

    method: str
    reference: str
    metric: str
    pairs: int
    mean: float
    low: float
    high: float
    better: int
    confidence: float
    resamples: int


def bootstrap_mean_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement
    ``resamples`` times, a fixed ``seed`` so that tables are reproducible)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_differences(rows: Sequence[dict[str, Any]], reference: str, metrics: Sequence[str] = METRICS,
                       confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> list[PairedDifference]:
    """Every other method against ``reference`` on the per-pair ``rows`` (dicts with
    ``method``, ``pair`` and the metrics, as :func:`transreg.evaluation.evaluate` makes
    them). Pairs where either value is missing or NaN are left out of that comparison."""
    by_method: dict[str, dict[Any, dict[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[row["pair"]] = row
    if reference not in by_method:
        raise ValueError(f"reference method {reference!r} is not among the evaluated methods: {', '.join(by_method)}")
    base = by_method[reference]
    out = []
    for method, scores in by_method.items():
        if method == reference:
            continue
        for metric in metrics:
            diffs = []
            for pair, row in scores.items():
                a, b = _value(row, metric), _value(base.get(pair, {}), metric)
                if a is not None and b is not None:
                    diffs.append(a - b)
            if not diffs:
                continue
            low, high = bootstrap_mean_interval(diffs, confidence, resamples, seed)
            sign = -1.0 if metric.startswith("hd95") else 1.0
            out.append(PairedDifference(method, reference, metric, len(diffs), float(np.mean(diffs)), low, high,
                                        int(sum(sign * d > 0 for d in diffs)), confidence, resamples))
    return out


def _value(row: dict[str, Any], metric: str) -> float | None:
    value = row.get(metric)
    if value is None or value == "":
        return None
    value = float(value)
    return None if math.isnan(value) else value
