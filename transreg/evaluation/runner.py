"""Run methods over the pairs of a CSV and compute the evaluation protocol of DESIGN.md.

Per pair: Dice per structure on the warped moving labels (nearest) vs the fixed labels,
their mean; HD95 (mm, mean over the structures present in both maps); % folding and
SDlogJ of the deformable part of the map (see :func:`residual_displacement`); runtime.
Per method: mean ± std over pairs, DSC30, median runtime, parameters, MACs, peak memory.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .paired import PairedDifference
from ..registration.io import load_image
from ..metrics import dice, folding_percent, hd95, sdlogj, structure_mean, summarize
from ..registration.preprocess import Grid, coordinates, voxel_map
from .dataset import EvalPair, select_labels
from .methods import Alignment, Method, PairImages

__all__ = ["residual_displacement", "pair_metrics", "Evaluation", "evaluate", "summarize_method"]


def residual_displacement(alignment: Alignment, fixed_grid: Grid, moving_grid: Grid) -> Tensor:
    """The deformable part of a full map, as a displacement ``(1, ndim, *fixed_shape)`` in
    fixed voxels.

    With ``y(x)`` the full map (fixed voxel → moving voxel) and ``A x + b`` the affine
    part (the affine stage's world map between the two grids), ``r(x) = A⁻¹ (y(x) − A x − b)``:
    ``x + r(x) = A⁻¹ (y(x) − b)``, whose Jacobian determinant is ``det J_y / det A``. Zero
    for the identity and affine baselines; for a network, its displacement carried onto
    the fixed grid.
    """
    ndim = fixed_grid.ndim
    matrix = voxel_map(fixed_grid, moving_grid, alignment.world)
    affine_coords = coordinates(matrix, fixed_grid.shape, alignment.coords.device)
    inverse = torch.as_tensor(np.linalg.inv(matrix[:ndim, :ndim]), dtype=torch.float32, device=alignment.coords.device)
    diff = (alignment.coords - affine_coords).reshape(ndim, -1)
    return (inverse @ diff).reshape(1, ndim, *fixed_grid.shape).cpu()


def pair_metrics(warped_labels: np.ndarray, fixed_labels: np.ndarray, labels: Sequence[int],
                 spacing: Sequence[float], residual: Tensor) -> dict[str, Any]:
    """Dice per label (``{label: dice}``), mean Dice, mean HD95 (mm), % folding, SDlogJ."""
    scores = dice(warped_labels, fixed_labels, labels=labels)
    distances = [v for v in hd95(warped_labels, fixed_labels, labels=labels, spacing=tuple(spacing)).values()
                 if math.isfinite(v)]
    return {
        "dice": scores,
        "dice_mean": structure_mean(scores),
        "hd95": float(np.mean(distances)) if distances else math.nan,
        "folding_percent": folding_percent(residual),
        "sdlogj": sdlogj(residual),
    }


@dataclass
class Evaluation:
    """``rows``: one dict per (method, pair); ``summary``: one dict per method;
    ``notes``: lines for the report; ``label_sets``: the label sets Dice used;
    ``paired``: differences against a reference method (:mod:`.paired`), if asked."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    label_sets: list[tuple[int, ...]] = field(default_factory=list)
    warmup: bool = True
    summary: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    paired: list[PairedDifference] = field(default_factory=list)


class _ImageCache:
    """Loads each file once for all methods."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Path, bool], Any] = {}

    def pair(self, pair: EvalPair) -> PairImages:
        def get(path: Path, labels: bool, name: str):
            key = (path, labels)
            if key not in self._cache:
                self._cache[key] = load_image(path, labels=labels, name=name)
            return self._cache[key]

        return PairImages(get(pair.moving, False, "moving image"), get(pair.fixed, False, "fixed image"),
                          get(pair.moving_labels, True, "moving labels"), get(pair.fixed_labels, True, "fixed labels"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="pair", leave=True)


def evaluate(methods: Sequence[Method], pairs: Sequence[EvalPair], labels: str | Sequence[int] = "aseg30",
             progress: bool = True, warmup: bool = True, log: Callable[[str], None] | None = None) -> Evaluation:
    """Run every method on every pair → :class:`Evaluation` (rows and summary).

    ``warmup``: one untimed run of each method on the first pair before the timed runs.
    """
    cache = _ImageCache()
    result = Evaluation(warmup=warmup)
    label_sets: set[tuple[int, ...]] = set()
    for method in methods:
        if warmup:
            method.align(cache.pair(pairs[0]))
        rows = []
        for index, pair in enumerate(_progress(pairs, method.name, progress)):
            images = cache.pair(pair)
            _sync(method.device)
            start = time.perf_counter()
            alignment = method.align(images)
            _sync(method.device)
            runtime = time.perf_counter() - start
            chosen = select_labels(labels, images.moving_labels.data, images.fixed_labels.data)
            label_sets.add(chosen)
            residual = residual_displacement(alignment, Grid.of(images.fixed), Grid.of(images.moving))
            metrics = pair_metrics(alignment.warped_labels, images.fixed_labels.data, chosen,
                                   images.fixed.spacing, residual)
            rows.append({"method": method.name, "pair": index, "name": pair.name, **metrics, "runtime_s": runtime})
            if log is not None and not progress:
                log(f"{method.name} {pair.name}: Dice {metrics['dice_mean']:.3f}, {runtime:.1f} s")
        first = cache.pair(pairs[0])
        method.measure_cost(tuple(method.cost.get("eval_size") or first.fixed.shape))
        result.rows.extend(rows)
        result.summary.append(summarize_method(method, rows))
        result.notes.extend(f"{method.name}: {note}" for note in method.notes)
    if len(label_sets) > 1:
        result.notes.append(f"the label set differs between pairs ({len(label_sets)} different sets)")
    result.label_sets = sorted(label_sets)
    return result


def summarize_method(method: Method, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One summary row: Dice mean/std/DSC30, HD95, folding, SDlogJ (mean/std), median
    runtime, parameters, MACs, peak memory, evaluated size, trained flag."""
    def stats(key: str) -> tuple[float, float]:
        s = summarize([r[key] for r in rows])
        return s["mean"], s["std"]

    dice_stats = summarize([r["dice_mean"] for r in rows])
    out = {"method": method.name, "pairs": len(rows), "dice_mean": dice_stats["mean"], "dice_std": dice_stats["std"],
           "dsc30": dice_stats["dsc30"]}
    for key in ("hd95", "folding_percent", "sdlogj"):
        out[f"{key}_mean"], out[f"{key}_std"] = stats(key)
    out["runtime_median_s"] = float(np.median([r["runtime_s"] for r in rows]))
    out["parameters"] = method.cost.get("parameters")
    out["macs"] = method.cost.get("macs")
    out["peak_memory_mib"] = method.cost.get("peak_memory_mib")
    size = method.cost.get("eval_size")
    out["eval_size"] = "×".join(map(str, size)) if size and out["parameters"] is not None else None
    out["trained"] = method.trained
    return out
