"""The comparison's figures (matplotlib, Agg backend): Dice per structure as box plots,
one colour per method (the TransMorph paper's figure), and mean Dice against runtime."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..metrics import aseg_lr_groups

__all__ = ["structure_scores", "plot_dice_boxplot", "plot_dice_vs_runtime"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def structure_scores(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{structure: {method: [Dice per pair]}}``. Aseg labels are merged left/right (mean of
    the two Dice, as in the TransMorph figure) under their structure name; other labels
    keep their number (``"label 3"``)."""
    labels = sorted({int(k) for r in rows for k in r["dice"]})
    groups = aseg_lr_groups(labels)
    grouped = {v for members in groups.values() for v in members}
    if set(labels) != grouped:
        groups = {f"label {v}": (v,) for v in labels}
    out: dict[str, dict[str, list[float]]] = {name: {} for name in groups}
    for row in rows:
        for name, members in groups.items():
            values = [row["dice"].get(v, math.nan) for v in members]
            values = [v for v in values if not math.isnan(v)]
            if values:
                out[name].setdefault(row["method"], []).append(float(np.mean(values)))
    return {k: v for k, v in out.items() if v}


def plot_dice_boxplot(rows: Sequence[dict[str, Any]], methods: Sequence[str], path: str | Path, title: str) -> None:
    """Box plots of Dice per structure, one colour per method, grouped by structure."""
    plt = _pyplot()
    scores = structure_scores(rows)
    structures = list(scores)
    colours = plt.get_cmap("tab10")
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.25 * len(structures) * len(methods) + 2), 4.8))
    for i, method in enumerate(methods):
        data = [scores[s].get(method, []) for s in structures]
        positions = [k + (i - (len(methods) - 1) / 2) * width for k in range(len(structures))]
        kept = [(p, d) for p, d in zip(positions, data) if d]
        if not kept:
            continue
        box = ax.boxplot([d for _, d in kept], positions=[p for p, _ in kept], widths=width * 0.9,
                         patch_artist=True, showfliers=True, flierprops={"markersize": 2})
        for patch in box["boxes"]:
            patch.set_facecolor(colours(i % 10))
            patch.set_alpha(0.8)
        for median in box["medians"]:
            median.set_color("black")
        ax.plot([], [], color=colours(i % 10), linewidth=6, label=method)
    ax.set_xticks(range(len(structures)))
    ax.set_xticklabels(structures, rotation=45, ha="right")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, ncol=min(len(methods), 6))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_dice_vs_runtime(summary: Sequence[dict[str, Any]], path: str | Path, title: str) -> None:
    """Mean Dice (± std over pairs) against the median runtime per pair (log scale)."""
    plt = _pyplot()
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for i, row in enumerate(summary):
        runtime = max(row["runtime_median_s"], 1e-4)
        ax.errorbar(runtime, row["dice_mean"], yerr=row["dice_std"], fmt="o", color=colours(i % 10),
                    capsize=3, label=row["method"])
    ax.set_xscale("log")
    ax.set_xlabel("runtime per pair, median (s, log scale)")
    ax.set_ylabel("mean Dice over structures (mean ± std over pairs)")
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
