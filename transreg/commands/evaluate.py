"""``transreg evaluate``: one model on a pairs CSV → per-pair metrics, summary, plots."""
from __future__ import annotations

import argparse

from .compare import add_common, command_string, report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate one model on a pairs CSV (Dice, HD95, folding, SDlogJ, runtime, ...)",
        description="Run the model through the full registration (affine stage included) of every pair and write "
                    "per_pair.csv, summary.csv, summary.md, dice_boxplot.png and dice_vs_runtime.png. "
                    "Use `transreg compare` for several methods and the baselines.")
    p.add_argument("--model", required=True,
                   help="architecture name (untrained), checkpoint name, hf-hub:/local-dir: source or folder; "
                        "identity, affine and ants name the baselines")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import compare

    evaluation, written = compare([args.model], args.data, args.out, baselines=False, ants=False,
                                  labels=args.labels, device=args.device, title=args.title,
                                  command=command_string(), progress=not args.no_progress,
                                  warmup=not args.no_warmup, subcommand="evaluate")
    report(evaluation.summary, written)
    return 0
