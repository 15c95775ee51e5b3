"""Write an :class:`~transreg.evaluation.runner.Evaluation`: ``per_pair.csv``,
``summary.csv``, ``summary.md``, ``dice_boxplot.png``, ``dice_vs_runtime.png`` and, when
methods were compared with a reference, ``paired_differences.csv``.

Everything is written into a temporary folder inside the output folder and moved into
place only when all files succeeded.
"""
from __future__ import annotations

import csv
import datetime
import math
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

from ..registration.outputs import write_atomically
from .plots import plot_dice_boxplot, plot_dice_vs_runtime
from .paired import PairedDifference
from .runner import Evaluation

__all__ = ["OUTPUT_FILES", "machine_description", "write_results"]

OUTPUT_FILES = ("per_pair.csv", "summary.csv", "summary.md", "dice_boxplot.png", "dice_vs_runtime.png")
PAIRED_FILE = "paired_differences.csv"
PAIRED_COLUMNS = ("method", "reference", "metric", "pairs", "mean", "low", "high", "better", "confidence")
SUMMARY_COLUMNS = ("method", "pairs", "dice_mean", "dice_std", "dsc30", "hd95_mean", "hd95_std",
                   "folding_percent_mean", "folding_percent_std", "sdlogj_mean", "sdlogj_std", "runtime_median_s",
                   "parameters", "macs", "peak_memory_mib", "eval_size", "trained")


def machine_description(device: torch.device) -> str:
    """CPU, core count, torch version and the device (GPU name on CUDA)."""
    text = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    if device.type == "cuda":
        return f"{text}, {torch.cuda.get_device_name(device)}"
    return f"{text}, device cpu ({torch.get_num_threads()} threads)"


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _write_per_pair(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    labels = sorted({int(k) for r in rows for k in r["dice"]})
    header = ["method", "pair", "name", "dice_mean", "hd95", "folding_percent", "sdlogj", "runtime_s",
              *(f"dice_{v}" for v in labels)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for r in rows:
            writer.writerow([_cell(r[k]) for k in header[:8]] + [_cell(r["dice"].get(v)) for v in labels])


def _write_summary_csv(path: Path, summary: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SUMMARY_COLUMNS)
        for row in summary:
            writer.writerow([_cell(row.get(k)) for k in SUMMARY_COLUMNS])


def _write_paired_csv(path: Path, paired: Sequence[PairedDifference]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(PAIRED_COLUMNS)
        for d in paired:
            writer.writerow([_cell(getattr(d, k)) for k in PAIRED_COLUMNS])


def _paired_table(paired: Sequence[PairedDifference]) -> list[str]:
    """Markdown: one row per method, Dice and HD95 differences against the reference."""
    if not paired:
        return []
    first = paired[0]
    resamples = f"{first.resamples:,}".replace(",", " ")
    lines = [f"Paired differences against `{first.reference}` (method − reference on the same pairs; mean over "
             f"pairs, {first.confidence:.0%} percentile bootstrap interval of the mean, pairs resampled {resamples} "
             "times; "
             "better = pairs where the method has the higher Dice / lower HD95):", "",
             "| method | pairs | Δ Dice | CI | better | Δ HD95 (mm) | CI | better |", "|---|---:|---:|---|---:|---:|---|---:|"]
    methods = list(dict.fromkeys(d.method for d in paired))
    for method in methods:
        cells = []
        pairs = 0
        for metric, digits in (("dice_mean", 3), ("hd95", 2)):
            d = next((x for x in paired if x.method == method and x.metric == metric), None)
            if d is None:
                cells += ["–", "–", "–"]
                continue
            pairs = max(pairs, d.pairs)
            cells += [f"{d.mean:+.{digits}f}", f"[{d.low:+.{digits}f}, {d.high:+.{digits}f}]", f"{d.better}/{d.pairs}"]
        lines.append(f"| {method} | {pairs} | " + " | ".join(cells) + " |")
    return lines


def _pm(mean: float, std: float, digits: int) -> str:
    return "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown_table(summary: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| method | pairs | Dice | DSC30 | HD95 (mm) | % folding | SDlogJ | runtime / pair (s, median) "
             "| parameters | MACs (G) | peak memory (MiB) | size |",
             "|---|---:|---|---:|---|---|---|---:|---:|---:|---:|---|"]
    for r in summary:
        params = "–" if r["parameters"] is None else f"{r['parameters']:,}"
        macs = "–" if r["macs"] is None else f"{r['macs'] / 1e9:.1f}"
        memory = r["peak_memory_mib"]
        memory = "–" if memory is None or math.isnan(memory) else f"{memory:,.0f}"
        lines.append(
            f"| {r['method']} | {r['pairs']} | {_pm(r['dice_mean'], r['dice_std'], 3)} | {r['dsc30']:.3f} "
            f"| {_pm(r['hd95_mean'], r['hd95_std'], 2)} | {_pm(r['folding_percent_mean'], r['folding_percent_std'], 3)} "
            f"| {_pm(r['sdlogj_mean'], r['sdlogj_std'], 3)} | {r['runtime_median_s']:.2f} | {params} | {macs} "
            f"| {memory} | {r['eval_size'] or '–'} |")
    return lines


def _markdown(evaluation: Evaluation, title: str, command: str, data: str, device: torch.device) -> str:
    sets = evaluation.label_sets
    if len(sets) == 1:
        label_line = f"Dice over {len(sets[0])} labels: {', '.join(map(str, sets[0]))}"
    else:
        label_line = f"Dice over per-pair label sets ({len(sets)} different)"
    warmup = " after one warm-up run" if evaluation.warmup else " (no warm-up run)"
    lines = [
        f"# {title}", "",
        f"- command: `{command}`",
        f"- data: `{data}` ({evaluation.summary[0]['pairs'] if evaluation.summary else 0} pairs)",
        f"- machine: {machine_description(device)}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- {label_line}", "",
        *_markdown_table(evaluation.summary), "",
        *(_paired_table(evaluation.paired) + [""] if evaluation.paired else []),
        "Definitions: Dice per structure on the warped moving labels (nearest neighbour) vs the fixed labels, "
        "mean over structures, then mean ± std over pairs; DSC30 = mean of the worst 30 % of pairs; HD95 = 95th "
        "percentile symmetric surface distance in mm, mean over the structures present in both maps; % folding "
        "(Jacobian determinant ≤ 0, central differences) and SDlogJ (Learn2Reg) of the deformable part of the map "
        "on the fixed grid (zero for identity and affine); runtime = wall time of the full registration of one "
        f"pair (affine stage included, files already in memory), median over pairs{warmup}; MACs "
        "(= FLOPs / 2, torch.utils.flop_counter) and peak memory of one forward pass of the network at the "
        "evaluated size (batch 1, fp32; CUDA: peak allocated; CPU: peak resident memory of a fresh process above "
        "its size after importing torch).",
    ]
    if evaluation.notes:
        lines += ["", "Notes:", *(f"- {note}" for note in evaluation.notes)]
    return "\n".join(lines) + "\n"


def write_results(out: Path, evaluation: Evaluation, title: str, command: str, data: str,
                  device: torch.device) -> dict[str, Path]:
    """Write the five outputs into ``out`` (created if needed) → ``{name: path}``."""
    def write(folder: Path) -> list[str]:
        _write_per_pair(folder / "per_pair.csv", evaluation.rows)
        _write_summary_csv(folder / "summary.csv", evaluation.summary)
        (folder / "summary.md").write_text(_markdown(evaluation, title, command, data, device))
        methods = [r["method"] for r in evaluation.summary]
        plot_dice_boxplot(evaluation.rows, methods, folder / "dice_boxplot.png", title)
        plot_dice_vs_runtime(evaluation.summary, folder / "dice_vs_runtime.png", title)
        if evaluation.paired:
            _write_paired_csv(folder / PAIRED_FILE, evaluation.paired)
            return [*OUTPUT_FILES, PAIRED_FILE]
        return list(OUTPUT_FILES)

    return write_atomically(out, write)

