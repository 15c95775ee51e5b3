"""The batch options of ``transreg register``: ``--pairs CSV`` or ``--atlas FIXED`` with moving images."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli import CommandError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the batch options to the ``register`` parser."""
    p.add_argument("more_moving", nargs="*", type=Path, metavar="MOVING",
                   help="with --atlas every positional image is a moving image (files or folders of .nii/.nii.gz)")
    batch = p.add_argument_group("batch mode (one model load; each pair's outputs in OUT/<name>/, OUT/summary.csv)")
    source = batch.add_mutually_exclusive_group()
    source.add_argument("--pairs", type=Path, metavar="CSV",
                        help="register every row: columns moving, fixed, optional moving_labels, fixed_labels, "
                             "name (paths relative to the CSV)")
    source.add_argument("--atlas", type=Path, metavar="FIXED",
                        help="register the positional moving images (files or folders) onto FIXED; "
                             "--fixed-labels is FIXED's label map")
    batch.add_argument("--resume", action="store_true", help="skip pairs whose output folder is complete")
    batch.add_argument("--workers", type=int, default=2, metavar="N",
                       help="processes reading NIfTI files ahead of the computation (default 2; 0: none)")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")


def requested(args: argparse.Namespace) -> bool:
    """Whether the command line asks for batch mode."""
    return bool(args.pairs or args.atlas)


def run(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """Run the batch; exit status 1 when a pair failed (the others are written)."""
    from ..registration.batch import run_batch
    from ..registration.pairlist import atlas_pairs, read_pairs_csv

    if args.sample:
        raise CommandError("--sample registers one pair; it cannot be combined with --pairs or --atlas")
    positional = [p for p in (args.moving, args.fixed, *args.more_moving) if p is not None]
    if args.pairs:
        if positional or args.moving_labels or args.fixed_labels:
            raise CommandError("--pairs takes its images and label maps from the CSV; give no other inputs")
        pairs = read_pairs_csv(args.pairs)
    else:
        if args.moving_labels:
            raise CommandError("--atlas: moving label maps go in a pairs CSV (--pairs) with a moving_labels column")
        pairs = atlas_pairs(args.atlas, positional, args.fixed_labels)
    if args.workers < 0:
        raise CommandError(f"--workers must be >= 0, got {args.workers}")
    rows = run_batch(pairs, args.out, args.model, workers=args.workers, resume=args.resume,
                     progress=not args.no_progress, **options)
    return 1 if any(row["status"] == "failed" for row in rows) else 0
