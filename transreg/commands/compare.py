"""``transreg compare``: several methods on one pairs CSV → one table and two plots."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``compare``."""
    p.add_argument("--data", type=Path, required=True,
                   help="pairs CSV with columns moving,fixed,moving_labels,fixed_labels (paths relative to the "
                        "CSV's folder, images in native position)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument("--labels", default="aseg30",
                   help="labels Dice is computed over: aseg30 (the 30 aseg labels present in both maps; other "
                        "maps: all non-zero labels), all, or a comma list such as 2,3,41 (default aseg30)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--title", default=None, help="title of the table and plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed warm-up registration of each method on the first pair")


def command_string() -> str:
    return "transreg " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def report(summary: list[dict], written: dict[str, Path]) -> None:
    for row in summary:
        print(f"{row['method']:>20}: Dice {row['dice_mean']:.3f} ± {row['dice_std']:.3f}, "
              f"folding {row['folding_percent_mean']:.3f} %, {row['runtime_median_s']:.2f} s/pair")
    print("outputs:")
    for path in written.values():
        print(f"  {path}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="compare methods on a pairs CSV: Dice, HD95, folding, SDlogJ, runtime, params, MACs, memory",
        description="Run each method through the full registration (affine stage included) of every pair and "
                    "write per_pair.csv, summary.csv, summary.md, dice_boxplot.png, dice_vs_runtime.png and "
                    "paired_differences.csv (each method against --reference, with bootstrap intervals). "
                    "Baselines identity and affine are included unless --no-baselines; ANTs SyN is added when "
                    "antspyx is installed.")
    p.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                   help="architecture names (untrained), checkpoint names/folders, or identity/affine/ants")
    add_common(p)
    p.add_argument("--no-baselines", action="store_true", help="do not add the identity and affine baselines")
    p.add_argument("--reference", default=None, metavar="METHOD",
                   help="method the others are compared with pair by pair (Dice and HD95 differences with 95 %% "
                        "bootstrap intervals, paired_differences.csv; default: the first of --models)")
    ants = p.add_mutually_exclusive_group()
    ants.add_argument("--ants", dest="ants", action="store_true", default=None,
                      help="require ANTs SyN (error if antspyx is missing)")
    ants.add_argument("--no-ants", dest="ants", action="store_false", help="leave ANTs SyN out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import compare

    evaluation, written = compare(args.models, args.data, args.out, baselines=not args.no_baselines, ants=args.ants,
                                  labels=args.labels, device=args.device, title=args.title,
                                  command=command_string(), progress=not args.no_progress,
                                  warmup=not args.no_warmup, reference=args.reference)
    report(evaluation.summary, written)
    return 0
